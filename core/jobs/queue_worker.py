"""The queue's worker: `python -m core.jobs.queue_worker SAVES`, started by core.jobs.queue
when something waits. It trains the waiting entries one after another through the runner
(each an ordinary run in saves/), evaluates a run when its entry asks, aborts a run whose
entry is cancelled, and exits when nothing waits. A worker that died (SIGKILL, a reboot)
leaves a `running` entry; the next worker waits for that run, or settles it from its files
if it is gone.
"""

from __future__ import annotations

import fcntl
import sys
import time
from pathlib import Path
from typing import Any

from core.jobs import queue, runner
from core.jobs.device import BusyError
from core.jobs.process import wait_for_exit
from core.jobs.runs import DONE, FAILED, RUNNING, run_status
from core.schema.config import ConfigError, RunConfig

POLL = 1.0  # how often a running entry is looked at (its end, a cancel)
BUSY_POLL = 2.0  # how often a busy device is asked again


def _take(saves: Path) -> dict[str, Any] | None:
    """The entry to work on: one left running by a dead worker, else the next waiting
    one, marked running; None when nothing waits."""
    with queue.changing(saves) as state:
        for entry in state["entries"]:
            if entry["status"] == queue.RUNNING:
                return dict(entry)
        for entry in state["entries"]:
            if entry["status"] == queue.WAITING:
                entry.update(status=queue.RUNNING, started=time.time())
                return dict(entry)
    return None


def _update(saves: Path, entry_id: int, **changes: Any) -> dict[str, Any]:
    """Change one entry; returns it as it now is (a cancel may have come meanwhile)."""
    with queue.changing(saves) as state:
        entry = next(e for e in state["entries"] if e["id"] == entry_id)
        entry.update(changes)
        return dict(entry)


def _cancelled(saves: Path, entry_id: int) -> bool:
    return any(e["id"] == entry_id and e.get("cancel") for e in queue.entries(saves))


def _start(saves: Path, entry: dict[str, Any]) -> Path | None:
    """Start the entry's run once the device is free (a run started by hand goes first);
    None when it was cancelled meanwhile or its settings no longer start."""
    told = None
    while True:
        if _cancelled(saves, entry["id"]):
            _update(saves, entry["id"], status=queue.CANCELLED, ended=time.time())
            return None
        try:
            run_dir = runner.start(RunConfig(**entry["settings"]), saves)
        except BusyError as exc:
            if str(exc) != told:
                _update(saves, entry["id"], waiting=str(exc))
                told = str(exc)
            time.sleep(BUSY_POLL)
            continue
        except ConfigError as exc:  # a dataset removed, a tracker uninstalled meanwhile
            _update(saves, entry["id"], status=FAILED, ended=time.time(),
                    error=f"did not start: {exc}")
            return None
        _update(saves, entry["id"], run=run_dir.name, waiting=None)
        return run_dir


def _follow(saves: Path, entry_id: int, job: Path, abort_timeout: float = 60.0) -> bool:
    """Wait for a run (or an evaluation) to end, aborting it if its entry is cancelled;
    True unless it was."""
    while run_status(job)[0] == RUNNING:
        if _cancelled(saves, entry_id):
            runner.abort(job, timeout=abort_timeout)
            return False
        time.sleep(POLL)
    # Its end event is written while it still closes: the next run must find the device free.
    wait_for_exit(job)
    return not _cancelled(saves, entry_id)


def _evaluate(saves: Path, entry: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    from core.evaluate import job as evaluate

    spec = evaluate.EvalSpec(run_dir=str(run_dir), dataset=[entry["evaluate"]["dataset"]],
                             max_samples=int(entry["evaluate"].get("max_samples") or 30),
                             include_base=False)
    job = evaluate.start(spec)
    if not _follow(saves, entry["id"], job, abort_timeout=10):
        return None
    state = evaluate.job_state(job)
    return (state.results or {}).get("models", {}).get("fine_tuned", {})


def work_on(saves: Path, entry: dict[str, Any]) -> None:
    """Train one entry (and evaluate it), then settle it."""
    run_dir = saves / entry["run"] if entry.get("run") else _start(saves, entry)
    if run_dir is None:
        return
    finished = _follow(saves, entry["id"], run_dir)
    status, end = run_status(run_dir)
    scores = None
    if finished and status == DONE and entry.get("evaluate"):
        scores = _evaluate(saves, entry, run_dir)
        finished = scores is not None
    _update(saves, entry["id"], status=status if finished else queue.CANCELLED,
            ended=time.time(), error=end.get("error"), scores=scores)


def work(saves: Path) -> None:
    """Work until nothing waits. The decision to stop is taken under the queue's lock and
    the worker's lock let go before that one, so an entry added at that moment either is
    seen here or finds no worker and starts one."""
    while True:
        entry = _take(saves)
        if entry is None:
            return
        work_on(saves, entry)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m {queue.WORKER_MODULE} SAVES_DIR", file=sys.stderr)
        return 2
    saves = Path(argv[0])
    folder = queue.queue_dir(saves)
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / queue.WORKER_LOCK, "a")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another worker has the queue", flush=True)
        return 0
    while True:
        work(saves)
        # Let go of the worker lock while holding the queue's: an add() now waits for
        # the queue lock, then sees no worker and starts one.
        with queue.changing(saves) as state:
            if any(e["status"] in (queue.WAITING, queue.RUNNING) for e in state["entries"]):
                continue
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
        print("queue empty; worker exits", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
