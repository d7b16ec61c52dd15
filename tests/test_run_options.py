"""Run options beyond the training itself: report_to (an experiment tracker, written inside
the run folder; one not installed is refused before the run, saying how to install it) and
early stopping on the validation loss."""

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


def test_a_run_stops_itself_when_the_validation_loss_stops_improving(tiny_model_dir, saves):
    """A learning rate too small to move the loss: after the first evaluation, none beats
    it by the threshold, so the run stops after `patience` more, and says so."""
    from support import events_of

    from webui.live import monitor
    from webui.tabs.train import history

    run_dir = runner.start(tiny(tiny_model_dir, max_steps=40, learning_rate=1e-9,
                                val_size=0.2, eval_steps=1, early_stopping_patience=2,
                                early_stopping_threshold=0.01, early_stopping_load_best=True))
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
    events = events_of(run_dir)
    # Evaluations at steps 1 (the best), 2 and 3 (no gain); the result is step 1's model,
    # whose loss is known: no final evaluation.
    assert [e["step"] for e in events if e["type"] == "eval"] == [1, 2, 3]
    early = next(e for e in events if e["type"] == "early_stop")
    assert early["step"] == 3 and early["patience"] == 2 and early["best_step"] == 1
    end = events[-1]
    assert end["steps"] == 3 and end["stopped_early"]["best_eval_loss"] == early["best_eval_loss"]
    assert end["stopped_early"]["loaded_best"] and end["final_eval_loss"] == early["best_eval_loss"]
    best = run_dir / "checkpoints" / "best"
    assert [e["step"] for e in events if e["type"] == "checkpoint" and e.get("best")] == [1]
    kept = sorted(p.name for p in best.iterdir())
    assert kept == sorted(p.name for p in (run_dir / "adapter").iterdir())
    for name in kept:  # the result is the best evaluation's model, byte for byte
        assert (run_dir / "adapter" / name).read_bytes() == (best / name).read_bytes()
    watch, _ = monitor.poll(monitor.attach(run_dir))
    assert "stopped early at step 3: the validation loss had not improved for 2 " \
           "evaluations" in monitor.stats(watch)
    assert "at step 1, kept as the result" in monitor.stats(watch)
    assert "done · stopped early at step 3, best at step 1 (its model kept)" in \
        list(history.table()["status"])
    with pytest.raises(ConfigError, match="early_stopping_patience: needs a validation loss"):
        RunConfig(early_stopping_patience=3)


def test_neftune_noise_changes_what_the_model_trains_on(tiny_model_dir, saves):
    """NEFTune's noise on the input embeddings: the same first batch, a different loss."""
    from support import events_of

    losses = []
    for alpha in (0.0, 50.0):
        run_dir = runner.start(tiny(tiny_model_dir, max_steps=1, neftune_noise_alpha=alpha,
                                    run_name=f"neftune-{alpha:g}"))
        assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
        losses.append(next(e["loss"] for e in events_of(run_dir) if e["type"] == "step"))
    assert abs(losses[0] - losses[1]) > 1e-3, losses


def test_datasets_mix_at_their_weights_reproducibly():
    from core.data.loader import mix

    parts = [[{"text": f"a{i}"} for i in range(1000)], [{"text": f"b{i}"} for i in range(1000)]]
    drawn = mix(parts, ["a", "b"], [0.7, 0.3], seed=1)
    # Drawn until the 70% side runs out: all of it, and about 3/7 as many of the other.
    assert drawn.mix["a"] == 1000 and abs(drawn.mix["b"] / len(drawn) - 0.3) < 0.03
    assert len({e["text"] for e in drawn}) == len(drawn)  # nothing repeated
    assert mix(parts, ["a", "b"], [0.7, 0.3], seed=1) == drawn
    assert mix(parts, ["a", "b"], [0.7, 0.3], seed=2) != drawn
    with pytest.raises(ConfigError, match="dataset_weights: 1 weight"):
        RunConfig(dataset=["identity", "sentiment"], dataset_weights=[1.0])
    with pytest.raises(ConfigError, match="above 0"):
        RunConfig(dataset=["identity", "sentiment"], dataset_weights=[1.0, 0.0])


def test_a_run_on_mixed_datasets_says_what_it_drew(tiny_model_dir, saves):
    from support import events_of

    run_dir = runner.start(tiny(tiny_model_dir, max_steps=1, dataset=["identity", "sentiment"],
                                dataset_weights=[1, 1]))
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
    start = next(e for e in events_of(run_dir) if e["type"] == "start")
    assert start["mix"]["identity"] == 52 and 30 < start["mix"]["sentiment"] < 80, start["mix"]
    assert start["train_samples"] + start["eval_samples"] == sum(start["mix"].values())
