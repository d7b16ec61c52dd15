"""Start, watch and abort training runs. This is the API the web UI and the CLI use.

A run is a subprocess writing into its own directory (config.yaml, events.jsonl,
log.txt, process.json). All state lives there plus the process id, so any number of
UIs, or a restarted one, can re-attach: status is derived (core.jobs.runs), never kept in
memory. The child's stdout/stderr go straight to log.txt, never through a pipe: a pipe that
nobody drains blocks the trainer once the browser is gone.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from core.fsutil import locked, unique_dir
from core.jobs.device import START_LOCK, BusyError, free_or_holder
from core.jobs.events import EventWriter, read_events
from core.jobs.process import ABORT_FILE, kill_tree, process_alive, process_info, spawn
from core.jobs.runs import ABORTED, CONFIG, FAILED, RUNNING, active_run, run_status
from core.paths import saves_dir
from core.schema.config import RunConfig


def new_run_dir(cfg: RunConfig, saves: Path | None = None) -> Path:
    """A fresh folder; an existing run is never reused, a suffix is added instead."""
    return unique_dir(saves or saves_dir(),
                      cfg.run_name or f"{cfg.method}-{datetime.now():%Y%m%d-%H%M%S}")


def start(cfg: RunConfig, saves: Path | None = None) -> Path:
    """Start a training run in the background; return its folder.

    One job at a time per machine: two trainers would fight for the same memory. The
    check and the start happen under one lock, so of two starts racing exactly one wins."""
    from core import distributed
    from core.schema.config import ConfigError
    from core.train import trackers

    missing = distributed.launch_problems(cfg) + trackers.problems(cfg)
    if missing:
        raise ConfigError(missing)
    saves = saves or saves_dir()
    with locked(saves / START_LOCK):
        _check_free(saves)
        run_dir = new_run_dir(cfg, saves)
        cfg.save(run_dir / CONFIG)
        _launch(cfg, run_dir)
    return run_dir


def relaunch(cfg: RunConfig, run_dir: Path, before: Callable[[], None]) -> None:
    """Start the trainer again in an existing run folder (core.jobs.resume), `before` it
    (writing what the new part must find) under the same lock and checks as `start`."""
    with locked(run_dir.parent / START_LOCK):
        _check_free(run_dir.parent)
        before()
        _launch(cfg, run_dir)


def _check_free(saves: Path) -> None:
    busy = active_run(saves)
    if busy is not None:
        raise BusyError(
            f"run {busy.name!r} is still training; wait for it or abort it before "
            "starting another"
        )
    holder = free_or_holder(saves)
    if holder is not None:
        raise BusyError(f"{holder} is using the device; wait for it to finish or stop "
                        "it before starting a run")


def _launch(cfg: RunConfig, run_dir: Path) -> None:
    from core import distributed

    if distributed.launched(cfg):
        # torchrun under core.distributed.launch, which reports a rank that dies (see there)
        distributed.write_deepspeed_config(cfg, run_dir)
        spawn(run_dir, ["-m", "core.distributed.launch", str(run_dir / CONFIG)],
              distributed.environment(cfg))
    else:
        spawn(run_dir, ["-m", "core.train", str(run_dir / CONFIG)])


# A save in progress is waited for this long past the abort deadline: killing it would
# lose the result, and a big model on a slow disk takes minutes to write.
SAVE_GRACE = 30 * 60.0


def _saving(run_dir: Path) -> dict[str, Any] | None:
    """The trainer's `saving` event when a save is what it is doing now, else None."""
    events, _ = read_events(run_dir)
    return events[-1] if events and events[-1]["type"] == "saving" else None


def abort(run_dir: Path, timeout: float = 60.0) -> str:
    """Ask the run to stop and save; kill its process group if it has not within
    `timeout` seconds (a save under way gets SAVE_GRACE more). Calling it again, as a
    second Abort click does, is safe: the trainer finishes a save it has begun. Returns
    the final status."""
    (run_dir / ABORT_FILE).touch()
    info = process_info(run_dir)
    if info and process_alive(run_dir):
        try:
            os.kill(info["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout
    saving = None
    while process_alive(run_dir):
        saving = _saving(run_dir)
        if time.time() >= deadline and (saving is None
                                        or time.time() > saving["time"] + SAVE_GRACE):
            break
        time.sleep(0.2)
    if process_alive(run_dir) and info:
        kill_tree(info["pid"])
        while process_alive(run_dir):
            time.sleep(0.1)
    events, _ = read_events(run_dir)
    if not any(e["type"] == "end" for e in events):
        if saving is not None:
            EventWriter(run_dir).emit(
                "end", status=FAILED, final_loss=None, output_dir=None,
                error=f"killed while saving {saving['path']}, which took longer than "
                      f"{(timeout + SAVE_GRACE) / 60:.0f} min; that result was not written "
                      "(nothing half-written is left)")
        else:
            EventWriter(run_dir).emit("end", status=ABORTED, final_loss=None,
                                      output_dir=None, error="killed after it did not "
                                      f"stop within {timeout:g} s")
    return run_status(run_dir)[0]


def wait(run_dir: Path, timeout: float | None = None, poll: float = 0.5) -> str:
    """Block until the run ends; return its status."""
    deadline = None if timeout is None else time.time() + timeout
    while True:
        status, _ = run_status(run_dir)
        if status != RUNNING:
            return status
        if deadline is not None and time.time() > deadline:
            raise TimeoutError(f"run {run_dir.name} still running after {timeout} s")
        time.sleep(poll)
