"""The registries a newcomer extends (stages, export formats) and the job settings of the
one schema: what they declare is what the CLI, the UI and the trainer use."""

from __future__ import annotations

import importlib

import pytest

from core.cli.main import build_parser
from core.evaluate.job import EvalSpec
from core.export.formats import FORMATS
from core.schema.config import SETTINGS, ConfigError, RunConfig
from core.schema.jobs import EVALUATION, EXPORT, GENERATION
from core.stages import LIVE_METRICS, PREFERENCE_STAGES, STAGES, format_problem


def test_every_stage_names_a_recipe_with_the_three_steps_of_the_skeleton():
    for stage in STAGES.values():
        recipe = importlib.import_module(stage.recipe)
        assert all(callable(getattr(recipe, step)) for step in ("data", "model", "plan"))
    assert SETTINGS["stage"].choices == tuple(STAGES)
    assert all(f"{name}:" in SETTINGS["stage"].help for name in STAGES)
    assert PREFERENCE_STAGES == ("dpo", "orpo", "kto")
    assert LIVE_METRICS["rewards/accuracies"] == "reward_accuracy"


def test_a_stage_refuses_the_methods_it_declares_with_its_reason():
    with pytest.raises(ConfigError, match="method: prefix cannot run the dpo stage: peft's "
                       "prompt-learning methods"):
        RunConfig(stage="dpo", method="prefix")
    RunConfig(stage="sft", method="prefix")


@pytest.mark.parametrize(("stage", "fmt", "says"), [
    ("sft", "pairwise", "(preference data: pairs of replies), which the sft stage cannot "
     "train on; it needs alpaca or messages or sharegpt data (choose such a dataset, or the "
     "stage that fits: dpo, orpo)"),
    ("sft", "text", "is raw text (the text format: no replies to learn), which the sft "
     "stage cannot train on"),
    ("dpo", "kto", "the stage that fits: kto"),
    ("kto", "alpaca", "alpaca format, which the kto stage cannot train on; it needs kto data"),
])
def test_a_dataset_of_another_stage_is_refused_naming_the_stage_that_fits(stage, fmt, says):
    assert says in format_problem(stage, "my.json", fmt)
    assert format_problem(stage, "my.json", STAGES[stage].formats[0]) is None


def test_every_export_format_is_a_whole_writer_and_the_cli_offers_each():
    for name, fmt in FORMATS.items():
        assert fmt.name == name and fmt.help
        assert all(callable(f) for f in (fmt.refusal, fmt.write, fmt.card, fmt.files,
                                          fmt.summary))
    args = build_parser().parse_args(["export", "run", "--out", "x"])
    assert args.format == "safetensors" and args.format in FORMATS
    assert args.gguf_type == EXPORT["gguf_type"].default
    assert args.max_shard_size == EXPORT["max_shard_size"].default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "run", "--out", "x", "--format", "onnx"])


def test_job_flags_and_bounds_come_from_the_schema(capsys):
    args = build_parser().parse_args(["evaluate", "run"])
    assert {n: getattr(args, n) for n in EVALUATION} == {n: s.default
                                                          for n, s in EVALUATION.items()}
    assert EvalSpec("r", ["d"]).max_new_tokens == EVALUATION["max_new_tokens"].default
    with pytest.raises(ValueError, match="max_new_tokens: must be at most 32768"):
        EvalSpec("r", ["d"], max_new_tokens=40000)
    chat = build_parser().parse_args(["chat", "--max-new-tokens", "4096", "--top-k", "0"])
    assert (chat.max_new_tokens, chat.top_k, chat.temperature) == (
        4096, 0, GENERATION["temperature"].default)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["chat", "--max-new-tokens", "many"])
    assert "invalid int value" in capsys.readouterr().err
