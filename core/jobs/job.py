"""How any job lives: a folder, a subprocess that `start_job` starts in it, events appended
to its events.jsonl, exactly one end event (done, aborted, or failed with a readable
error), and a terminal that follows it.

A job module (core/train/trainer.py, core/export/job.py, core/experiments/compare.py) keeps
a spec that `start_job` writes as YAML, a function doing the work, and a `main`
that hands both to `run_job`.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

from core.distributed import ranks
from core.fsutil import atomic_write_text, unique_dir
from core.jobs import runner
from core.jobs.device import hold_device_for_job
from core.jobs.events import EventWriter, read_events, read_log, readable_error
from core.jobs.process import spawn
from core.jobs.runs import ABORTED, DONE, FAILED, RUNNING, run_status

Spec = TypeVar("Spec")


def run_job(argv: list[str] | None, usage: str, load: Callable[[Path], Spec],
            work: Callable[[Spec, Path, EventWriter], dict[str, Any]],
            device_for: Callable[[Spec], str] | None = None) -> int:
    """The body of a job's `main`: `python -m module JOB_DIR/SPEC_FILE`.

    Loads the spec, takes the device when `device_for` names what for (an abort while
    waiting for it ends the job `aborted`), runs `work(spec, job_dir, events)` and writes
    the end event from what it returns (status "done" unless it says otherwise). A
    KeyboardInterrupt ends it `aborted`; any other exception `failed`, with a readable
    error and the traceback in log.txt.
    Returns the exit code: 1 for a failed job, 2 for a bad command line, else 0."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: {usage}", file=sys.stderr)
        return 2
    job = Path(argv[0]).parent
    # Under torchrun (core.distributed.launch) every rank runs this; rank 0 alone writes events.
    events = ranks.events_for_rank(job)
    try:
        spec = load(Path(argv[0]))
        if device_for is not None:
            # Held (the lock file kept open) until this function returns.
            device = hold_device_for_job(job, device_for(spec))
            if device is None:
                raise KeyboardInterrupt  # aborted while it waited for the device
        end = {"status": DONE, "error": None, **work(spec, job, events)}
    except KeyboardInterrupt:  # Ctrl-C, or stopped before it began
        events.emit("end", status=ABORTED, error=None, output_dir=None)
        return 0
    except Exception as exc:  # every failure must reach the UI as an end event
        traceback.print_exc()
        sys.stdout.flush()
        if ranks.under_launcher():
            # core.distributed.launch names the rank that failed first (this one may only have
            # lost its partner) and writes the end event; this line is what it quotes.
            print(f"error: {readable_error(exc)}", file=sys.stderr, flush=True)
            return 1
        events.emit("end", status=FAILED, error=readable_error(exc), output_dir=None)
        return 1
    events.emit("end", **end)
    return 1 if end["status"] == FAILED else 0


def describe_progress(event: dict[str, Any]) -> str | None:
    """A progress event as one line ("[2/5] writing shards"); other events: nothing."""
    if event["type"] != "progress":
        return None
    return f"[{event['done']}/{event['total']}] {event['message']}"


def follow(job: Path, describe: Callable[[dict[str, Any]], str | None],
           show_log: bool = False, abort_timeout: float = 60.0) -> str:
    """Print a job's events (as `describe` words them; None skips one) and, with
    `show_log`, its log, until it ends; Ctrl-C aborts it. Returns its status."""
    offset = log_offset = 0
    try:
        while True:
            new, offset = read_events(job, offset)
            for event in new:
                line = describe(event)
                if line is not None:
                    print(line, flush=True)
            if show_log:
                text, log_offset = read_log(job, log_offset)
                sys.stdout.write(text)
            status = run_status(job)[0]
            if status != RUNNING and not new:
                return status
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("aborting: it stops at the next step and keeps what it has ...", file=sys.stderr,
              flush=True)
        return runner.abort(job, timeout=abort_timeout)


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
