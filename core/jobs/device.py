"""The device: one job at a time on this machine (a trainer, an evaluation, an export, the
chat worker), through locks that the kernel drops when their holder dies."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.fsutil import atomic_write_text, lock_held
from core.jobs.events import EventWriter, read_events
from core.jobs.process import ABORT_FILE
from core.paths import saves_dir


class BusyError(RuntimeError):
    """Another run is still training on this machine."""


# -- the device: one job at a time ---------------------------------------------------------
# Two locks, both flock()s on files in saves/, which the kernel drops when their holder
# dies (even by SIGKILL), so a crash never leaves the machine "busy" for ever:
#   .start.lock   held for the instant of check-and-start, so two starts racing (two
#                 browser tabs, UI and CLI) cannot both see the machine free;
#   .device.lock  held for its whole life by the process using the device: a trainer, an
#                 evaluation, an export, or the chat worker while it loads or generates.
#                 .device.holder names it, for "waiting for <job>".
START_LOCK, DEVICE_LOCK, DEVICE_HOLDER = ".start.lock", ".device.lock", ".device.holder"


def device_holder(saves: Path | None = None) -> str | None:
    """The name of the job holding the device, or None when it is free."""
    saves = saves or saves_dir()
    if not lock_held(saves / DEVICE_LOCK):
        return None
    try:
        return json.loads((saves / DEVICE_HOLDER).read_text())["name"]
    except (OSError, ValueError, KeyError):
        return "another job"


def hold_device(name: str, on_wait: Callable[[str], None] | None = None,
                cancelled: Callable[[], bool] = lambda: False, poll: float = 0.5,
                saves: Path | None = None, job: Path | None = None) -> Any:
    """Take the device for this process and return the open lock file (the device is
    free again when it is closed or the process ends). While another job holds it,
    `on_wait(holder)` is called once per new holder and the call waits; it returns None
    if `cancelled()` turns true first."""
    saves = saves or saves_dir()
    saves.mkdir(parents=True, exist_ok=True)
    f = open(saves / DEVICE_LOCK, "a")  # noqa: SIM115 - held for the caller's lifetime
    told = None
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = device_holder(saves) or "another job"
            if holder != told and on_wait is not None:
                on_wait(holder)
            told = holder
            if cancelled():
                f.close()
                return None
            time.sleep(poll)
    atomic_write_text(saves / DEVICE_HOLDER, json.dumps(
        {"name": name, "pid": os.getpid(), "job": str(job) if job else None}))
    return f


def free_or_holder(saves: Path, grace: float = 10.0) -> str | None:
    """`device_holder`, except that a holder whose job has written its end event gets
    `grace` seconds to exit: Start pressed the moment a run says done must not be refused
    because its process is still closing."""
    deadline = time.time() + grace
    while True:
        holder = device_holder(saves)
        if holder is None:
            return None
        try:
            job = json.loads((saves / DEVICE_HOLDER).read_text()).get("job")
        except (OSError, ValueError):
            job = None
        ended = job is not None and any(e["type"] == "end" for e in read_events(Path(job))[0])
        if not ended or time.time() >= deadline:
            return holder
        time.sleep(0.1)



def hold_device_for_job(job: Path, what: str) -> Any:
    """`hold_device` for an evaluation or export job: while it waits, its progress line
    says for whom ("waiting for <run> to finish"); an abort ends the wait. Returns the
    lock file, or None if it was aborted while waiting."""
    events = EventWriter(job)

    def on_wait(holder: str) -> None:
        events.emit("progress", done=0, total=0, message=f"waiting for {holder} to finish")
        print(f"waiting for {holder} to finish", flush=True)

    return hold_device(f"{what} {job.name}", on_wait=on_wait,
                       cancelled=lambda: (job / ABORT_FILE).exists(), job=job)
