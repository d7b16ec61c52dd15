"""Finding runs on disk and what they produced: a run folder by name, its trained result
and checkpoints, and what to load for each (`Target`). Every tab and job finds a run here;
starting, watching and aborting the process that fills a run folder is core/jobs/runner.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.jobs import runner
from core.methods.common import MANIFEST, read_manifest
from core.paths import saves_dir
from core.schema.config import RunConfig


def resolve_run(name: str | Path) -> Path:
    """A run folder from its name under saves/ or a path; raises ValueError if not one."""
    path = Path(name).expanduser()
    if not (path / runner.CONFIG).is_file():
        path = saves_dir() / str(name)
    if not (path / runner.CONFIG).is_file():
        raise ValueError(f"no run named {str(name)!r} (looked in {saves_dir()})")
    return path


def run_in_saves(name: object) -> Path | None:
    """The run folder `name` names in saves/ (a bare folder name, or a path whose folder is
    saves/ itself), else None. For names that come from a browser: "", ".", "..",
    separators elsewhere, NUL bytes, over-long names and non-text never leave saves/."""
    if not isinstance(name, str) or not name or "\0" in name or len(name) > 4096:
        return None
    saves = saves_dir()
    path = Path(name)
    if len(path.parts) > 1:
        try:
            if path.resolve().parent != saves.resolve():
                return None
        except (OSError, RuntimeError):
            return None
        name = path.name
    if name in (".", "..") or len(name.encode()) > 255:
        return None
    run = saves / name
    try:
        return run if (run / runner.CONFIG).is_file() else None
    except OSError:
        return None


def run_config(run_dir: Path) -> RunConfig:
    """The settings a run was started with."""
    return RunConfig.load(run_dir / runner.CONFIG)


def run_output(run_dir: Path) -> Path | None:
    """The trained result of a finished (or aborted but saved) run, else None."""
    status, end = runner.run_status(run_dir)
    if status not in (runner.DONE, runner.ABORTED):
        return None
    out = end.get("output_dir")
    if out and (Path(out) / MANIFEST).is_file():
        return Path(out)
    for name in ("adapter", "model"):  # a run folder moved after training
        if (run_dir / name / MANIFEST).is_file():
            return run_dir / name
    return None


def diverged(run_dir: Path) -> bool:
    """Whether the run ended `failed` because its training diverged (core.train.health)."""
    return bool(runner.run_status(run_dir)[1].get("diverged"))


def finished_runs(saves: Path | None = None) -> list[Path]:
    """Runs with a loadable result, newest first."""
    return [r.path for r in runner.list_runs(saves) if run_output(r.path) is not None]


def checkpoints(run_dir: Path) -> dict[str, Path]:
    """{"final": result folder, "step-N": checkpoint folder, ...}, latest step first."""
    found: dict[str, Path] = {}
    out = run_output(run_dir)
    if out is not None:
        found["final"] = out
    if diverged(run_dir):
        # Which of its checkpoints were already going bad is unknown: offer none.
        return found
    steps = [p for p in (run_dir / "checkpoints").glob("step-*") if (p / MANIFEST).is_file()]
    for p in sorted(steps, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        found[p.name] = p
    return found


def checkpoint_names(run: str | None) -> list[str]:
    """The choices of a run's result picker: "final" first, then its checkpoints; just
    "final" for no run, or one that is gone."""
    if not run:
        return ["final"]
    try:
        return list(checkpoints(resolve_run(run))) or ["final"]
    except ValueError:
        return ["final"]


@dataclass(frozen=True)
class Target:
    """What to load: a base model (`trained` None) or a run's result on its base."""

    model: str
    trained: str | None = None
    label: str = ""

    @property
    def key(self) -> str:
        return f"{self.model}|{self.trained or ''}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        return cls(d["model"], d.get("trained"), d.get("label", ""))


def run_target(run_dir: Path, checkpoint: str = "final") -> Target:
    points = checkpoints(run_dir)
    if checkpoint not in points:
        raise ValueError(f"{run_dir.name} has no result {checkpoint!r}; it has: "
                         f"{', '.join(points) or 'none (not finished?)'}")
    out = points[checkpoint]
    label = run_dir.name if checkpoint == "final" else f"{run_dir.name} @ {checkpoint}"
    return Target(read_manifest(out)["model"], str(out), label)


def base_target(model: str) -> Target:
    return Target(model, None, f"base: {Path(model).name if '/' in model else model}")
