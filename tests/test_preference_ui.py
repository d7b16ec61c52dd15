"""Preference runs in the web UI, through its handlers (no browser): the reward curves of
the Train tab and the run history, the Data tab's pair view, the Evaluate tab's
preference accuracy; and a DPO run in Chat's compare mode and in Export, as an SFT run.
The runs are real DPO, KTO and SFT runs on the tiny random Llama."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from core.jobs.events import read_events
from core.jobs.plots import reward_accuracy_figure, reward_frame, rewards_figure
from core.jobs.process import process_alive
from core.schema.config import RunConfig
from webui.live import monitor, wake
from webui.tabs.data import view as dataview
from webui.tabs.train import history

PAIRS = [{"prompt": f"Please help with task {i}.", "chosen": "Gladly, here it is.",
          "rejected": "No."} for i in range(12)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """Finished runs in one saves/ folder: dpo (3 logged steps), kto and sft."""
    from core.train.trainer import main

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
    # The DPO run learns fast enough to change its greedy replies (for Chat's compare).
    for name, stage, data, steps, lr in [("dpo", "dpo", pairs, 3, 1e-2),
                                         ("kto", "kto", kto, 2, 1e-3),
                                         ("sft", "sft", sft, 1, 1e-3)]:
        cfg = RunConfig(model=str(tiny_model_dir), stage=stage, dataset=[str(data)],
                        max_steps=steps, batch_size=4, gradient_accumulation_steps=1,
                        cutoff_len=48, logging_steps=1, learning_rate=lr)
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
    from webui.live import panel as live

    def charts(run_dir: Path) -> dict[str, str]:
        """The live panel's charts by id, each with its series' point counts."""
        page = live.render(monitor.attach(run_dir))
        boxes = re.findall(r'<div class="ps-chart-box" id="([\w-]+)">(.*?)</svg>', page)
        return {name: re.findall(r'data-series="([^"]+)" data-points="(\d+)"', svg)
                for name, svg in boxes}

    dpo = charts(runs["dpo"])
    assert dpo["run-rewards"] == [("chosen", "3"), ("rejected", "3"), ("margin", "3")]
    assert dpo["run-reward-accuracy"] == [("reward accuracy", "3")]
    assert set(charts(runs["sft"])) == {"run-loss", "run-lr"}
    assert set(charts(runs["kto"])) == {"run-loss", "run-lr", "run-rewards"}
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


# -- Evaluate tab and `peft-studio evaluate`: preference accuracy, base vs tuned ----------
def _wait_job(job: Path) -> None:
    from core.evaluate import job as ev

    deadline = time.time() + 300
    while ev.job_state(job).status == "running" and time.time() < deadline:
        time.sleep(0.3)
    assert ev.job_state(job).status == "done", (job / "log.txt").read_text()[-3000:]


def test_evaluate_tab_scores_pairs_base_vs_tuned_and_lists_them(runs, monkeypatch):
    from core.evaluate.preference import evaluate_run
    from webui.tabs.evaluate import handlers as evaluating

    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(runs["dpo"].parent))
    pairs = str(runs["pairs"])
    checkpoint, dataset, _ = evaluating.on_run("run-dpo")
    assert dataset["value"] == pairs  # the run's own pairs: no registered held-out split
    progress, note, job, _ = evaluating.on_start(
        "run-dpo", "final", pairs, 0, 16, 4, True)
    # The page follows its job through the job's stamp (webui.live.wake), not a timer.
    assert job and "Evaluation started" in note and wake.job_stamp(job) != wake.IDLE
    _wait_job(Path(job))
    _, note, metrics, listing, past = evaluating.on_tick(job, "run-dpo")
    # Once its process has exited too, the stamp stays still: the page refreshes no more.
    deadline = time.time() + 60  # a wait for the exit, not a timing check
    while process_alive(Path(job)) and time.time() < deadline:
        time.sleep(0.2)
    ended = wake.job_stamp(job)
    assert note == "" and ended.endswith(":False") and wake.job_stamp(job) == ended
    assert "Preference accuracy" in metrics and "Implicit-reward accuracy" in metrics
    assert listing.count("<tr><td>") == len(PAIRS)
    assert "Gladly, here it is." in listing and "No." in listing
    assert "preference accuracy" in past["choices"][0][0]
    # The same numbers as core.evaluate.preference's own evaluation of the run.
    results = json.loads((Path(job) / "results.json").read_text())
    expected = evaluate_run(runs["dpo"], pairs)
    models = results["models"]
    assert models["base"]["accuracy"] == expected["base"]["accuracy"]
    assert models["fine_tuned"]["accuracy"] == expected["tuned"]["accuracy"]
    assert models["fine_tuned"]["mean_margin"] == pytest.approx(
        expected["tuned"]["mean_margin"], abs=1e-3)
    assert models["fine_tuned"]["implicit_reward_accuracy"] == pytest.approx(
        expected["tuned"]["implicit_reward_accuracy"])
    # Each listed pair says which reply each model ranked higher, from its margin.
    ranked_right = sum(r["fine_tuned_margin"] > 0 for r in results["rows"])
    assert ranked_right / len(PAIRS) == models["fine_tuned"]["accuracy"]
    assert listing.count("✔ chosen") == sum(
        (r["base_margin"] > 0) + (r["fine_tuned_margin"] > 0) for r in results["rows"])


def test_cli_evaluate_on_pairs_prints_accuracy_and_the_pairs(runs, monkeypatch, capsys):
    from core.cli.main import main

    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(runs["dpo"].parent))
    code = main(["evaluate", "run-dpo", "--dataset", str(runs["pairs"]), "--max-samples",
                 "5", "--batch-size", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "accuracy" in out and "mean_margin" in out and "(5 pairs of" in out
    listed = [line for line in out.splitlines() if "Please help with task" in line]
    assert len(listed) == 5 and all(" -> " in line for line in listed)


def test_a_mix_of_pairs_and_answers_is_refused(runs):
    from core.evaluate.job import dataset_kind

    assert dataset_kind(["sentiment_pref_test"]) == "preference"
    assert dataset_kind(["sentiment_test"]) == "answers"
    with pytest.raises(ValueError, match="evaluate them one at a time"):
        dataset_kind(["sentiment_pref_test", "sentiment_test"])


# -- Chat and Export take a DPO run as they take an SFT run -------------------------------
def test_chat_compare_mode_answers_with_the_dpo_run_and_its_base(runs, monkeypatch):
    from core.chat.engine import ChatClient, GenerationSettings, base_target, run_target

    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(runs["dpo"].parent))
    tuned = run_target(runs["dpo"])
    assert tuned.trained == str(runs["dpo"] / "adapter")
    base = base_target(tuned.model)
    greedy = GenerationSettings(max_new_tokens=12, do_sample=False)
    prompt = [{"role": "user", "content": PAIRS[0]["prompt"]}]
    client = ChatClient()
    try:
        assert client.load(tuned)["shared_base"] is False
        # The base answers through the DPO adapter's model with the adapter switched off
        # (TRL's "ref" copy was not saved, so there is one adapter to switch).
        assert client.load(base)["shared_base"] is True
        answers = {t.label: "".join(client.stream(t, prompt, greedy)) for t in (base, tuned)}
    finally:
        client.unload()
    assert all(answers.values()) and answers[tuned.label] != answers[base.label], answers


def test_export_merges_a_dpo_lora_run_as_for_sft(runs, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.evaluate import job as ev
    from core.export import job as ex
    from core.methods.result import load_trained

    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(runs["dpo"].parent))
    if not ev.past_evaluations(runs["dpo"]):  # the card shows the latest evaluation
        _wait_job(ev.start(ev.EvalSpec(str(runs["dpo"]), [str(runs["pairs"])],
                                       max_samples=4)))
    job = ex.start(ex.ExportSpec(str(runs["dpo"]), "dpo-merged"))
    deadline = time.time() + 300
    while (state := ex.job_state(job))["status"] == "running" and time.time() < deadline:
        time.sleep(0.3)
    assert state["status"] == "done", (job / "log.txt").read_text()[-3000:]
    end = state["end"]
    assert end["plan"] == "merge" and end["max_abs_diff"] < 1e-4
    out = Path(end["output_dir"])
    assert not any(p.name.startswith("adapter") for p in out.iterdir())
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    adapter, _ = load_trained(runs["dpo"] / "adapter")
    ids = tok.apply_chat_template([{"role": "user", "content": PAIRS[0]["prompt"]}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.inference_mode():
        diff = merged(**ids).logits - adapter.eval()(**ids).logits
    assert float(diff.abs().max()) < 1e-4
    card = (out / "README.md").read_text()
    assert "| stage | `dpo` |" in card
    assert "Preference evaluation on" in card and "| fine-tuned |" in card
