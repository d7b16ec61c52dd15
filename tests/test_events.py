"""The events file is read incrementally from an offset and survives a torn last line."""

from __future__ import annotations

import json

from core.jobs.events import EventWriter, read_events, read_log, tail_log


def test_read_from_offset(tmp_path):
    w = EventWriter(tmp_path)
    w.emit("start", total_steps=3)
    events, offset = read_events(tmp_path)
    assert [e["type"] for e in events] == ["start"]
    assert read_events(tmp_path, offset) == ([], offset)
    w.emit("step", step=1, loss=1.5)
    w.emit("step", step=2, loss=float("nan"))
    events, offset2 = read_events(tmp_path, offset)
    assert [e["step"] for e in events] == [1, 2]
    assert offset2 > offset
    assert all(isinstance(e["time"], float) for e in events)


def test_partial_last_line_waits_for_its_newline(tmp_path):
    w = EventWriter(tmp_path)
    w.emit("start")
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write(json.dumps({"type": "step", "step": 1})[:10])  # a writer mid-line
    events, offset = read_events(tmp_path)
    assert len(events) == 1
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write(json.dumps({"type": "step", "step": 1})[10:] + "\n")
    events, _ = read_events(tmp_path, offset)
    assert events == [{"type": "step", "step": 1}]


def test_missing_files_read_as_empty(tmp_path):
    assert read_events(tmp_path / "nope") == ([], 0)
    assert read_log(tmp_path) == ("", 0)
    assert tail_log(tmp_path) == ""


def test_log_tail(tmp_path):
    (tmp_path / "log.txt").write_text("x" * 10000 + "END")
    assert tail_log(tmp_path, 100).endswith("END")
    text, offset = read_log(tmp_path, 10000)
    assert text == "END" and offset == 10003
