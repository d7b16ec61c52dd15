"""Experiment trackers a run can also report to (the `report_to` setting): TensorBoard,
Weights & Biases, MLflow, Trackio, through transformers' own integrations. The studio's
events stay the source of its own curves; a tracker is a copy for the user's dashboards.

Each writes inside the run folder unless the user's environment says otherwise
(TENSORBOARD_LOGGING_DIR, MLFLOW_TRACKING_URI, WANDB_MODE/WANDB_API_KEY), so a run works
offline: W&B without an API key runs in offline mode, to be synced later.
Import-light: the UI and the config check use it without torch.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

# name -> (module that must be importable, how to install it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
    "trackio": ("trackio", "pip install trackio"),
}
CHOICES = ("none", *TRACKERS)
PROJECT = "peft-studio"


def installed(name: str) -> bool:
    return name == "none" or importlib.util.find_spec(TRACKERS[name][0]) is not None


def problems(cfg: Any) -> list[str]:
    """What this machine lacks for the run's tracker (checked when a run starts)."""
    name = cfg.report_to
    if installed(name):
        return []
    return [f"report_to: {name} is not installed here; run `{TRACKERS[name][1]}` in the "
            "studio's environment, or choose none (the studio's own curves need nothing)"]


def environment(cfg: Any, run_dir: Path) -> dict[str, str]:
    """Variables the tracker reads, set only where the user has not set them."""
    name, run_dir = cfg.report_to, Path(run_dir)
    wanted: dict[str, str] = {}
    if name == "tensorboard":
        wanted["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    elif name == "wandb":
        wanted.update(WANDB_PROJECT=PROJECT, WANDB_DIR=str(run_dir))
        if not os.environ.get("WANDB_API_KEY"):
            wanted["WANDB_MODE"] = "offline"
    elif name == "mlflow":
        wanted.update(MLFLOW_TRACKING_URI=(run_dir / "mlruns").resolve().as_uri(),
                      MLFLOW_EXPERIMENT_NAME=PROJECT)
    return {k: v for k, v in wanted.items() if k not in os.environ}


def trainer_kwargs(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """TrainingArguments' part: which integration, and the run's name in it."""
    if cfg.report_to == "none":
        return {"report_to": "none"}
    return {"report_to": [cfg.report_to], "run_name": Path(run_dir).name, "project": PROJECT}
