"""The one schema: YAML round trip, CLI flags and validation errors."""

from __future__ import annotations

import argparse

import pytest

from core.methods import METHODS
from core.schema.config import SETTINGS, ConfigError, RunConfig, add_arguments, config_from_args


def parse(*argv: str) -> RunConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_defaults_are_valid_for_every_method():
    for method in METHODS:
        cfg = RunConfig(method=method)
        assert cfg.method == method
        # only the settings that apply to the method are written out
        for name in cfg.to_dict():
            assert SETTINGS[name].applies_to(method)


@pytest.mark.parametrize("method", list(METHODS))
def test_yaml_round_trip(method, tmp_path):
    cfg = RunConfig(method=method, learning_rate=3e-4, dataset=["identity", "x.json"],
                    max_steps=7, gradient_checkpointing=method != "prefix", run_name="abc")
    path = tmp_path / "c.yaml"
    cfg.save(path)
    assert RunConfig.load(path) == cfg


def test_cli_flags_are_named_after_fields():
    cfg = parse("--dataset", "my.json", "--method", "lora", "--max-steps", "50",
                "--learning-rate", "2e-4", "--lora-rank", "16", "--no-double-quant",
                "--packing")
    assert cfg.dataset == ["my.json"]
    assert cfg.max_steps == 50 and cfg.learning_rate == 2e-4 and cfg.lora_rank == 16
    assert cfg.double_quant is False and cfg.packing is True


def test_cli_equivalent_command_round_trips():
    cfg = RunConfig(method="lora", lora_rank=4, dataset=["a b.json"], packing=True,
                    double_quant=False, learning_rate=1e-3)
    command = cfg.to_cli()
    import shlex

    argv = shlex.split(command)[2:]  # drop "peft-studio train"
    assert parse(*argv) == cfg


def test_yaml_file_then_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    RunConfig(lora_rank=32, learning_rate=1e-3).save(path)
    cfg = parse("--config", str(path), "--learning-rate", "5e-5")
    assert cfg.lora_rank == 32 and cfg.learning_rate == 5e-5


def test_every_problem_is_listed_in_one_error():
    with pytest.raises(ConfigError) as info:
        RunConfig(learnig_rate=1e-3, batch_size=0, val_size=0.9, optim="sgdd",
                  num_train_epochs="many")
    problems = "\n".join(info.value.problems)
    assert len(info.value.problems) == 5
    assert "learnig_rate: unknown setting (did you mean 'learning_rate'?)" in problems
    assert "batch_size: must be at least 1" in problems
    assert "val_size: must be at most 0.5" in problems
    assert "optim: 'sgdd' is not one of" in problems
    assert "num_train_epochs: expected float" in problems


def test_setting_of_another_method_is_rejected():
    with pytest.raises(ConfigError, match="lora_rank: applies only to method lora, not full"):
        RunConfig(method="full", lora_rank=4)
    with pytest.raises(ConfigError, match="quantization: applies only to method"):
        RunConfig(method="full", quantization="4bit")


def test_cli_rejects_setting_of_another_method():
    with pytest.raises(ConfigError, match="lora_rank"):
        parse("--method", "full", "--lora-rank", "4")


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: [1, 2]\nbatch_size: -1\n")
    with pytest.raises(ConfigError) as info:
        RunConfig.load(path)
    assert str(path) in str(info.value)
    assert len(info.value.problems) == 2
    path.write_text("learning_rate: : :\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.load(path)


def test_switching_method_in_flags_drops_the_yaml_methods_settings(tmp_path):
    path = tmp_path / "c.yaml"
    RunConfig(method="lora", lora_rank=32).save(path)
    cfg = parse("--config", str(path), "--method", "full")
    assert cfg.method == "full"


def test_every_setting_is_described():
    for s in SETTINGS.values():
        assert s.help and s.label_zh and s.help_zh, s.name
        if s.choices and not s.allow_custom:
            assert s.default in s.choices or (s.kind is list), s.name


def test_run_name_cannot_leave_saves():
    with pytest.raises(ConfigError, match="run_name"):
        RunConfig(run_name="../escape")


def test_prefix_tuning_refuses_gradient_checkpointing():
    with pytest.raises(ConfigError, match="gradient_checkpointing: does not work with prefix"):
        RunConfig(method="prefix", gradient_checkpointing=True)


@pytest.mark.parametrize("name, value, words", [
    ("max_steps", 10**30, "max_steps: must be at most 10000000, got 1e+30"),
    ("seed", 2**40, "seed: must be at most 4294967295"),
    ("save_steps", 10**8, "save_steps: must be at most 10000000"),
    ("max_grad_norm", 1e9, "max_grad_norm: must be at most 1000000"),
])
def test_counts_have_an_upper_bound(name, value, words):
    """A count a run could never reach (or a seed numpy cannot take) is refused at once,
    instead of stalling the start on what it would allocate or loop over."""
    with pytest.raises(ConfigError, match=words.replace("+", r"\+")):
        RunConfig(**{name: value})


@pytest.mark.parametrize("argv, first", [
    (["train", "--learning-rate", "abc"],
     "peft-studio train: error: argument --learning-rate: invalid float value: 'abc'"),
    (["train", "--method", "nosuch"], "peft-studio train: error: argument --method: invalid "
     "choice: 'nosuch'"),
    (["nosuch"], "peft-studio: error: argument command: invalid choice: 'nosuch'"),
])
def test_a_bad_flag_is_two_lines_not_the_usage_of_every_flag(argv, first, capsys):
    from core.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    lines = capsys.readouterr().err.splitlines()
    assert exited.value.code == 2 and len(lines) == 2
    assert lines[0].startswith(first) and lines[1].endswith("--help)")
