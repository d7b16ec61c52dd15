"""Preference runs in the web UI, through its handlers (no browser): the reward curves of
the Train tab and the run history, the Data tab's pair view, and the Evaluate tab's
preference accuracy. The runs are real DPO, KTO and SFT runs on the tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import RunConfig
from core.events import read_events
from webui import dataview, history, monitor
from webui.plots import reward_accuracy_figure, reward_frame, rewards_figure

PAIRS = [{"prompt": f"Please help with task {i}.", "chosen": "Gladly, here it is.",
          "rejected": "No."} for i in range(12)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """Finished runs in one saves/ folder: dpo (3 logged steps), kto and sft."""
    from core.train import main

    root = tmp_path_factory.mktemp("pref-ui")
    pairs = root / "pairs.json"
    pairs.write_text(json.dumps(PAIRS))
    kto = root / "kto.json"
    kto.write_text(json.dumps([{"prompt": p["prompt"], "completion": c, "label": lab}
                               for p in PAIRS for c, lab in ((p["chosen"], True),
                                                             (p["rejected"], False))]))
    sft = root / "sft.json"
    sft.write_text(json.dumps([{"instruction": p["prompt"], "output": p["chosen"]}
                               for p in PAIRS]))
    saves = root / "saves"
    out = {}
    for name, stage, data, steps in [("dpo", "dpo", pairs, 3), ("kto", "kto", kto, 2),
                                     ("sft", "sft", sft, 1)]:
        cfg = RunConfig(model=str(tiny_model_dir), stage=stage, dataset=[str(data)],
                        max_steps=steps, batch_size=4, gradient_accumulation_steps=1,
                        cutoff_len=48, logging_steps=1, learning_rate=1e-3)
        run_dir = saves / f"run-{name}"
        run_dir.mkdir(parents=True)
        cfg.save(run_dir / "config.yaml")
        assert main([str(run_dir / "config.yaml")]) == 0, (run_dir / "events.jsonl").read_text()
        out[name] = run_dir
    out["pairs"] = pairs
    return out


def _events(run_dir: Path) -> list[dict]:
    return read_events(run_dir)[0]


def _points(figure) -> list[int]:
    """Points of each plotted series (axhline reference lines have 2)."""
    return [len(line.get_xdata()) for line in figure.axes[0].lines]


# -- Train tab: rewards beside the loss ---------------------------------------------------
def test_reward_curves_come_from_the_runs_step_events(runs):
    frame = reward_frame(_events(runs["dpo"]))
    assert list(frame["step"]) == [1, 2, 3]
    steps = [e for e in _events(runs["dpo"]) if e["type"] == "step"]
    assert list(frame["accuracy"]) == [e["reward_accuracy"] for e in steps]
    assert list(frame["margin"]) == [e["reward_margin"] for e in steps]
    assert _points(rewards_figure(frame))[:3] == [3, 3, 3]  # chosen, rejected, margin
    assert _points(reward_accuracy_figure(frame))[0] == 3
    # KTO logs rewards but no accuracy (its replies are not paired); SFT logs neither.
    kto = reward_frame(_events(runs["kto"]))
    assert len(kto) == 2 and rewards_figure(kto) is not None
    assert reward_accuracy_figure(kto) is None
    sft = reward_frame(_events(runs["sft"]))
    assert sft.empty and rewards_figure(sft) is None and reward_accuracy_figure(sft) is None


def test_train_tab_shows_reward_plots_only_for_preference_runs(runs):
    from webui.tabs.train import _render

    def plots(run_dir: Path) -> list[dict]:
        watch = monitor.attach(run_dir)
        updates = _render(watch, monitor.Changes(True, True, True, True))
        return updates[4:6]  # rewards, reward accuracy

    rewards, accuracy = plots(runs["dpo"])
    assert rewards["visible"] and accuracy["visible"]
    assert _points(accuracy["value"])[0] == 3
    assert [u["visible"] for u in plots(runs["sft"])] == [False, False]
    assert [u["visible"] for u in plots(runs["kto"])] == [True, False]
    stats = monitor.stats(monitor.attach(runs["dpo"]))
    assert "reward accuracy" in stats and "margin" in stats and "(step 3)" in stats
    assert "reward" not in monitor.stats(monitor.attach(runs["sft"]))


def test_history_shows_a_selected_preference_runs_rewards(runs, monkeypatch):
    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(runs["dpo"].parent))
    assert {"run-dpo", "run-sft"} <= set(history.run_names())
    assert list(history.rewards(["run-dpo", "run-sft"])["step"]) == [1, 2, 3]
    assert history.rewards(["run-sft", "run-dpo"]).empty  # the first selected run's
    assert history.rewards([]).empty


# -- Data tab: a pair side by side -------------------------------------------------------
def test_data_tab_shows_a_pair_with_its_trained_tokens_and_both_lengths(tiny_model_dir):
    view = dataview.model_view(str(tiny_model_dir), "sentiment_pref", 3, 256, False)
    row = json.loads(Path("data/sentiment_pref.json").read_text())[2]
    assert view.kind == "pairwise" and view.count == 300 and view.sample == 3
    assert view.shows == {"prompt": True, "sample": False, "pair": True}
    # The prompt as the chat template renders it, up to where the reply starts.
    assert row["input"] in view.prompt and view.prompt.endswith("<|im_start|>assistant\n")
    for reply, segments in ((row["chosen"], view.chosen), (row["rejected"], view.rejected)):
        trained = "".join(t for t, kind in segments if kind == dataview.TRAINED)
        assert trained == f"{reply}<|im_end|>"
        assert row["input"] not in "".join(t for t, _ in segments)
    assert "Pair **3** of 300" in view.summary and "prompt + rejected" in view.summary
    ax = view.figure.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"prompt + chosen", "prompt + rejected"} <= set(legend)


def test_data_tab_shows_a_kto_reply_with_its_label(tiny_model_dir):
    rows = json.loads(Path("data/sentiment_kto.json").read_text())
    bad = next(i for i, r in enumerate(rows, 1) if r["label"] in (False, "false"))
    view = dataview.model_view(str(tiny_model_dir), "sentiment_kto", bad, 256, False)
    assert view.kind == "kto" and view.shows == {"prompt": True, "sample": True, "pair": False}
    assert "✘ undesirable" in view.summary
    trained = "".join(t for t, kind in view.segments if kind == dataview.TRAINED)
    assert trained == f"{rows[bad - 1]['completion']}<|im_end|>"
