"""Run history: every run in saves/ as a table, and the curves of the runs a user picks."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from core.jobs.events import tail_log
from core.jobs.plots import lr_frame, overlay_frame, reward_frame
from core.jobs.resume import resume_points
from core.jobs.runs import ABORTED, DAMAGED, FAILED, RunInfo, list_runs, run_info
from core.paths import saves_dir
from webui.live.monitor import events_of

COLUMNS = ["run", "status", "method", "model", "dataset", "steps", "final loss", "started"]


def table() -> pd.DataFrame:
    rows = []
    for r in list_runs():
        rows.append([
            r.name,
            shown_status(r),
            r.method,
            _short_model(r.model),
            ", ".join(r.dataset),
            f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step),
            "" if r.final_loss is None else f"{r.final_loss:.4f}",
            datetime.fromtimestamp(r.started).strftime("%Y-%m-%d %H:%M") if r.started else "",
        ])
    return pd.DataFrame(rows, columns=COLUMNS)


def shown_status(info: RunInfo) -> str:
    # "failed" alone reads like a crash to fix; a diverged run needs other settings.
    if info.status == DAMAGED:
        return f"damaged: {info.error}"
    if info.diverged:
        return f"{info.status} (diverged)"
    if info.status in (ABORTED, FAILED) and (points := resume_points(info.path)):
        return f"{info.status} · resumable from step {max(points)}"
    if early := info.stopped_early:
        kept = " (its model kept)" if early.get("loaded_best") else ""
        return (f"{info.status} · stopped early at step {early.get('step')}, best at step "
                f"{early.get('best_step')}{kept}")
    return info.status


def run_names() -> list[str]:
    return [r.name for r in list_runs()]


def _short_model(model: str) -> str:
    # A local folder is identified well enough by its last two parts.
    path = Path(model)
    return str(Path(*path.parts[-2:])) if path.is_absolute() else model


def curves(names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(loss curves of all named runs, learning rate of the first, details markdown).
    A failed run's details carry its error and the end of its log."""
    runs = {n: run_info(run_dir(n)) for n in names if run_dir(n).is_dir()}
    events = {n: events_of(info.path) for n, info in runs.items()}
    first = next(iter(events.values()), [])
    details = []
    for name, info in runs.items():
        line = f"**{name}**: {shown_status(info)}"
        if info.final_loss is not None:
            line += f", final loss {info.final_loss:.4f}"
        if info.output_dir:
            line += f", saved to `{info.output_dir}`"
        details.append(line)
        if info.status == FAILED:
            details.append(f"✗ {info.error}\n\n```\n{tail_log(info.path, 3000).strip()}\n```")
    return overlay_frame(events), lr_frame(first), "\n\n".join(details)


def run_dir(name: str) -> Path:
    # Only a plain folder name: a crafted value must not reach outside saves/.
    return saves_dir() / Path(name).name


def rewards(names: list[str]) -> pd.DataFrame:
    """The first selected run's rewards per step; empty unless it is a preference run."""
    first = next((n for n in names if run_dir(n).is_dir()), None)
    return reward_frame(events_of(run_dir(first)) if first else [])
