"""Following one run from its files, and what the Train tab says of it (webui.live.panel draws it).

A `Watch` (kept in a gr.State per browser tab) remembers the run folder, the byte offset
read so far in its events.jsonl and the events themselves; each poll reads only what is
new. Nothing here holds a process handle, so a reloaded page, a second browser or a
restarted server re-attaches just by finding the live run in saves/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.jobs.events import EVENTS, LOG, one_stream, read_events, tail_log
from core.jobs.runs import DONE, FAILED, RUNNING, active_run, run_status
from webui.live.progress import clock, progress_html

# Looking for a run started elsewhere (CLI, another browser) scans saves/: not every tick.
SCAN_EVERY = 3.0
LOG_TAIL_BYTES = 6000


@dataclass
class Watch:
    run: str | None = None
    offset: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    status: str = ""
    end: dict[str, Any] = field(default_factory=dict)
    log_size: int = -1
    scanned: float = 0.0

    @property
    def live(self) -> bool:
        return self.status == RUNNING


@dataclass
class Changes:
    events: bool = False
    log: bool = False
    status: bool = False


def attach(run_dir: str | Path | None) -> Watch:
    watch = Watch(run=str(run_dir) if run_dir else None)
    return poll(watch)[0] if run_dir else watch


def poll(watch: Watch, now: float | None = None) -> tuple[Watch, Changes]:
    """Read what is new. When the watched run is over (or there is none), look every few
    seconds for a live run started elsewhere and switch to it."""
    now = time.time() if now is None else now
    if not watch.live and now - watch.scanned >= SCAN_EVERY:
        watch.scanned = now
        live = active_run()
        if live is not None and str(live) != watch.run:
            fresh = Watch(run=str(live), scanned=now)
            return poll(fresh, now)[0], Changes(True, True, True)
    if watch.run is None:
        return watch, Changes()
    return read(watch)


def read(watch: Watch) -> tuple[Watch, Changes]:
    """Read what is new in the watched run's files (no looking for another run)."""
    run_dir = Path(watch.run or "")
    changes = Changes()
    new, watch.offset = read_events(run_dir, watch.offset)
    if new:
        watch.events = one_stream(watch.events + new)
        changes.events = True
    status, end = run_status(run_dir, watch.events)
    if status != watch.status:
        watch.status, watch.end = status, end
        changes.status = True
    size = file_size(run_dir / LOG)
    if size != watch.log_size:
        watch.log_size = size
        changes.log = True
    return watch, changes


def file_size(path: Path) -> int:
    """Bytes in `path`, 0 while it does not exist (a trainer only appends)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


# -- what the Train tab shows ------------------------------------------------------------
def progress(watch: Watch) -> str:
    if watch.run is None:
        return progress_html(0, 0, None, None, "idle",
                             "No run yet: choose the settings, then press ▶ Start.")
    steps = [e for e in watch.events if e["type"] == "step"]
    start = _first(watch.events, "start")
    last = steps[-1] if steps else {}
    total = last.get("total_steps") or start.get("total_steps") or 0
    step = last.get("step", 0)
    if watch.status == DONE:
        step = total or step
    eta = last.get("eta") if watch.live else 0.0
    elapsed = last.get("elapsed")
    if watch.live and start:
        elapsed = time.time() - start["time"]
    caption = f"{Path(watch.run).name}: {watch.status}"
    end = _last(watch.events, "end") or {}
    if end.get("diverged"):  # the bar itself says why it went red
        caption += f" (diverged at step {end.get('step')})"
    if watch.live and not start:
        waiting = _last(watch.events, "waiting")
        caption += (f" (waiting for {waiting['holder']} to finish: one job uses the device "
                    "at a time)" if waiting else " (loading model and data)")
    if watch.live and watch.events and watch.events[-1]["type"] == "saving":
        caption += " (saving: an abort now waits for the save to finish)"
    return progress_html(step, total, elapsed, eta if steps else None, watch.status, caption)


def _spread(start: dict) -> str:
    """" · 2 processes on 2 machines (0, 1)" for a run of several processes."""
    n = start.get("processes", 1)
    if n <= 1:
        return ""
    nodes = start.get("nodes", 1)
    where = f" on {nodes} machines" if nodes > 1 else ""
    devices = ", ".join(str(d) for d in start.get("devices") or [])
    return f" · **{n} processes**{where}" + (f" ({devices} here)" if devices else "")


def stats(watch: Watch) -> str:
    if watch.run is None:
        return ""
    start = _first(watch.events, "start")
    steps = [e for e in watch.events if e["type"] == "step"]
    evals = [e for e in watch.events if e["type"] == "eval"]
    lines = []
    if start:
        trainable, total = start.get("trainable_params", 0), start.get("total_params", 0)
        share = 100 * trainable / total if total else 0
        cut = start.get("truncated_samples") or 0
        lines.append(
            f"**{start.get('method', '')}** on {start.get('device', '?')} "
            f"({start.get('precision', '?')}) · {trainable:,} of {total:,} parameters "
            f"trainable ({share:.3g}%) · {start.get('train_samples', '?')} training samples"
            + (f", {cut} cut at the cut-off" if cut else "")
            + _spread(start)
        )
        if isinstance(start.get("precision_reason"), str):
            lines.append(f"Precision {start.get('precision', '?')}: {start['precision_reason']}")
        notes = start.get("notes")
        if isinstance(notes, list):  # defaults the method adapted to this model
            lines += [f"Note: {note}" for note in notes if isinstance(note, str)]
    if steps:
        e = steps[-1]
        parts = [f"loss **{e['loss']:.4f}**"] if e.get("loss") is not None else []
        if evals:
            parts.append(f"eval loss **{evals[-1]['eval_loss']:.4f}**")
        if e.get("learning_rate") is not None:
            parts.append(f"learning rate {e['learning_rate']:.3g}")
        if e.get("tokens_per_second") is not None:
            parts.append(f"**{e['tokens_per_second']:,.0f}** tokens/s")
        parts.append(f"epoch {e.get('epoch', 0):.2f}")
        lines.append(" · ".join(parts))
        if "reward_margin" in e:
            lines.append(reward_line(e))
    if watch.end:
        lines.append(_ending(watch))
    return "\n\n".join(lines)


def reward_line(step: dict[str, Any]) -> str:
    """A preference run's rewards at one logged step."""
    parts = [f"rewards: chosen {step['reward_chosen']:.3f}",
             f"rejected {step['reward_rejected']:.3f}",
             f"margin **{step['reward_margin']:.3f}**"]
    if step.get("reward_accuracy") is not None:
        parts.append(f"reward accuracy **{100 * step['reward_accuracy']:.0f}%**")
    return " · ".join(parts) + f" (step {step['step']})"


def _ending(watch: Watch) -> str:
    end = watch.end
    status = watch.status
    if status == FAILED:
        # A diverged run says so first: its weights are not offered anywhere as a result.
        label = "Diverged" if end.get("diverged") else "Failed"
        return f"✗ **{label}:** {end.get('error') or 'see the log below'}"
    text = "✓ **Done**" if status == DONE else "■ **Aborted**"
    if end.get("final_loss") is not None:
        text += f" · final loss {end['final_loss']:.4f}"
    if end.get("train_runtime") is not None:
        text += f" · {clock(end['train_runtime'])}"
    if end.get("output_dir"):
        text += f" · saved to `{end['output_dir']}`"
    early = end.get("stopped_early")
    if isinstance(early, dict) and isinstance(early.get("best_eval_loss"), int | float):
        text += (f" · stopped early at step {early.get('step')}: the validation loss had not "
                 f"improved for {early.get('patience')} evaluations (best "
                 f"{early['best_eval_loss']:.4f} at step {early.get('best_step')}"
                 f"{', kept as the result' if early.get('loaded_best') else ''})")
    return text


def log_tail(watch: Watch) -> str:
    if watch.run is None:
        return ""
    return tail_log(watch.run, LOG_TAIL_BYTES)


def _first(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next((e for e in events if e["type"] == kind), {})


def _last(events: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((e for e in reversed(events) if e["type"] == kind), None)


def events_of(run_dir: str | Path) -> list[dict[str, Any]]:
    return read_events(run_dir)[0] if (Path(run_dir) / EVENTS).exists() else []
