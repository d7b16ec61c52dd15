"""Resume a run that stopped before its end (aborted, failed, killed, the machine restarted)
from its newest resume point, in the same folder.

A resume point is the Trainer's own checkpoint (`trainer/checkpoint-N`: the weights, the
optimizer, the scheduler, the RNG states and the step; see core.train.trainer_args), written
every `save_steps` beside the studio's loadable result `checkpoints/step-N`. The Trainer
writes its `trainer_state.json` last, so a folder without one was cut short and is no
resume point. Resuming appends a `resume` event (what the run's readers make one stream
of steps with: core.jobs.events.one_stream), drops what the stopped part wrote after that
step, and starts the trainer again, which picks the point up from RESUME_FILE.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from core.fsutil import atomic_write_text
from core.jobs import runner
from core.jobs.events import EventWriter
from core.jobs.process import ABORT_FILE
from core.jobs.runs import CONFIG, DAMAGED, DONE, RUNNING, run_status
from core.schema.config import SETTINGS, RunConfig

RESUME_FILE = "resume.json"
POINTS = "trainer"  # the Trainer's output_dir inside the run folder
STATE = "trainer_state.json"
# What a resumed run may change: how long it goes on and how it reports. Anything else
# (model, data, method, batch, learning rate...) would make it another run than the one
# whose optimizer state it carries on.
CHANGEABLE = ("max_steps", "num_train_epochs", "logging_steps", "eval_steps", "save_steps",
              "save_total_limit", "report_to", "early_stopping_patience",
              "early_stopping_threshold", "early_stopping_load_best")


def resume_points(run_dir: Path) -> dict[int, Path]:
    """{step: folder} of the run's complete resume points."""
    points = {}
    for folder in (run_dir / POINTS).glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        if step.isdigit() and (folder / STATE).is_file():
            points[int(step)] = folder
    return dict(sorted(points.items()))


def resume_problem(run_dir: Path) -> str | None:
    """Why this run cannot be resumed, in a sentence; None when it can."""
    status, end = run_status(run_dir)
    if status == RUNNING:
        return f"run {run_dir.name!r} is still training"
    if status == DONE:
        return f"run {run_dir.name!r} finished all its steps; there is nothing to resume"
    if status == DAMAGED:
        return f"run {run_dir.name!r} is damaged ({end.get('error')}); start it again instead"
    if end.get("diverged"):
        return (f"run {run_dir.name!r} diverged; resuming would repeat it: start a new run "
                "with a lower learning rate")
    if not resume_points(run_dir):
        return (f"run {run_dir.name!r} has no resume point (it stopped before its first "
                "checkpoint, or save_steps is 0); start it again instead")
    return None


def changed_settings(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """{setting: (before, now)} for every setting the resumed run would change."""
    before, now = old.all_values(), new.all_values()
    return {k: (before[k], now[k]) for k in SETTINGS if before[k] != now[k]}


def resume(run_dir: Path, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start `run_dir` again from its newest resume point, with `changes` to the settings
    that may change (CHANGEABLE). Returns the `resume` event. Raises ValueError with the
    reason when it cannot, BusyError when the device is taken."""
    from core import distributed
    from core.schema.config import ConfigError

    problem = resume_problem(run_dir)
    if problem:
        raise ValueError(problem)
    old = RunConfig.load(run_dir / CONFIG)
    cfg = old.replace(**(changes or {}))
    changed = changed_settings(old, cfg)
    fixed = [f"{k} ({a!r} -> {b!r})" for k, (a, b) in changed.items() if k not in CHANGEABLE]
    if fixed:
        raise ValueError("a resumed run carries on the same training; these cannot change: "
                         + ", ".join(fixed) + ". Start a new run for them (changeable: "
                         + ", ".join(CHANGEABLE) + ")")
    if distributed.launched(cfg):
        raise ValueError("resuming a run over several processes is not supported yet; "
                         "start it again")
    step, point = list(resume_points(run_dir).items())[-1]
    event: dict[str, Any] = {}

    def before() -> None:
        _drop_after(run_dir, step)
        (run_dir / ABORT_FILE).unlink(missing_ok=True)
        if changed:
            cfg.save(run_dir / CONFIG)
        atomic_write_text(run_dir / RESUME_FILE,
                          json.dumps({"checkpoint": str(point), "step": step}))
        event.update(EventWriter(run_dir).emit(
            "resume", step=step, checkpoint=str(point),
            changed={k: list(v) for k, v in changed.items()}))

    try:
        runner.relaunch(cfg, run_dir, before)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return event


def requested_point(run_dir: Path) -> Path | None:
    """The resume point the trainer starting in `run_dir` must continue from, if any."""
    try:
        point = Path(json.loads((run_dir / RESUME_FILE).read_text())["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return point if (point / STATE).is_file() else None


def finished(run_dir: Path) -> None:
    """A run that ran all its steps keeps its results, not its resume points (optimizer
    state, as large as the trained weights twice)."""
    shutil.rmtree(run_dir / POINTS, ignore_errors=True)
    (run_dir / RESUME_FILE).unlink(missing_ok=True)


def cut_short(run_dir: Path, exc: Exception) -> OSError | None:
    """For a full disk while the Trainer wrote a resume point: that point (a folder without
    its state file, which it writes last) is removed, and the error names it. None for any
    other error, and for a full disk some other save has already named."""
    from core.fsutil import DiskFull, disk_full, is_disk_full

    if isinstance(exc, DiskFull) or not is_disk_full(exc):
        return None
    partial = [p for p in (run_dir / POINTS).glob("checkpoint-*") if not (p / STATE).is_file()]
    for folder in partial:
        shutil.rmtree(folder, ignore_errors=True)
    return disk_full(partial[0] if partial else run_dir / POINTS)


def _drop_after(run_dir: Path, step: int) -> None:
    """What the stopped part saved after `step` belongs to steps trained again."""
    for pattern, prefix in (("checkpoints/step-*", "step-"),
                            (f"{POINTS}/checkpoint-*", "checkpoint-")):
        for folder in run_dir.glob(pattern):
            n = folder.name.removeprefix(prefix)
            if n.isdigit() and int(n) > step:
                shutil.rmtree(folder, ignore_errors=True)
