"""Finding runs on disk and what state each is in: every run of saves/ and its status
(derived from its files and whether its process lives, never kept in memory), a run folder
by name, its trained result and checkpoints, and what to load for each (`Target`). Every
tab and job finds a run here; starting, watching and aborting the process that fills a run
folder is core/jobs/py."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.jobs.events import EVENTS, scan_events
from core.jobs.process import PROCESS, process_alive
from core.methods.result import MANIFEST, read_manifest
from core.paths import saves_dir
from core.schema.config import RunConfig

CONFIG = "config.yaml"
RUNNING, DONE, ABORTED, FAILED = "running", "done", "aborted", "failed"
# A run whose files are damaged (a bad disk, a power cut, a hand edit): listed with what is
# wrong, never offered to Chat, Evaluate or Export, and never in the way of other runs.
DAMAGED = "damaged"


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
    stopped_early: dict[str, Any] | None = None  # the end event's: step, best_step, ...


def run_status(run_dir: Path, events: list[dict[str, Any]] | None = None,
               damage: str | None = None) -> tuple[str, dict]:
    """(status, end event or {}) from the run's files and whether its process lives. A run
    whose events or settings are damaged is DAMAGED, with what is wrong as the error (a
    caller giving `events` gives the damage it found with them), unless its trainer still
    runs: it can still be followed and aborted."""
    if events is None:
        events, _, damage = scan_events(run_dir)
        damage = damage or read_config(run_dir)[1]
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
    data, config_damage = read_config(run_dir)
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
        stopped_early=end.get("stopped_early") if isinstance(end.get("stopped_early"), dict)
        else None,
    )


def is_run(folder: Path) -> bool:
    """A run folder of saves/ (a damaged one too: it still has one of a run's files)."""
    return any((folder / name).exists() for name in (CONFIG, EVENTS, PROCESS))


def read_config(run_dir: Path) -> tuple[dict[str, Any], str | None]:
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
    runs = [run_info(p) for p in saves.iterdir() if is_run(p)]
    return sorted(runs, key=lambda r: r.started or 0, reverse=True)


def active_run(saves: Path | None = None) -> Path | None:
    saves = saves or saves_dir()
    if not saves.is_dir():
        return None
    for p in saves.iterdir():
        if is_run(p) and run_status(p)[0] == RUNNING:
            return p
    return None


def resolve_run(name: str | Path) -> Path:
    """A run folder from its name under saves/ or a path; raises ValueError if not one."""
    path = Path(name).expanduser()
    if not (path / CONFIG).is_file():
        path = saves_dir() / str(name)
    if not (path / CONFIG).is_file():
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
        return run if (run / CONFIG).is_file() else None
    except OSError:
        return None


def run_config(run_dir: Path) -> RunConfig:
    """The settings a run was started with."""
    return RunConfig.load(run_dir / CONFIG)


def run_output(run_dir: Path) -> Path | None:
    """The trained result of a finished (or aborted but saved) run, else None."""
    status, end = run_status(run_dir)
    if status not in (DONE, ABORTED):
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
    return bool(run_status(run_dir)[1].get("diverged"))


def finished_runs(saves: Path | None = None) -> list[Path]:
    """Runs with a loadable result, newest first."""
    return [r.path for r in list_runs(saves) if run_output(r.path) is not None]


def checkpoints(run_dir: Path) -> dict[str, Path]:
    """{"final": result folder, "step-N": checkpoint folder, ...}, latest step first."""
    found: dict[str, Path] = {}
    out = run_output(run_dir)
    if out is not None:
        found["final"] = out
    if diverged(run_dir):
        # Which of its checkpoints were already going bad is unknown: offer none.
        return found
    best = run_dir / "checkpoints" / "best"  # early stopping's best evaluation (core.train.hooks)
    if (best / MANIFEST).is_file():
        found["best"] = best
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
