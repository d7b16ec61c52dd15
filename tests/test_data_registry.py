"""The registry: resolving names and paths, registering uploads without ever harming
dataset_info.json. Works on a copy of data/ so the real one is never touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data import registry
from core.data.formats import DataError


def write_json(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_bundled_entries(data):
    info = registry.load_info()
    assert {"identity", "sentiment", "sentiment_test", "corpus"} <= set(info)
    assert registry.test_sets()["sentiment_test"] == "sentiment"
    entry = registry.resolve("sentiment_test")
    assert entry.path == data / "sentiment_test.json"
    assert (entry.format, entry.split, entry.test_of) == ("alpaca", "test", "sentiment")


def test_unknown_name_lists_registered_ones(data):
    with pytest.raises(DataError, match="unknown dataset 'nope'.*identity"):
        registry.resolve("nope")


def test_unregistered_path_gets_detected_format(data, tmp_path):
    path = write_json(tmp_path / "qa.json", [{"question": "q", "answer": "a"}])
    entry = registry.resolve(str(path))
    assert not entry.registered
    assert entry.format == "alpaca"
    assert entry.columns == {"instruction": "question", "output": "answer"}
    with pytest.raises(DataError, match="cannot tell the format"):
        registry.resolve(str(write_json(tmp_path / "odd.json", [{"a": 1, "b": 2}])))


def test_register_copies_the_file_and_adds_the_entry(data, tmp_path):
    src = write_json(tmp_path / "upload.json", [{"q": "2+2?", "a": "4"}])
    registry.register("math_small", src, "alpaca", {"instruction": "q", "output": "a"},
                      description="tiny")
    entry = registry.resolve("math_small")
    assert entry.path == data / "math_small.json" and entry.path.read_bytes() == src.read_bytes()
    assert entry.columns == {"instruction": "q", "output": "a"}
    assert registry.load_info()["math_small"]["description"] == "tiny"
    assert "identity" in registry.load_info()  # the others are kept
    assert not list(data.glob("*.tmp"))


@pytest.mark.parametrize(
    ("name", "rows", "fmt", "match"),
    [
        ("../evil", [{"text": "a"}], "text", "bad dataset name"),
        ("has space", [{"text": "a"}], "text", "bad dataset name"),
        ("x.json", [{"text": "a"}], "text", "bad dataset name"),
        ("", [{"text": "a"}], "text", "bad dataset name"),
        ("identity", [{"text": "a"}], "text", "already exists"),
        ("dataset_info", [{"text": "a"}], "text", "taken by the registry file"),
        ("fresh", [{"text": "a"}, {"text": ""}], "text", "row 2"),
        ("fresh", [{"text": "a"}], "yaml", "unknown format"),
        ("fresh", [{"text": "a"}], "alpaca", "column missing"),
    ],
)
def test_register_refusals_leave_everything_unchanged(data, tmp_path, name, rows, fmt, match):
    before = (data / "dataset_info.json").read_bytes()
    files = sorted(p.name for p in data.iterdir())
    src = write_json(tmp_path / "upload.json", rows)
    with pytest.raises(DataError, match=match):
        registry.register(name, src, fmt)
    assert (data / "dataset_info.json").read_bytes() == before
    assert sorted(p.name for p in data.iterdir()) == files


def test_register_overwrite(data, tmp_path):
    src = write_json(tmp_path / "corpus2.json", [{"text": "new"}])
    registry.register("corpus", src, "text", overwrite=True)
    assert registry.resolve("corpus").path == data / "corpus.json"


def test_register_a_file_already_in_data_keeps_it_there(data):
    write_json(data / "mine.json", [{"text": "a"}])
    registry.register("mine", data / "mine.json", "text")
    assert registry.load_info()["mine"]["file"] == "mine.json"
