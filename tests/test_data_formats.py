"""Formats: detection, normalisation from every file type, validation of bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from core.data.formats import DataError, detect_format, to_example, validate_file
from core.data.loader import load_examples

SYSTEM = "You are terse."
EXPECTED_CHAT = {
    "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Add 2 and 3.\n\nAnswer with a number."},
        {"role": "assistant", "content": "5"},
    ]
}
ROWS = {
    "alpaca": [{
        "instruction": "Add 2 and 3.", "input": "Answer with a number.", "output": "5",
        "system": SYSTEM, "history": [["Hi", "Hello."]],
    }],
    "messages": [{"messages": EXPECTED_CHAT["messages"]}],
    "sharegpt": [{
        "system": SYSTEM,
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "Add 2 and 3.\n\nAnswer with a number."},
            {"from": "gpt", "value": "5"},
        ],
    }],
    "text": [{"text": "First document."}, {"text": "Second document."}],
}


def write(path: Path, rows: list[dict]) -> Path:
    """Rows as json, jsonl, csv (lists as JSON text, as a spreadsheet would hold them) or
    parquet, chosen by the suffix."""
    suffix = path.suffix
    if suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                        encoding="utf-8")
    elif suffix == ".csv":
        flat = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                for r in rows]
        pd.DataFrame(flat).to_csv(path, index=False)
    elif suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize("fmt", ["alpaca", "messages", "sharegpt", "text"])
def test_each_format_normalises_from_each_file_type(tmp_path, fmt, suffix):
    path = write(tmp_path / f"d{suffix}", ROWS[fmt])
    examples = load_examples([str(path)], None)
    if fmt == "text":
        assert examples == [{"text": "First document."}, {"text": "Second document."}]
    else:
        assert examples == [EXPECTED_CHAT]


def test_plain_text_file_is_one_document_per_paragraph(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("One line.\nSame paragraph.\n\n\n  Second.  \n\n", encoding="utf-8")
    assert load_examples([str(path)], None) == [
        {"text": "One line.\nSame paragraph."}, {"text": "Second."}
    ]


def test_column_mapping_and_placeholders():
    row = {"q": "Who are you?", "a": "I am {{name}} by {{author}}."}
    ex = to_example(row, "alpaca", {"instruction": "q", "output": "a"},
                    placeholders={"name": "Ada", "author": "Lab"})
    assert ex["messages"][-1] == {"role": "assistant", "content": "I am Ada by Lab."}


@pytest.mark.parametrize(
    ("columns", "fmt", "mapping", "confident"),
    [
        (["instruction", "input", "output"], "alpaca",
         {"instruction": "instruction", "input": "input", "output": "output"}, True),
        (["messages"], "messages", {"messages": "messages"}, True),
        (["conversations", "system"], "sharegpt",
         {"conversations": "conversations", "system": "system"}, True),
        # An extra column is named, never passed over in silence (tests/test_llamafactory_data.py).
        (["text", "meta"], "text", {"text": "text"}, False),
        (["Prompt", "Response"], "alpaca", {"instruction": "Prompt", "output": "Response"},
         False),
        (["body", "id"], "text", {"text": "body"}, False),
        (["chat"], "messages", {"messages": "chat"}, False),
    ],
)
def test_detect_format(columns, fmt, mapping, confident):
    found = detect_format(columns)
    assert (found.format, found.columns, found.confident) == (fmt, mapping, confident)
    if not confident:
        assert found.note  # the UI shows why it is unsure


def test_detect_format_with_nothing_known():
    found = detect_format(["a", "b"])
    assert found.format is None and not found.confident and "instruction" in found.note


def test_validate_lists_every_bad_row_with_number_and_reason(tmp_path):
    rows = [
        {"instruction": "ok", "output": "fine"},
        {"instruction": "no answer", "output": ""},
        {"instruction": "ok", "output": "fine"},
        {"instruction": "", "output": "orphan"},
        {"instruction": "x", "output": "y", "history": [["only one"]]},
        {"instruction": "x", "output": ["not", "text"]},
    ]
    path = write(tmp_path / "bad.json", rows)
    problems = validate_file(path, "alpaca")
    assert [(p.row, p.field) for p in problems] == [
        (2, "output"), (4, "instruction"), (5, "history"), (6, "output")
    ]
    assert "row 2, field 'output': empty; every row needs a non-empty answer" in str(problems[0])
    assert str(problems[0]).startswith(str(path))
    assert "pair" in problems[2].reason
    assert "expected text" in problems[3].reason


def test_validate_conversation_problems(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}]},
        {"messages": [{"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]},
    ]
    problems = validate_file(write(tmp_path / "c.jsonl", rows), "messages")
    assert [p.row for p in problems] == [2, 3, 4, 5]
    assert "end with an assistant reply" in problems[0].reason
    assert "user turn was expected" in problems[1].reason
    assert "'robot'" in problems[2].reason
    assert "no text" in problems[3].reason


def test_validate_file_level_problems(tmp_path):
    missing = validate_file(write(tmp_path / "m.csv", [{"question": "q"}]), "alpaca")
    assert len(missing) == 1 and missing[0].row is None and "column missing" in missing[0].reason
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    assert "line 2" in validate_file(broken, "text")[0].reason
    assert "not found" in validate_file(tmp_path / "nope.json", "text")[0].reason
    assert "unsupported" in validate_file(tmp_path / "x.xlsx", "text")[0].reason


def test_loading_a_bad_row_names_file_and_row(tmp_path):
    path = write(tmp_path / "d.json", [{"text": "ok"}, {"text": ""}])
    with pytest.raises(DataError) as err:
        load_examples([str(path)], None)
    assert err.value.row == 2 and err.value.file == str(path)


def test_loading_a_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="gone.json"):
        load_examples([str(tmp_path / "gone.json")], None)


@pytest.mark.parametrize("columns, left", [
    (["text", "label"], "'label' (KTO labels (desirable or not)) unused (the kto format reads"),
    (["messages", "images"], "'images' (images)"),
    (["text", "tools"], "'tools' (tool definitions)"),
    (["text", "kto_tag"], "'kto_tag' (KTO labels)"),
])
def test_a_column_that_carries_meaning_is_never_dropped_in_silence(tmp_path, columns, left):
    """A label beside plain text, LLaMA-Factory's multimodal files (messages + images) and
    tool-calling files (tools) read by a format that ignores that column would train
    without the part that makes them what they are: detection is not confident and says
    what is left, and an unregistered file given to a run is refused with the reason
    (media: as media the studio cannot train yet)."""
    import json

    from core.data.formats import DataError, detect_format
    from core.data.registry import resolve

    found = detect_format(columns)
    assert not found.confident and left in found.note and found.ignored
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant",
                                                            "content": "hello"}],
           "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
           "text": "some text", "label": True, "kto_tag": False,
           "images": ["a.png"], "tools": "[]"}
    path = tmp_path / "theirs.json"
    path.write_text(json.dumps([{c: row[c] for c in columns}]))
    import re

    expected = (re.escape("this dataset has images (column 'images'); image fine-tuning is "
                          "not supported yet") if "images" in columns else
                re.escape(f"would leave {left}") + ".*nothing is trained with part of its "
                "data dropped")
    with pytest.raises(DataError, match=expected):
        resolve(str(path))
