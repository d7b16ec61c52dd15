"""Start, watch and abort jobs. This is the API the web UI and the CLI use.

A job is a subprocess writing into its own directory (config.yaml, events.jsonl,
log.txt, process.json). All state lives there plus the process id, so any number of
UIs, or a restarted one, can re-attach: status is derived, never kept in memory.
The child's stdout/stderr go straight to log.txt, never through a pipe: a pipe that
nobody drains blocks the trainer once the browser is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from core.config import RunConfig
from core.events import LOG, EventWriter, read_events
from core.paths import ROOT, saves_dir

PROCESS = "process.json"
CONFIG = "config.yaml"
ABORT_FILE = "ABORT"  # the trainer polls for it (see core.train)
RUNNING, DONE, ABORTED, FAILED = "running", "done", "aborted", "failed"


class BusyError(RuntimeError):
    """Another run is still training on this machine."""


# -- processes ---------------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot): with the pid it names a
    process uniquely, so a recycled pid is never mistaken for our trainer."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return int(fields[19])


def spawn(job_dir: Path, argv: list[str]) -> int:
    """Run `python argv...` detached in its own session, output to job_dir/log.txt."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
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
    info = {"pid": proc.pid, "start_time": _start_time(proc.pid), "argv": argv,
            "started": time.time()}
    (job_dir / PROCESS).write_text(json.dumps(info))
    return proc.pid


def process_alive(job_dir: Path) -> bool:
    try:
        info = json.loads((job_dir / PROCESS).read_text())
    except (OSError, ValueError):
        return False
    now = _start_time(info["pid"])
    return now is not None and now == info.get("start_time")


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


def run_status(run_dir: Path, events: list[dict[str, Any]] | None = None) -> tuple[str, dict]:
    """(status, end event or {}) from the run's files and whether its process lives."""
    if events is None:
        events, _ = read_events(run_dir)
    end = next((e for e in reversed(events) if e["type"] == "end"), None)
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
    events, _ = read_events(run_dir)
    status, end = run_status(run_dir, events)
    try:
        settings = RunConfig.load(run_dir / CONFIG).to_dict()
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
        step=steps[-1]["step"] if steps else 0,
        total_steps=start.get("total_steps", 0),
        final_loss=end.get("final_loss", steps[-1]["loss"] if steps else None),
        error=end.get("error"),
        output_dir=end.get("output_dir"),
    )


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
    runs = [run_info(p) for p in saves.iterdir() if (p / CONFIG).is_file()]
    return sorted(runs, key=lambda r: r.started or 0, reverse=True)


def active_run(saves: Path | None = None) -> Path | None:
    saves = saves or saves_dir()
    if not saves.is_dir():
        return None
    for p in saves.iterdir():
        if (p / CONFIG).is_file() and run_status(p)[0] == RUNNING:
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
    (job / spec_file).write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
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


def start(cfg: RunConfig, saves: Path | None = None) -> Path:
    """Start a training run in the background; return its folder.

    One run at a time per machine: two trainers would fight for the same memory."""
    busy = active_run(saves)
    if busy is not None:
        raise BusyError(
            f"run {busy.name!r} is still training; wait for it or abort it before starting "
            "another"
        )
    run_dir = new_run_dir(cfg, saves)
    cfg.save(run_dir / CONFIG)
    spawn(run_dir, ["-m", "core.train", str(run_dir / CONFIG)])
    return run_dir


def abort(run_dir: Path, timeout: float = 60.0) -> str:
    """Ask the run to stop and save; kill its process group if it has not within
    `timeout` seconds. Returns the final status."""
    (run_dir / ABORT_FILE).touch()
    info = _process_info(run_dir)
    if info and process_alive(run_dir):
        try:
            os.kill(info["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout
    while process_alive(run_dir) and time.time() < deadline:
        time.sleep(0.2)
    if process_alive(run_dir) and info:
        try:
            os.killpg(info["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
        while process_alive(run_dir):
            time.sleep(0.1)
    events, _ = read_events(run_dir)
    if not any(e["type"] == "end" for e in events):
        EventWriter(run_dir).emit("end", status=ABORTED, error="killed after it did not stop "
                                  f"within {timeout:g} s", final_loss=None, output_dir=None)
    return run_status(run_dir)[0]


def _process_info(job_dir: Path) -> dict | None:
    try:
        return json.loads((job_dir / PROCESS).read_text())
    except (OSError, ValueError):
        return None


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
