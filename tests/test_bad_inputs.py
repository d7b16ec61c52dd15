"""Every input a person can give (CLI flags, YAML files, the Train, Chat, Evaluate and
Export settings) ends in a short message naming the bad thing and what to do: never a
traceback, never a hang. Each case asserts the important words of the message."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pytest
from support import run_cli

from core.jobs.events import EventWriter
from core.schema.config import SETTINGS, ConfigError, RunConfig
from core.schema.jobs import EVALUATION, GENERATION
from core.schema.setting import SettingsError

ROOT = Path(__file__).resolve().parent.parent
BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.fixture()
def finished_run(saves) -> Path:
    """A run folder that looks finished to Evaluate and Export (no weights: every case
    here is refused before anything would load them)."""
    run = saves / "done-run"
    adapter = run / "adapter"
    adapter.mkdir(parents=True)
    RunConfig(dataset=["identity"]).save(run / "config.yaml")
    (adapter / "studio.json").write_text('{"method": "lora", "model": "embedded"}')
    EventWriter(run).emit("end", status="done", error=None, output_dir=str(adapter))
    return run


# -- YAML files (`train --config`) --------------------------------------------------------
YAML_CASES = {
    "method_list": ("method: [lora]\n", ["method: expected text"]),
    "int_key": ("1: 2\n", ["1: a setting name must be text"]),
    "list_key": ("[a]: b\n", ["not valid YAML: line 1, column 1", "unhashable key"]),
    "alias_bomb": (BILLION_LAUGHS, ["line 2: YAML aliases (*name) are not allowed"]),
    "long_run_name": ("run_name: " + "x" * 300 + "\n",
                      ["run_name: 300 characters; use at most 100"]),
    "nan_val_size": ("val_size: .nan\n", ["val_size: expected a finite number, got nan"]),
    "inf_epochs": ("num_train_epochs: .inf\n",
                   ["num_train_epochs: expected a finite number, got inf"]),
    "nan_learning_rate": ("learning_rate: .NaN\n",
                          ["learning_rate: expected a finite number, got nan"]),
    "not_a_mapping": ("- lora\n", ["expected a mapping of setting: value"]),
    "broken_yaml": ("method: lora\n  rank: [\n", ["not valid YAML: line"]),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_bad_yaml_config(tmp_path, capsys, case):
    text, words = YAML_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text, encoding="utf-8")
    t0 = time.time()
    code, out = run_cli(["train", "--config", str(path), "--print-config"], capsys)
    assert code == 2 and str(path) in out
    for w in words:
        assert w in out
    assert time.time() - t0 < 5 and len(out) < 600


@pytest.mark.parametrize("name", ["presets", "exports", "comparisons", "evals", "Evals"])
def test_reserved_run_names(capsys, name):
    code, out = run_cli(["train", "--run-name", name, "--print-config"], capsys)
    assert code == 2
    assert f"run_name: {name!r} is a folder PEFT Studio keeps in saves/" in out
    assert "choose another name" in out


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_config_not_utf8(tmp_path, capsys, suffix):
    path = tmp_path / f"latin1.{suffix}"
    path.write_bytes("run_name: café\n".encode("latin-1"))
    code, out = run_cli(["train", "--config", str(path), "--print-config"], capsys)
    assert code == 2 and "not UTF-8 text (byte 14); save it as UTF-8" in out


def test_config_too_large(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("# x\n" * 300_000)
    code, out = run_cli(["train", "--config", str(path), "--print-config"], capsys)
    assert code == 2 and "larger than 1000 KB: not a run config" in out


def test_config_missing_or_a_folder(tmp_path, capsys):
    code, out = run_cli(["train", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "cannot read the file: No such file or directory" in out
    code, out = run_cli(["train", "--config", str(tmp_path)], capsys)
    assert code == 2 and "cannot read the file: Is a directory" in out


def test_alias_bomb_refused_by_every_yaml_reader(data):
    from webui.tabs.train import handlers as training

    path = data / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    with pytest.raises(ConfigError, match="aliases"):
        training.load_yaml(path)  # the Train tab's "load YAML"


# -- numbers: every float setting refuses NaN and infinity --------------------------------
FLOATS = [s for s in SETTINGS.values() if s.kind is float]


@pytest.mark.parametrize("setting", FLOATS, ids=[s.name for s in FLOATS])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "nan"])
def test_every_float_setting_refuses_non_finite(setting, bad):
    method = setting.methods[0] if setting.methods else "lora"
    with pytest.raises(ConfigError) as info:
        RunConfig(method=method, **{setting.name: bad})
    assert any(p.startswith(f"{setting.name}: expected a finite number")
               for p in info.value.problems)


@pytest.mark.parametrize("flag, value, words", [
    ("--learning-rate", "nan", "learning_rate: expected a finite number"),
    ("--val-size", "inf", "val_size: expected a finite number"),
    ("--num-train-epochs=-inf", None, "num_train_epochs: expected a finite number"),
    ("--run-name", "a/b", "run_name: must be a plain folder name"),
    ("--batch-size", "0", "batch_size: must be at least 1"),
    ("--method", "lorax", "invalid choice: 'lorax'"),
    ("--learning-rate", "fast", "invalid float value: 'fast'"),
])
def test_bad_train_flags(capsys, flag, value, words):
    args = [flag] if value is None else [flag, value]
    code, out = run_cli(["train", *args, "--print-config"], capsys)
    assert code == 2 and words in out


@pytest.mark.parametrize("dataset, words", [
    ("/nope.json", "dataset: /nope.json: no such file, and no registered dataset"),
    ("{empty}", "dataset: {empty}: is a folder, not a file"),  # a folder without data
    ("no_such_name", "dataset: no_such_name: no such file"),
])
def test_train_missing_dataset(saves, tmp_path, capsys, dataset, words):
    (tmp_path / "empty").mkdir()
    dataset, words = (t.format(empty=tmp_path / "empty") for t in (dataset, words))
    code, out = run_cli(["train", "--dataset", dataset], capsys)
    assert code == 2 and words in out
    assert not any(saves.iterdir())  # nothing started


def test_train_dataset_not_utf8(saves, tmp_path, capsys):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"instruction": "café", "output": "x"}]'.encode("latin-1"))
    code, out = run_cli(["train", "--dataset", str(path)], capsys)
    assert code == 2 and "not UTF-8 text" in out and "save the file as UTF-8" in out
    assert not any(saves.iterdir())


def test_train_tab_handler_lists_non_finite(saves, data):
    from webui.tabs.train import handlers as training

    values = {n: (list(s.default) if isinstance(s.default, list) else s.default)
              for n, s in SETTINGS.items()}
    started = training.start({**values, "learning_rate": math.nan})
    assert started.run_dir is None
    assert "`learning_rate`: expected a finite number" in started.message
    started = training.start({**values, "run_name": "x" * 101})
    assert started.run_dir is None and "101 characters; use at most 100" in started.message
    assert not any(saves.iterdir())


# -- chat ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--top-p", "5"], "top_p: must be at most 1, got 5"),
    (["--top-p", "nan"], "top_p: expected a finite number"),
    (["--max-new-tokens", "0"], "max_new_tokens: must be at least 1, got 0"),
    (["--temperature", "-1"], "temperature: must be at least 0, got -1"),
    (["--top-k", "-3"], "top_k: must be at least 0"),
    (["--repetition-penalty", "0"], "repetition_penalty: must be at least 0.01"),
    (["--model", "/nope"], "no model at /nope"),
    (["--model", "./missing.gguf"], "no model at ./missing.gguf"),
])
def test_bad_chat_settings(saves, capsys, args, words):
    code, out = run_cli(["chat", *args, "--prompt", "hi"], capsys)
    assert code == 2 and words in out
    assert "loading" not in out  # refused before any model was touched


def test_chat_unknown_run(saves, capsys):
    code, out = run_cli(["chat", "ghost", "--prompt", "hi"], capsys)
    assert code == 2 and "no run named 'ghost'" in out


@pytest.mark.parametrize("field, value, words", [
    ("max_new_tokens", None, "max_new_tokens: expected int, got None"),
    ("top_p", 1.5, "top_p: must be at most 1"),
    ("temperature", math.inf, "temperature: expected a finite number"),
])
def test_generation_settings_are_checked_where_they_are_made(field, value, words):
    """The Chat tab and the chat worker build GenerationSettings from what a browser sent;
    the bounds live in core.schema.jobs.GENERATION, not in each caller."""
    from core.chat.engine import GenerationSettings

    with pytest.raises(SettingsError, match=words.replace("(", r"\(")):
        GenerationSettings(**{field: value})
    assert GenerationSettings(max_new_tokens=12.0).max_new_tokens == 12  # a slider's float
    assert set(GENERATION) >= {"top_p", "temperature"} and "batch_size" in EVALUATION


# -- evaluate -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--batch-size", "0"], "batch_size: must be at least 1, got 0"),
    (["--max-new-tokens", "0"], "max_new_tokens: must be at least 1"),
    (["--max-samples", "-1"], "max_samples: must be at least 0"),
    (["--cutoff-len", "2"], "cutoff_len: must be at least 8"),
    (["--dataset", "/nope.json"], "dataset: /nope.json: no such file"),
    (["--checkpoint", "step-9"], "has no result 'step-9'"),
])
def test_bad_evaluate_settings(finished_run, capsys, args, words):
    code, out = run_cli(["evaluate", finished_run.name, "--dataset", "identity", *args],
                        capsys)
    assert code == 2 and words in out
    assert not (finished_run / "evals").exists()  # no job started


def test_evaluate_unknown_run(saves, capsys):
    code, out = run_cli(["evaluate", "ghost"], capsys)
    assert code == 2 and "no run named 'ghost'" in out


def test_evaluate_tab_run_deleted_meanwhile(finished_run, data):
    from webui.tabs.evaluate.handlers import start_evaluation

    shutil.rmtree(finished_run)
    path, note = start_evaluation(finished_run.name, "final", "identity", 5, 16, 2, True)
    assert path is None
    assert f"run {finished_run.name} no longer exists; refresh the list" in note


def test_evaluate_tab_bad_numbers_and_dataset(finished_run, data):
    from webui.tabs.evaluate.handlers import start_evaluation

    path, note = start_evaluation(finished_run.name, "final", "identity", 5, 16, 0, True)
    assert path is None and "batch_size: must be at least 1" in note
    path, note = start_evaluation(finished_run.name, "final", "/etc/passwd", 5, 16, 2, True)
    assert path is None and "only from the CLI" in note
    assert not (finished_run / "evals").exists()


# -- export -------------------------------------------------------------------------------
@pytest.mark.parametrize("size, words", [
    ("lots", "max shard size 'lots': write a number and a unit, e.g. 200MB"),
    ("5", "write a number and a unit"),
    ("10B", "is too small (at least 1KB)"),
])
def test_bad_export_shard_size(finished_run, capsys, size, words):
    code, out = run_cli(["export", finished_run.name, "--out", "x", "--max-shard-size", size],
                        capsys)
    assert code == 2 and words in out
    assert not (finished_run / "exports").exists()


def test_export_bad_name_and_unknown_run(finished_run, capsys):
    code, out = run_cli(["export", finished_run.name, "--out", ".hidden"], capsys)
    assert code == 2 and "export name '.hidden' is not allowed" in out
    code, out = run_cli(["export", "ghost", "--out", "x"], capsys)
    assert code == 2 and "no run named 'ghost'" in out


def test_export_tab_run_deleted_meanwhile(finished_run):
    from webui.tabs.export.handlers import start_export

    shutil.rmtree(finished_run)
    path, note = start_export(finished_run.name, "final", "x", "2GB", False, False)
    assert path is None
    assert f"run {finished_run.name} no longer exists; refresh the list" in note


def test_export_tab_result_deleted_meanwhile(finished_run):
    from webui.tabs.export.handlers import start_export

    (finished_run / "adapter" / "studio.json").unlink()
    path, note = start_export(finished_run.name, "final", "x", "2GB", False, False)
    assert path is None and "Not started" in note


# -- webui --------------------------------------------------------------------------------
@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_webui_bad_port(capsys, port):
    code, out = run_cli(["webui", "--port", port], capsys)
    assert code == 2 and f"{port!r} is not a port: use 1 to 65535" in out


# -- the Data tab ------------------------------------------------------------------------
@pytest.mark.parametrize("cut, words", [
    (math.nan, "cutoff_len: expected a whole number, got nan"),
    (4, "cutoff_len: must be at least 8, got 4"),
    (10**9, "cutoff_len: must be at most 131072"),
])
def test_data_tab_model_view_refuses_a_bad_cut_off(data, cut, words):
    """The 'what the model sees' view's cut-off has the run setting's bounds; NaN from an
    API client passes Gradio's own minimum and maximum, and int(nan) was a traceback."""
    from webui.tabs.data import view as dataview

    with pytest.raises(ValueError, match=words):
        dataview.model_view(None, "identity", 1, cut, False)
