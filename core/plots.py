"""Every plot, drawn once: loss and learning-rate curves from a run's events (the Train tab,
the comparison panel, run history and the trainer's loss.png) and the token-length
histogram (the Data tab). Pure functions of their inputs.

Curves are matplotlib figures for gr.Plot rather than gr.LinePlot: Gradio 6's LinePlot
does not redraw its lines when its first value was empty, and cannot show a lone
evaluation point. Figures are built with matplotlib.figure.Figure, not pyplot, so there is
no global state to share between the server's threads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

TRAIN, EVAL = "training", "evaluation"


def loss_frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    """step, loss, series (training / evaluation): one row per logged point."""
    rows = [(e["step"], e["loss"], TRAIN) for e in events
            if e["type"] == "step" and e.get("loss") is not None]
    rows += [(e["step"], e["eval_loss"], EVAL) for e in events
             if e["type"] == "eval" and e.get("eval_loss") is not None]
    return _typed(pd.DataFrame(rows, columns=["step", "loss", "series"]), "loss")


def lr_frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [(e["step"], e["learning_rate"]) for e in events
            if e["type"] == "step" and e.get("learning_rate") is not None]
    return _typed(pd.DataFrame(rows, columns=["step", "learning_rate"]), "learning_rate")


def _typed(frame: pd.DataFrame, y: str) -> pd.DataFrame:
    # An empty frame has no dtype to infer: without these the plot draws categorical axes.
    return frame.astype({"step": "int64", y: "float64"})


def overlay_frame(runs: Mapping[str, list[dict[str, Any]]]) -> pd.DataFrame:
    """Loss curves of several runs on one plot: series is "<run>" for training loss and
    "<run> (eval)" for evaluation loss."""
    frames = []
    for name, events in runs.items():
        df = loss_frame(events)
        df["series"] = [name if s == TRAIN else f"{name} (eval)" for s in df["series"]]
        frames.append(df)
    if not frames:
        return loss_frame([])
    return pd.concat(frames, ignore_index=True)


def _figure(height: float = 3.0) -> tuple[Any, Any]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, height), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and token counts
    return fig, ax


def loss_figure(frame: pd.DataFrame, title: str = "") -> Any:
    """Lines per series; series named "... (eval)" or "evaluation" get point markers, since
    evaluation is logged seldom and may have a single point. None when there is no data."""
    if frame.empty:
        return None
    fig, ax = _figure()
    for name, part in frame.groupby("series", sort=False):
        evaluation = name == EVAL or str(name).endswith("(eval)")
        ax.plot(part["step"], part["loss"], "o--" if evaluation else "-", label=str(name),
                markersize=4, linewidth=1.6)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


def lr_figure(frame: pd.DataFrame) -> Any:
    if frame.empty:
        return None
    fig, ax = _figure(2.2)
    ax.plot(frame["step"], frame["learning_rate"], color="#8250df", linewidth=1.6)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return fig


def length_histogram(lengths: list[int], cutoff: int, title: str = "") -> Any:
    """Token lengths with the cut-off line; the title says how many samples it cuts."""
    fig, ax = _figure(3.2)
    if lengths:
        # Bins across the whole axis (which reaches the cut-off): bars stay readable when
        # every sample is far shorter than the cut-off.
        top = max(max(lengths), cutoff) * 1.02
        ax.hist(lengths, bins=[top * i / 50 for i in range(51)], color="#6b8afd",
                edgecolor="white")
    ax.axvline(cutoff, color="#e5484d", linestyle="--", linewidth=2,
               label=f"cut-off ({cutoff} tokens)")
    ax.set_xlabel("tokens per sample")
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right")
    return fig


def save_loss_plot(run_dir: Path) -> Path | None:
    """loss.png from the run's own events, so it matches what the UI showed; None when no
    step was logged."""
    from core.events import read_events

    frame = loss_frame(read_events(run_dir)[0])
    if frame.empty:
        return None
    path = run_dir / "loss.png"
    loss_figure(frame, run_dir.name).savefig(path, bbox_inches="tight")
    return path
