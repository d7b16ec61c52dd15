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
  waiting     holder                     (another job has the device; see core.jobs.runner)
  diverged    step, reason               (then end: failed, diverged: true; core.train.health)
  progress    done, total, message       (evaluation and export jobs)
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


def read_events(run_dir: str | Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events appended since byte `offset`, and the offset to pass next time. A trailing
    line without its newline is left for the next call."""
    path = Path(run_dir) / EVENTS
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n") + 1
    events = []
    for line in chunk[:end].splitlines():
        if line.strip():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line from a killed writer; the rest is still good
    return events, offset + end


def read_log(run_dir: str | Path, offset: int = 0, limit: int = 1 << 20) -> tuple[str, int]:
    """Log text appended since byte `offset` (at most `limit` bytes of it)."""
    path = Path(run_dir) / LOG
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except FileNotFoundError:
        return "", offset
    return data.decode("utf-8", errors="replace"), offset + len(data)


def tail_log(run_dir: str | Path, max_bytes: int = 8000) -> str:
    path = Path(run_dir) / LOG
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ""
    text, _ = read_log(run_dir, max(0, size - max_bytes), max_bytes)
    return text


def readable_error(exc: BaseException) -> str:
    """The message a person should read: our own errors already say what to do."""
    text = str(exc).strip() or type(exc).__name__
    if type(exc).__module__.startswith("core"):
        return text
    return f"{type(exc).__name__}: {text}"
