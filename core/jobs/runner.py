"""Start, watch and abort jobs. This is the API the web UI and the CLI use.

A job is a subprocess writing into its own directory (config.yaml, events.jsonl,
log.txt, process.json). All state lives there plus the process id, so any number of
UIs, or a restarted one, can re-attach: status is derived, never kept in memory.
The child's stdout/stderr go straight to log.txt, never through a pipe: a pipe that
nobody drains blocks the trainer once the browser is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

from core.fsutil import atomic_write_text
from core.jobs.events import EVENTS, LOG, EventWriter, read_events, scan_events
from core.paths import ROOT, child_env, saves_dir
from core.schema.config import RunConfig

PROCESS = "process.json"
CONFIG = "config.yaml"
ABORT_FILE = "ABORT"  # the trainer polls for it (see core.train.trainer)
RUNNING, DONE, ABORTED, FAILED = "running", "done", "aborted", "failed"
# A run whose files are damaged (a bad disk, a power cut, a hand edit): listed with what is
# wrong, never offered to Chat, Evaluate or Export, and never in the way of other runs.
DAMAGED = "damaged"


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


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def device_holder(saves: Path | None = None) -> str | None:
    """The name of the job holding the device, or None when it is free."""
    saves = saves or saves_dir()
    path = saves / DEVICE_LOCK
    if not path.exists():
        return None
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads((saves / DEVICE_HOLDER).read_text())["name"]
            except (OSError, ValueError, KeyError):
                return "another job"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


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


def _free_or_holder(saves: Path, grace: float = 10.0) -> str | None:
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


# -- processes ---------------------------------------------------------------------------
def _create_time(pid: int) -> float | None:
    """When `pid` started, as psutil reports it (on Linux, macOS and Windows alike): with
    the pid it names a process uniquely, so a recycled pid is never taken for our job.
    None when no such process lives; an exited but unreaped process (a zombie) is dead."""
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def spawn(job_dir: Path, argv: list[str], extra_env: dict[str, str] | None = None) -> int:
    """Run `python argv...` detached in its own session, output to job_dir/log.txt."""
    env = child_env(**(extra_env or {}))
    with open(job_dir / LOG, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own process group: closing the UI (or Ctrl-C in its terminal) does not
            # reach the trainer, and abort can kill the whole group.
            start_new_session=True,
        )
    # Reap it when it ends so it does not linger as a zombie under a long-lived UI.
    threading.Thread(target=proc.wait, daemon=True).start()
    info = {"pid": proc.pid, "create_time": _create_time(proc.pid), "argv": argv,
            "started": time.time()}
    atomic_write_text(job_dir / PROCESS, json.dumps(info))
    return proc.pid


def kill_tree(pid: int) -> None:
    """SIGKILL a job's process group and every process under it: torchrun starts each
    rank in a session of its own, out of reach of the group."""
    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    for target in (pid, *(p.pid for p in below)):
        try:
            os.killpg(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass


def process_alive(job_dir: Path) -> bool:
    try:
        info = json.loads((job_dir / PROCESS).read_bytes())
    except (OSError, ValueError):
        return False
    # A folder from an older version (no create_time) cannot prove its process is ours:
    # taken as ended, like any run whose process is gone; so is a damaged file.
    pid = info.get("pid") if isinstance(info, dict) else None
    created = info.get("create_time") if isinstance(info, dict) else None
    if type(pid) is not int or pid <= 0 or not isinstance(created, int | float) or not created:
        return False
    return _create_time(pid) == created


# -- runs --------------------------------------------------------------------------------
@dataclass
class RunInfo:
    name: str
    path: Path
    status: str
    method: str = ""
    model: str = ""
    dataset: list[str] = field(default_factory=list)
    started: float | None = None
    step: int = 0
    total_steps: int = 0
    final_loss: float | None = None
    error: str | None = None
    output_dir: str | None = None
    diverged: bool = False  # failed because training diverged (core.train.health)


def run_status(run_dir: Path, events: list[dict[str, Any]] | None = None,
               damage: str | None = None) -> tuple[str, dict]:
    """(status, end event or {}) from the run's files and whether its process lives. A run
    whose events or settings are damaged is DAMAGED, with what is wrong as the error (a
    caller giving `events` gives the damage it found with them), unless its trainer still
    runs: it can still be followed and aborted."""
    if events is None:
        events, _, damage = scan_events(run_dir)
        damage = damage or _read_config(run_dir)[1]
    end = next((e for e in reversed(events) if e["type"] == "end"), None)
    if damage and (end is not None or not process_alive(run_dir)):
        return DAMAGED, {"error": damage}
    if end:
        return end["status"], end
    if process_alive(run_dir):
        return RUNNING, {}
    if not (run_dir / PROCESS).exists():
        # config.yaml is written just before the process starts
        if time.time() - (_mtime(run_dir / CONFIG) or 0) < 30:
            return RUNNING, {}
        return FAILED, {"error": "this run was never started"}
    return FAILED, {"error": "the training process ended without reporting (killed, or "
                             "out of memory); see the end of its log"}


def run_info(run_dir: Path) -> RunInfo:
    events, _, damage = scan_events(run_dir)
    data, config_damage = _read_config(run_dir)
    status, end = run_status(run_dir, events, damage or config_damage)
    try:
        settings = RunConfig(**data).to_dict() if data else {}
    except Exception:  # a config from another version still lists, without details
        settings = {}
    steps = [e for e in events if e["type"] == "step"]
    start = next((e for e in events if e["type"] == "start"), {})
    return RunInfo(
        name=run_dir.name,
        path=run_dir,
        status=status,
        method=settings.get("method", ""),
        model=settings.get("model", ""),
        dataset=settings.get("dataset", []),
        started=start.get("time") or _mtime(run_dir / CONFIG),
        # The step reached: a finished run's end says how many ran (the last logged step
        # can be earlier when logging_steps does not divide them).
        step=end.get("steps") or (steps[-1]["step"] if steps else 0),
        total_steps=start.get("total_steps", 0),
        final_loss=end.get("final_loss", steps[-1].get("loss") if steps else None),
        error=end.get("error"),
        output_dir=end.get("output_dir"),
        diverged=bool(end.get("diverged")),
    )


def _is_run(folder: Path) -> bool:
    """A run folder of saves/ (a damaged one too: it still has one of a run's files)."""
    return any((folder / name).exists() for name in (CONFIG, EVENTS, PROCESS))


def _read_config(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """(the settings as written, or {}; what is damaged, or None): a config.yaml that is not
    a YAML mapping in UTF-8 is damage; settings of another version, or no file, are not."""
    try:
        data = yaml.safe_load((run_dir / CONFIG).read_bytes().decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a mapping of settings")
    except FileNotFoundError:  # a job's folder (an evaluation, an export) has none
        return {}, None
    except (OSError, ValueError, yaml.YAMLError) as exc:  # UnicodeDecodeError is a ValueError
        return {}, f"{CONFIG} cannot be read ({type(exc).__name__}: {exc})"[:300]
    return data, None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def list_runs(saves: Path | None = None) -> list[RunInfo]:
    """Every run under saves/, newest first."""
    saves = saves or saves_dir()
    if not saves.is_dir():
        return []
    runs = [run_info(p) for p in saves.iterdir() if _is_run(p)]
    return sorted(runs, key=lambda r: r.started or 0, reverse=True)


def active_run(saves: Path | None = None) -> Path | None:
    saves = saves or saves_dir()
    if not saves.is_dir():
        return None
    for p in saves.iterdir():
        if _is_run(p) and run_status(p)[0] == RUNNING:
            return p
    return None


def unique_dir(parent: Path, base: str) -> Path:
    """Create parent/base, or parent/base-2, -3, ... if taken: a job never reuses a folder."""
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = parent / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free folder name for {base!r} in {parent}")


def new_run_dir(cfg: RunConfig, saves: Path | None = None) -> Path:
    """A fresh folder; an existing run is never reused, a suffix is added instead."""
    return unique_dir(saves or saves_dir(),
                      cfg.run_name or f"{cfg.method}-{datetime.now():%Y%m%d-%H%M%S}")


def start_job(parent: Path, module: str, spec: dict[str, Any], spec_file: str) -> Path:
    """Start `python -m module SPEC` (an evaluation, an export) in a fresh time-stamped
    folder under `parent` holding its spec; return the folder."""
    job = unique_dir(parent, f"{datetime.now():%Y%m%d-%H%M%S}")
    atomic_write_text(job / spec_file, yaml.safe_dump(spec, sort_keys=False))
    spawn(job, ["-m", module, str(job / spec_file)])
    return job


@dataclass
class JobState:
    """Where a job started by `start_job` stands, from its folder alone."""

    status: str
    end: dict[str, Any]  # the end event, or {}
    progress: dict[str, Any]  # the last progress event, or {}
    spec: dict[str, Any]  # what start_job wrote, or {} if it is gone


def read_job(job: Path, spec_file: str) -> JobState:
    events, _ = read_events(job)
    status, end = run_status(job, events)
    progress = next((e for e in reversed(events) if e["type"] == "progress"), {})
    try:
        spec = yaml.safe_load((job / spec_file).read_text(encoding="utf-8")) or {}
    except OSError:
        spec = {}
    return JobState(status, end, progress, spec)


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
    with _locked(saves / START_LOCK):
        _check_free(saves)
        run_dir = new_run_dir(cfg, saves)
        cfg.save(run_dir / CONFIG)
        _launch(cfg, run_dir)
    return run_dir


def relaunch(cfg: RunConfig, run_dir: Path, before: Callable[[], None]) -> None:
    """Start the trainer again in an existing run folder (core.jobs.resume), `before` it
    (writing what the new part must find) under the same lock and checks as `start`."""
    with _locked(run_dir.parent / START_LOCK):
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
    holder = _free_or_holder(saves)
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
    info = _process_info(run_dir)
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


def _process_info(job_dir: Path) -> dict | None:
    try:
        return json.loads((job_dir / PROCESS).read_text())
    except (OSError, ValueError):
        return None


def wait_for_exit(job_dir: Path, timeout: float = 120.0, poll: float = 0.2) -> bool:
    """Wait until the job's process and every process under it have exited: a run's end
    event is written by rank 0 while torchrun and the other ranks are still shutting
    down. True once all are gone; False after `timeout`."""
    info = _process_info(job_dir)
    if not info or not process_alive(job_dir):
        return True
    try:
        root = psutil.Process(info["pid"])
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return True
    deadline = time.time() + timeout

    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() not in (psutil.STATUS_ZOMBIE,
                                                         psutil.STATUS_DEAD)
        except psutil.NoSuchProcess:
            return False

    while (procs := [p for p in procs if running(p)]) and time.time() < deadline:
        time.sleep(poll)
    return not procs


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
