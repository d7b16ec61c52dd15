"""The queue: runs waiting their turn, trained one after another by a worker process that
lives outside the UI.

The whole queue is one file, saves/queue/queue.json, written whole-or-nothing and changed
only under saves/queue/.lock, so a restarted UI, a second browser, the CLI and the worker
all see the same queue. The worker (`python -m core.jobs.queue_worker`, core/jobs/
queue_worker.py) is started on demand by whoever adds to the queue; it holds
saves/queue/worker.lock for its life (the kernel drops the lock when it dies, even by
SIGKILL), so at most one works on a saves/ folder, and it exits once nothing waits. It
starts each run through core.jobs.runner exactly as Start does, so the device lock keeps
one job at a time on the machine, and a run started by hand meanwhile is waited for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.fsutil import atomic_write_text, lock_held, locked
from core.jobs.process import spawn
from core.jobs.runs import ABORTED, DAMAGED, DONE, FAILED
from core.paths import saves_dir
from core.schema.config import RunConfig

QUEUE_DIR = "queue"
STATE = "queue.json"
LOCK = ".lock"
WORKER_LOCK = "worker.lock"
WORKER_DIR = "worker"  # the worker's process.json and log.txt
WORKER_MODULE = "core.jobs.queue_worker"
# An entry's status: waiting its turn, training (or evaluating), or one of a run's ends;
# "cancelled" when it was taken out of the queue, before or during its run.
WAITING, RUNNING, CANCELLED = "queued", "running", "cancelled"
SETTLED = (DONE, FAILED, ABORTED, CANCELLED, DAMAGED)


class QueueError(ValueError):
    """A queue command that cannot be done (no such entry, it already ended)."""


def queue_dir(saves: Path | None = None) -> Path:
    return (saves or saves_dir()) / QUEUE_DIR


def _read(saves: Path) -> dict[str, Any]:
    path = queue_dir(saves) / STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"next_id": 1, "entries": []}
    except (OSError, ValueError) as exc:
        # Never started over silently: the runs it names are the user's work.
        raise QueueError(f"{path} cannot be read ({exc}); move it aside to start an "
                         "empty queue") from None
    if not isinstance(state, dict) or not isinstance(state.get("entries"), list):
        raise QueueError(f"{path} is not a queue; move it aside to start an empty queue")
    return state


@contextmanager
def changing(saves: Path | None = None) -> Iterator[dict[str, Any]]:
    """The queue's state to change in place, written back whole when the block ends
    (not when it raises); nobody else changes it meanwhile."""
    saves = saves or saves_dir()
    folder = queue_dir(saves)
    with locked(folder / LOCK):
        state = _read(saves)
        yield state
        atomic_write_text(folder / STATE, json.dumps(state, indent=1))


def entries(saves: Path | None = None) -> list[dict[str, Any]]:
    """Every entry, in queue order: the ended and the running first, then the waiting in
    the order they will run."""
    return _read(saves or saves_dir())["entries"]


def add(configs: list[RunConfig], saves: Path | None = None, sweep: str | None = None,
        evaluate: dict[str, Any] | None = None, labels: list[dict[str, Any]] | None = None,
        start_worker: bool = True) -> list[dict[str, Any]]:
    """Queue runs at the end of the queue (each config already validated: RunConfig is)
    and start the worker if none works; return the new entries. `evaluate` ({"dataset",
    "max_samples"}) evaluates each run once it is done; `sweep` and `labels` say which
    sweep an entry belongs to and with which of its values."""
    from core import distributed
    from core.schema.config import ConfigError
    from core.train import trackers

    # What this machine lacks is said now, not when the run's turn comes.
    missing = [p for cfg in configs for p in distributed.launch_problems(cfg)
               + trackers.problems(cfg)]
    if missing:
        raise ConfigError(list(dict.fromkeys(missing)))
    new = []
    with changing(saves) as state:
        for i, cfg in enumerate(configs):
            entry = {"id": state["next_id"], "status": WAITING, "settings": cfg.to_dict(),
                     "added": time.time(), "run": None, "error": None, "cancel": False,
                     "sweep": sweep, "values": (labels or [{}] * len(configs))[i],
                     "evaluate": evaluate, "scores": None, "waiting": None}
            state["next_id"] += 1
            state["entries"].append(entry)
            new.append(entry)
    if start_worker:
        ensure_worker(saves)
    return new


def _find(state: dict[str, Any], entry_id: int) -> dict[str, Any]:
    for entry in state["entries"]:
        if entry["id"] == entry_id:
            return entry
    ids = ", ".join(str(e["id"]) for e in state["entries"] if e["status"] not in SETTLED)
    raise QueueError(f"no queue entry {entry_id}" + (f"; waiting or running: {ids}" if ids
                                                      else "; the queue is empty"))


def cancel(entry_id: int, saves: Path | None = None) -> dict[str, Any]:
    """Take an entry out of the queue: a waiting one never runs; a running one is aborted
    by the worker (it stops at its next step and saves, as Abort does). Returns it."""
    with changing(saves) as state:
        entry = _find(state, entry_id)
        if entry["status"] in SETTLED:
            raise QueueError(f"queue entry {entry_id} already ended ({entry['status']})")
        if entry["status"] == WAITING:
            entry.update(status=CANCELLED, ended=time.time())
        else:
            entry["cancel"] = True
    if entry["status"] == RUNNING:
        ensure_worker(saves)  # the one that aborts it (one left behind by a reboot is gone)
    return entry


def move(entry_id: int, to: int, saves: Path | None = None) -> int:
    """Put a waiting entry at position `to` (1 = next to run) among the waiting ones;
    returns the position it took (`to` beyond the end means last)."""
    if to < 1:
        raise QueueError(f"position {to}: positions start at 1 (the next to run)")
    with changing(saves) as state:
        entry = _find(state, entry_id)
        if entry["status"] != WAITING:
            raise QueueError(f"queue entry {entry_id} is {entry['status']}; only a waiting "
                             "entry can move")
        waiting = [e for e in state["entries"] if e["status"] == WAITING and e is not entry]
        others = [e for e in state["entries"] if e["status"] != WAITING]
        position = min(to, len(waiting) + 1)
        waiting.insert(position - 1, entry)
        state["entries"] = others + waiting
    return position


def clear(saves: Path | None = None) -> int:
    """Forget the entries that ended (their runs stay in saves/); returns how many."""
    with changing(saves) as state:
        kept = [e for e in state["entries"] if e["status"] not in SETTLED]
        gone = len(state["entries"]) - len(kept)
        state["entries"] = kept
    return gone


def pending(saves: Path | None = None) -> list[dict[str, Any]]:
    """The entries still to run or running."""
    return [e for e in entries(saves) if e["status"] not in SETTLED]


# -- the worker --------------------------------------------------------------------------
def worker_alive(saves: Path | None = None) -> bool:
    """Whether a worker holds the queue (its lock, which dies with it)."""
    return lock_held(queue_dir(saves) / WORKER_LOCK)


def ensure_worker(saves: Path | None = None) -> bool:
    """Start the worker when something waits and none works (after a reboot, the first
    look at the queue does it); True if one was started. Two racing callers may both
    start one: the second finds the lock taken and exits at once."""
    saves = saves or saves_dir()
    try:
        if not pending(saves) or worker_alive(saves):
            return False
    except QueueError:
        return False  # said by whoever lists the queue
    folder = queue_dir(saves) / WORKER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    spawn(folder, ["-m", WORKER_MODULE, str(saves)],
                 {"PEFT_STUDIO_SAVES": str(saves)})
    return True


def describe(entry: dict[str, Any]) -> str:
    """What an entry trains, in a few words: its sweep values, or model and method."""
    if entry.get("values"):
        return ", ".join(f"{k}={v}" for k, v in entry["values"].items())
    s = entry["settings"]
    return f"{s.get('method')} on {', '.join(s.get('dataset') or [])} ({s.get('model')})"


def position(entry_id: int, saves: Path | None = None) -> int:
    """How many entries run before this one (0: it is next, or running)."""
    ahead = 0
    for entry in entries(saves):
        if entry["id"] == entry_id:
            return ahead
        if entry["status"] not in SETTLED:
            ahead += 1
    raise QueueError(f"no queue entry {entry_id}")
