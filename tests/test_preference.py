"""Preference tuning: the pairwise and kto formats, the stage/method/format checks, and
real DPO, ORPO and KTO runs on the tiny random Llama, read back from the run folder."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.data.formats import DataError, detect_format, to_example, validate_file
from core.jobs.events import read_events
from core.schema.config import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parent.parent


# -- formats ---------------------------------------------------------------------------
def test_detects_pairwise_and_kto_before_alpaca():
    assert detect_format(["prompt", "chosen", "rejected"]).format == "pairwise"
    alike = detect_format(["instruction", "input", "chosen", "rejected"])
    assert alike.format == "pairwise" and alike.columns["prompt"] == "instruction"
    assert alike.confident  # LLaMA-Factory's alpaca pairs, as its data/README.md writes them
    assert not detect_format(["question", "chosen", "rejected"]).confident
    kto = detect_format(["prompt", "completion", "label"])
    assert kto.format == "kto" and kto.confident
    assert detect_format(["prompt", "completion"]).format == "alpaca"


def test_pairwise_examples_from_alpaca_and_messages_rows():
    row = {"prompt": "Label it", "input": "great film", "system": "Be brief",
           "history": [["hi", "hello"]], "chosen": "positive", "rejected": "negative"}
    ex = to_example(row, "pairwise")
    assert [m["role"] for m in ex["prompt"]] == ["system", "user", "assistant", "user"]
    assert ex["prompt"][-1]["content"] == "Label it\n\ngreat film"
    assert ex["chosen"] == [{"role": "assistant", "content": "positive"}]
    chat = {"prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}
    assert to_example(chat, "pairwise")["rejected"][0]["content"] == "b"


@pytest.mark.parametrize("value, expected", [
    ("true", True), ("false", False), (True, True), (False, False), ("FALSE", False),
])
def test_kto_label_accepts_booleans_and_their_text(value, expected):
    ex = to_example({"prompt": "q", "completion": "a", "label": value}, "kto")
    assert ex["label"] is expected and ex["completion"][0]["role"] == "assistant"


@pytest.mark.parametrize("fmt, row, field, words", [
    ("pairwise", {"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected", "same as"),
    ("pairwise", {"prompt": "q", "chosen": " ", "rejected": "b"}, "chosen", "empty"),
    ("pairwise", {"prompt": "", "chosen": "a", "rejected": "b"}, "prompt", "empty"),
    ("pairwise", {"prompt": [{"role": "user", "content": "q"},
                             {"role": "assistant", "content": "a"}],
                  "chosen": "a", "rejected": "b"}, "prompt", "end with a user turn"),
    ("kto", {"prompt": "q", "completion": "a", "label": "maybe"}, "label", "true or false"),
    ("kto", {"prompt": "q", "completion": "a", "label": None}, "label", "got nothing"),
])
def test_bad_rows_are_named(fmt, row, field, words):
    with pytest.raises(DataError) as err:
        to_example(row, fmt, file="my.json", row_number=7)
    assert err.value.row == 7 and err.value.field == field
    assert words in str(err.value) and "my.json, row 7" in str(err.value)


def test_validate_file_lists_each_bad_row(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"},
            {"prompt": "q", "chosen": "a", "rejected": "a"},
            {"prompt": "q", "chosen": "", "rejected": "b"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    problems = validate_file(path, "pairwise")
    assert [p.row for p in problems] == [2, 3]
    kto = tmp_path / "k.json"
    kto.write_text(json.dumps([{"prompt": "q", "completion": "a", "label": True},
                               {"prompt": "q", "completion": "a"}]))
    (only,) = validate_file(kto, "kto")
    assert only.row == 2 and only.field == "label"


# -- config ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning", "adapter"])
def test_methods_that_cannot_take_a_preference_stage_are_refused_with_why(method):
    with pytest.raises(ConfigError) as err:
        RunConfig(stage="dpo", method=method)
    assert f"{method} cannot run the dpo stage" in str(err.value)
    assert "choose lora" in str(err.value)


def test_stage_settings_belong_to_their_stage():
    with pytest.raises(ConfigError, match="orpo_lambda: applies only to stage orpo"):
        RunConfig(stage="dpo", orpo_lambda=0.5)
    assert "pref_beta" not in RunConfig().to_dict()  # SFT YAML stays as it was
    cfg = RunConfig(stage="kto", pref_beta=0.3, kto_desirable_weight=2.0)
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg
    # TRL's KTO fails a batch of one only once the model is loaded: refused before
    with pytest.raises(ConfigError, match="batch_size: KTO needs at least 2"):
        RunConfig(stage="kto", batch_size=1)


# -- runs ------------------------------------------------------------------------------
def _pairs(n: int = 12) -> list[dict]:
    # One consistent preference (polite over curt) that even a random tiny model can learn.
    return [{"prompt": f"Please help with task {i}.", "chosen": "Gladly, here it is.",
             "rejected": "No."} for i in range(n)]


@pytest.fixture()
def pref_data(tmp_path) -> dict[str, Path]:
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(_pairs()))
    kto = tmp_path / "kto.jsonl"
    kto.write_text("\n".join(
        json.dumps({"prompt": p["prompt"], "completion": c, "label": lab})
        for p in _pairs() for c, lab in ((p["chosen"], True), (p["rejected"], False))))
    sft = tmp_path / "sft.json"
    sft.write_text(json.dumps([{"instruction": p["prompt"], "output": p["chosen"]}
                               for p in _pairs()]))
    return {"dpo": pairs, "orpo": pairs, "kto": kto, "sft": sft}


def _run(tmp_path: Path, tiny_model_dir: Path, **kw) -> tuple[int, Path, list[dict]]:
    from core.train.trainer import main

    settings = dict(model=str(tiny_model_dir), max_steps=2, batch_size=4,
                    gradient_accumulation_steps=1, cutoff_len=48, logging_steps=1,
                    learning_rate=1e-3)
    cfg = RunConfig(**{**settings, **kw})
    run_dir = tmp_path / f"run-{cfg.stage}-{cfg.method}"
    run_dir.mkdir()
    cfg.save(run_dir / "config.yaml")
    rc = main([str(run_dir / "config.yaml")])
    return rc, run_dir, read_events(run_dir)[0]


@pytest.mark.parametrize("stage, method", [
    ("dpo", "lora"), ("dpo", "full"), ("orpo", "lora"), ("orpo", "ia3"),
    ("kto", "lora"), ("kto", "ia3"),
])
def test_stage_runs_end_done_with_rewards_and_the_result_loads(
        stage, method, tiny_model_dir, pref_data, tmp_path):
    from core.methods.result import load_trained

    rc, run_dir, events = _run(tmp_path, tiny_model_dir, stage=stage, method=method,
                               dataset=[str(pref_data[stage])])
    assert rc == 0 and events[-1]["status"] == "done", (events[-1], )
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2]
    for e in steps:
        assert math.isfinite(e["loss"])
        assert {"reward_chosen", "reward_rejected", "reward_margin"} <= set(e)
        if stage != "kto":  # TRL's KTO logs no accuracy: its replies are not paired
            assert 0.0 <= e["reward_accuracy"] <= 1.0
    # Every stage counts its tokens (ORPO's batches need our own counter).
    assert 0 < steps[0]["tokens_seen"] < steps[-1]["tokens_seen"]
    assert all(e["tokens_per_second"] > 0 for e in steps)
    model, tok = load_trained(events[-1]["output_dir"])
    assert set(getattr(model, "peft_config", {"default": 0})) == {"default"}
    ids = tok("Please help.", return_tensors="pt")
    assert model(**ids).logits.shape[-1] == len(tok)


def test_wrong_format_for_the_stage_is_refused_before_the_model_loads(
        tiny_model_dir, pref_data, tmp_path):
    rc, run_dir, events = _run(tmp_path, tiny_model_dir, stage="dpo",
                               dataset=[str(pref_data["sft"])])
    assert rc == 1 and events[-1]["status"] == "failed"
    assert "alpaca format, which the dpo stage cannot train on" in events[-1]["error"]
    assert not any(e["type"] == "start" for e in events)
    rc, _, events = _run(tmp_path, tiny_model_dir, stage="sft",
                         dataset=[str(pref_data["dpo"])], run_name="x")
    assert rc == 1 and "preference data" in events[-1]["error"]


def test_dpo_starts_from_a_finished_sft_run(tiny_model_dir, pref_data, tmp_path):
    from core.methods.result import load_trained

    rc, sft_dir, _ = _run(tmp_path, tiny_model_dir, dataset=[str(pref_data["sft"])])
    assert rc == 0
    rc, _, events = _run(tmp_path, tiny_model_dir, stage="dpo", init_from_run=str(sft_dir),
                         dataset=[str(pref_data["dpo"])])
    assert rc == 0 and events[-1]["status"] == "done", events[-1]
    # The starting adapter is the reference: the first step's rewards are exactly 0.
    first = next(e for e in events if e["type"] == "step")
    assert first["reward_chosen"] == 0.0 and first["reward_rejected"] == 0.0
    sft, _ = load_trained(sft_dir / "adapter")
    dpo, _ = load_trained(events[-1]["output_dir"])
    a = dict(sft.named_parameters())
    changed = [n for n, p in dpo.named_parameters() if "lora_B" in n
               and not (p == a[n]).all()]
    assert changed  # trained further from the SFT weights, not from zero
    rc, _, events = _run(tmp_path, tiny_model_dir, stage="dpo", method="ia3",
                         init_from_run=str(sft_dir), dataset=[str(pref_data["dpo"])])
    assert rc == 1 and "must match" in events[-1]["error"]


def test_cli_trains_a_dpo_run(tiny_model_dir, pref_data, saves):
    env = {**os.environ, "PEFT_STUDIO_SAVES": str(saves)}
    cmd = [sys.executable, "-m", "core.cli", "train", "--stage", "dpo", "--model",
           str(tiny_model_dir), "--dataset", str(pref_data["dpo"]), "--method", "lora",
           "--max-steps", "2", "--logging-steps", "1", "--cutoff-len", "48",
           "--pref-beta", "0.2", "--dpo-loss", "ipo"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "end: done" in out.stdout
    (run_dir,) = [p for p in saves.iterdir() if (p / "config.yaml").exists()]
    events = read_events(run_dir)[0]
    assert "reward_margin" in [e for e in events if e["type"] == "step"][-1]
    assert RunConfig.load(run_dir / "config.yaml").dpo_loss == "ipo"


def test_preference_accuracy_of_base_and_tuned(tiny_model_dir, pref_data, tmp_path):
    from core.evaluate.preference import evaluate_run, main

    rc, run_dir, events = _run(tmp_path, tiny_model_dir, stage="dpo", max_steps=4,
                               learning_rate=1e-2, dataset=[str(pref_data["dpo"])])
    assert rc == 0
    result = evaluate_run(run_dir, str(pref_data["dpo"]))
    assert result["pairs"] == 12
    for side in ("base", "tuned"):
        assert 0.0 <= result[side]["accuracy"] <= 1.0
    # Trained on these very pairs, the tuned model moved its margins towards "chosen".
    assert result["tuned"]["mean_margin"] > result["base"]["mean_margin"]
    assert result["tuned"]["implicit_reward_accuracy"] > 0.5
    assert main([str(run_dir), "--dataset", str(pref_data["kto"])]) == 1  # not pairwise


def test_upload_detects_maps_and_registers_pairs(tmp_path, monkeypatch):
    from core.data.registry import load_info, resolve
    from webui.tabs.data.upload import (
        ROLES,
        default_mapping,
        inspect_upload,
        register_upload,
        roles,
    )

    monkeypatch.setenv("PEFT_STUDIO_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    assert {"chosen", "rejected", "completion", "label"} <= set(ROLES)
    good = tmp_path / "prefs.csv"
    good.write_text("question,chosen,rejected\nHi?,Hello!,Go away.\nBye?,Goodbye!,Whatever.\n")
    seen = inspect_upload(good)
    assert seen.format == "pairwise" and seen.mapping["prompt"] == "question"
    # No prompt column: chosen and rejected are whole conversations (TRL's implicit prompt).
    assert roles("pairwise") == {"prompt": False, "input": False, "system": False,
                                 "history": False, "chosen": True, "rejected": True}
    mapping = default_mapping(seen.format, seen.columns, seen.mapping)
    assert register_upload(good, "prefs", "pairwise", mapping).ok
    assert load_info()["prefs"]["columns"] == {"prompt": "question"}
    assert resolve("prefs").format == "pairwise"
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"prompt": "q", "completion": "a", "label": true}\n'
                   '{"prompt": "q", "completion": "a", "label": "sometimes"}\n')
    result = register_upload(bad, "labels", "kto", {"prompt": "prompt",
                                                    "completion": "completion",
                                                    "label": "label"})
    assert not result.ok and "1 bad row" in result.message
    assert result.problems.iloc[0]["row"] == 2 and result.problems.iloc[0]["field"] == "label"
    assert "labels" not in load_info()


@pytest.mark.slow
def test_embedded_dpo_raises_held_out_preference_accuracy(saves, embedded_dir):
    """A real DPO run on SmolLM2 with the bundled pairs: on 60 held-out reviews the tuned
    model ranks the right label above the wrong one more often than the base does."""
    from core.evaluate.preference import evaluate_run
    from core.jobs import runner

    cfg = RunConfig(stage="dpo", dataset=["sentiment_pref"], method="lora", max_steps=12,
                    batch_size=4, gradient_accumulation_steps=1, learning_rate=5e-4,
                    cutoff_len=128, logging_steps=3)
    run_dir = runner.start(cfg)
    assert runner.wait(run_dir, timeout=1500) == "done", (run_dir / "log.txt").read_text()
    steps = [e for e in read_events(run_dir)[0] if e["type"] == "step"]
    assert all(math.isfinite(e["reward_margin"]) and "reward_accuracy" in e for e in steps)
    result = evaluate_run(run_dir, "sentiment_pref_test")
    assert result["pairs"] == 60
    assert result["tuned"]["accuracy"] > result["base"]["accuracy"]
    assert result["tuned"]["mean_margin"] > result["base"]["mean_margin"]


@pytest.mark.parametrize("stage", ["dpo", "orpo", "kto"])
def test_preference_trainer_arguments_are_sfts_plus_their_own(stage, tmp_path):
    """One builder feeds every stage: what SFT's TrainingArguments say about schedule,
    logging and NaN handling, the TRL config says too."""
    import importlib

    import torch

    from core.stages import STAGES
    from core.train.trainer_args import shared_kwargs, training_arguments

    cfg = RunConfig(stage=stage, max_steps=7, learning_rate=3e-4, logging_steps=2)
    sft = training_arguments(RunConfig(max_steps=7, learning_rate=3e-4, logging_steps=2),
                             tmp_path, "cpu", "fp32", True)
    recipe = importlib.import_module(STAGES[stage].recipe)  # the stage's own plan
    pref = recipe.plan(cfg, torch.nn.Linear(1, 1), None, tmp_path, "cpu", "fp32", True).args
    assert pref.logging_nan_inf_filter is False  # core.train.health sees a NaN loss
    for key in shared_kwargs(cfg, tmp_path, "cpu", "fp32", True):
        if key != "include_num_input_tokens_seen":
            assert getattr(pref, key) == getattr(sft, key), key
    assert pref.max_length == cfg.cutoff_len and not pref.gradient_checkpointing
