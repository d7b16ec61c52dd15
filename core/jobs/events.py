"""The run directory's event log: one JSON object a line in `events.jsonl`.

The trainer appends and flushes each event; readers keep a byte offset and read only
what is new. Files, not pipes: nobody has to be reading for the trainer to go on.

Event types (all carry "type" and "time"):
  start       device, dtype, method, trainable_params, total_params, total_steps,
              train_samples, eval_samples, truncated_samples, cutoff_len,
              processes, nodes, devices (this machine's; see core.distributed)
  step        step, total_steps, epoch, loss, learning_rate, grad_norm,
              tokens_per_second, elapsed, eta
  eval        step, eval_loss
  checkpoint  step, path
  saving      path                       (a result is being written; see core.train.trainer)
  waiting     holder                     (another job has the device; see core.jobs.device)
  diverged    step, reason               (then end: failed, diverged: true; core.train.health)
  progress    done, total, message       (evaluation and export jobs)
  resume      step, checkpoint, changed   (the run goes on from the resume point of `step`:
                                         see `one_stream`; core.jobs.resume)
  end         status ("done" | "aborted" | "failed"), error, final_loss, output_dir
              (+ failed_rank when a rank of a distributed run died, note on machines
              other than 0; see core.distributed.launch)
Only rank 0 of a distributed run writes here; on machines other than 0, core.distributed.launch
writes a start and an end for that machine's part.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

EVENTS = "events.jsonl"
LOG = "log.txt"


class EventWriter:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / EVENTS

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type, "time": round(time.time(), 3), **fields}
        line = json.dumps(event, default=_plain, allow_nan=True) + "\n"
        # One write of a whole line in append mode, so a reader never sees half an event
        # that it would then skip.
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return event


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# Fields every reader takes as numbers or text: an event whose field has another type is
# damage (a bad disk, a hand edit), and is skipped like a line that is not JSON at all.
_NUMBERS = ("time", "step", "total_steps", "epoch", "loss", "learning_rate", "grad_norm",
            "tokens_per_second", "tokens_seen", "elapsed", "eta", "eval_loss", "done",
            "total", "final_loss", "final_eval_loss", "steps", "reward_chosen",
            "reward_rejected", "reward_margin", "reward_accuracy", "trainable_params",
            "total_params", "train_samples", "eval_samples", "truncated_samples")
_TEXTS = ("status", "error", "message", "output_dir", "path", "holder", "reason")
_NEEDS = {"step": ("step",), "eval": ("step", "eval_loss"), "end": ("status",),
          "resume": ("step",),
          "progress": ("done", "total")}


def _event(line: bytes) -> dict[str, Any] | None:
    """The event on one line, or None when the line is not one (bad bytes, not JSON, not
    an object with a type, a field of the wrong type)."""
    try:
        event = json.loads(line)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    for name in _NEEDS.get(event["type"], ()):
        if event.get(name) is None:
            return None
    for name in _NUMBERS:
        value = event.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return None
    if any(not isinstance(event.get(n), str | type(None)) for n in _TEXTS):
        return None
    return event


def scan_events(run_dir: str | Path,
                offset: int = 0) -> tuple[list[dict[str, Any]], int, str | None]:
    """(events since byte `offset`, the offset to pass next time, what is damaged or None).
    A trailing line without its newline is left for the next call (a writer may be midway);
    a complete line that is not an event is skipped and named as damage. A resumed run's
    events are its one stream (`one_stream`); who reads on from an offset applies that to
    all it has read."""
    path = Path(run_dir) / EVENTS
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset, None
    except OSError as exc:  # a folder in its place, no permission, an I/O error
        return [], offset, f"{EVENTS} cannot be read ({exc.strerror or exc})"
    end = chunk.rfind(b"\n") + 1
    events, bad = [], 0
    for line in chunk[:end].splitlines():
        if line.strip():
            event = _event(line)
            if event is None:
                bad += 1
            else:
                events.append(event)
    damage = f"{EVENTS}: {bad} line(s) are not events (a damaged file)" if bad else None
    return one_stream(events), offset + end, damage


def read_events(run_dir: str | Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events appended since byte `offset`, and the offset to pass next time; lines that
    are not events are skipped (see scan_events)."""
    events, offset, _ = scan_events(run_dir, offset)
    return events, offset


# What a resume takes back from the part of a run it continues: how that part ended, and
# what it logged after the resume point (those steps are trained again).
_ENDING = ("end", "saving", "diverged", "early_stop", "waiting")
_AT_STEP = ("step", "eval", "checkpoint")


def one_stream(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A resumed run's events as one run: each `resume` event (step N) drops the earlier
    parts' end and their steps, evaluations and checkpoints after step N, so a curve has
    each step once and the status is the running part's. The file keeps everything."""
    if not any(e["type"] == "resume" for e in events):
        return events
    kept: list[dict[str, Any]] = []
    for event in events:
        if event["type"] == "resume":
            kept = [e for e in kept if e["type"] not in _ENDING
                    and not (e["type"] in _AT_STEP and (e.get("step") or 0) > event["step"])]
        kept.append(event)
    return kept


def read_log(run_dir: str | Path, offset: int = 0, limit: int = 1 << 20) -> tuple[str, int]:
    """Log text appended since byte `offset` (at most `limit` bytes of it)."""
    path = Path(run_dir) / LOG
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except OSError:  # none yet, a folder in its place, no permission: its status says so
        return "", offset
    return data.decode("utf-8", errors="replace"), offset + len(data)


def tail_log(run_dir: str | Path, max_bytes: int = 8000) -> str:
    path = Path(run_dir) / LOG
    try:
        size = path.stat().st_size
    except OSError:
        return ""
    text, _ = read_log(run_dir, max(0, size - max_bytes), max_bytes)
    return text


def readable_error(exc: BaseException) -> str:
    """The message a person should read: our own errors already say what to do."""
    text = str(exc).strip() or type(exc).__name__
    if type(exc).__module__.startswith("core"):
        return text
    return f"{type(exc).__name__}: {text}"
