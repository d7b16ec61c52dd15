"""A job's process: started detached with its output in the job's log, identified by pid and
start time (so a recycled pid is never taken for it), waited for and killed with all it
started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from core.fsutil import atomic_write_text
from core.jobs.events import LOG
from core.paths import ROOT, child_env

PROCESS = "process.json"
ABORT_FILE = "ABORT"  # the job polls for it (see core.train.hooks, core.jobs.job)


def create_time(pid: int) -> float | None:
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
    info = {"pid": proc.pid, "create_time": create_time(proc.pid), "argv": argv,
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
    return create_time(pid) == created


def process_info(job_dir: Path) -> dict | None:
    try:
        return json.loads((job_dir / PROCESS).read_text())
    except (OSError, ValueError):
        return None


def wait_for_exit(job_dir: Path, timeout: float = 120.0, poll: float = 0.2) -> bool:
    """Wait until the job's process and every process under it have exited: a run's end
    event is written by rank 0 while torchrun and the other ranks are still shutting
    down. True once all are gone; False after `timeout`."""
    info = process_info(job_dir)
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
