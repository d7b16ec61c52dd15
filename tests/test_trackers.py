"""report_to: a run also reports to an experiment tracker, written inside its folder, and a
tracker that is not installed is refused before the run starts, saying how to install it."""

from __future__ import annotations

import pytest
from support import tiny

from core.cli.main import build_parser
from core.jobs import runner
from core.schema.config import ConfigError, RunConfig
from core.train import trackers


def test_a_run_reports_its_loss_to_tensorboard_in_its_folder(tiny_model_dir, saves):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = runner.start(tiny(tiny_model_dir, max_steps=3, report_to="tensorboard"))
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
    logs = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert logs, sorted(p.name for p in run_dir.iterdir())
    board = EventAccumulator(str(logs[0].parent))
    board.Reload()
    losses = board.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3]


def test_a_tracker_that_is_not_installed_is_refused_before_the_run(saves, monkeypatch):
    monkeypatch.setattr(trackers, "installed", lambda name: name in ("none", "tensorboard"))
    with pytest.raises(ConfigError, match=r"report_to: wandb is not installed here; run "
                       r"`pip install wandb`"):
        runner.start(RunConfig(report_to="wandb"))
    assert not any(saves.iterdir())
    with pytest.raises(ConfigError, match="report_to"):
        RunConfig(report_to="comet")


def test_trackers_write_in_the_run_folder_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    env = trackers.environment(RunConfig(report_to="wandb"), tmp_path)
    assert env["WANDB_MODE"] == "offline" and env["WANDB_DIR"] == str(tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "k")
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    env = trackers.environment(RunConfig(report_to="wandb"), tmp_path)
    assert "WANDB_MODE" not in env and "WANDB_PROJECT" not in env
    uri = trackers.environment(RunConfig(report_to="mlflow"), tmp_path)["MLFLOW_TRACKING_URI"]
    assert uri.startswith("file://") and uri.endswith("/mlruns")
    assert trackers.trainer_kwargs(RunConfig(), tmp_path) == {"report_to": "none"}
    args = build_parser().parse_args(["train", "--report-to", "tensorboard"])
    assert args.report_to == "tensorboard"
