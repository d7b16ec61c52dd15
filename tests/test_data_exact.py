"""Issue 8 ("Trust"): the user's data is trained exactly as written, and every bad input
gets a message that names the user's own file and says what to do."""

from __future__ import annotations

import csv
import datetime
import json
import os
import tempfile
import tracemalloc
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.data import registry
from core.data.encode import encode_messages, render
from core.data.formats import DataError, to_example, validate_file
from core.data.loader import load_examples
from core.data.reader import read_rows, scan
from webui.tabs.data import upload
from webui.tabs.data import view as dataview

# Strings that pandas, Arrow or a spreadsheet would turn into something else.
TRICKY = [
    "1991-03-13", "1991-03-13T00:00:00", "13/03/1991", "007", "0", "-0", "1e3", "1,000",
    "0x1F", "12345678901234567890", "3.10", "true", "False", "TRUE", "null", "None", "NaN",
    "nan", "NA", "N/A", "#N/A", "n/a", "-", "", " ", " padded ", "\ttabbed\t", "two\nlines",
    "crlf\r\nline", "ünïcödé 日本語 🙂", "u\u2028sep", '"quoted"', "comma, inside", "=1+1",
    "[1, 2]", "{}", "'single'", "\\backslash",
]
SUFFIXES = [".json", ".jsonl", ".csv", ".parquet"]
COLUMNS = ["instruction", "input", "output"]


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    """Rows written the way each tool writes them: json.dumps, a csv writer (as a
    spreadsheet exports), pyarrow with string columns."""
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                        encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            out = csv.writer(f)
            out.writerow(COLUMNS)
            out.writerows([[r[c] for c in COLUMNS] for r in rows])
    else:
        pq.write_table(pa.table({c: pa.array([r[c] for r in rows], pa.string())
                                 for c in COLUMNS}), path)
    return path


def expected(row: dict[str, str]) -> list[dict[str, str]]:
    user = (f"{row['instruction']}\n\n{row['input']}" if row["input"].strip()
            else row["instruction"])
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def tricky_rows() -> list[dict[str, str]]:
    answers = [t for t in TRICKY if t.strip()]
    return [{"instruction": f"Repeat {i}: {t}", "input": t, "output": answers[i % len(answers)]}
            for i, t in enumerate(TRICKY)]


# -- the bug as the user met it ------------------------------------------------------------
def test_alpaca_json_with_iso_date_answers_registers_and_trains_as_written(data, tmp_path):
    months = ["January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"]
    rows = []
    for i in range(800):
        day = datetime.date(1950, 1, 1) + datetime.timedelta(days=37 * i)
        rows.append({"instruction": "Convert this date to ISO 8601 format.",
                     "input": f"{months[day.month - 1]} {day.day}, {day.year}",
                     "output": day.isoformat()})
    rows[0].update(input="March 13, 1991", output="1991-03-13")
    src = tmp_path / "gradio" / "0d9f" / "dates.json"
    src.parent.mkdir(parents=True)
    src.write_text(json.dumps(rows, indent=2), encoding="utf-8")

    found = upload.inspect_upload(src)
    assert (found.format, found.rows, found.name) == ("alpaca", 800, "dates")
    assert found.sample["output"][0] == "1991-03-13"
    result = upload.register_upload(src, "dates", "alpaca", found.mapping)
    assert result.ok, result.message
    examples = load_examples(["dates"], None)
    assert [ex["messages"][-1]["content"] for ex in examples] == [r["output"] for r in rows]
    assert examples[0]["messages"][0]["content"] == (
        "Convert this date to ISO 8601 format.\n\nMarch 13, 1991")
    assert dataview.page("dates", 1).rows["output"][0] == "1991-03-13"
    # The same file given by path (peft-studio train --dataset dates.json).
    assert load_examples([str(src)], None) == examples


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_tricky_strings_arrive_exactly_from_each_file_type(tmp_path, suffix):
    rows = tricky_rows()
    path = write(tmp_path / f"tricky{suffix}", rows)
    assert validate_file(path, "alpaca") == []
    assert [ex["messages"] for ex in load_examples([str(path)], None)] == [
        expected(r) for r in rows]
    assert read_rows(path)[0] == rows


def test_csv_cells_are_strings_as_written(data, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(
        "review,label,note\n"
        '"Great, loved it",007,NA\n'
        "Awful,1e3,#N/A\n"
        'Fine,"1,000",\n'
        "Odd,true,None\n"
        "Long, 0042 ,null\n", encoding="utf-8")
    rows, columns = read_rows(path)
    assert columns == ["review", "label", "note"]
    assert [(r["label"], r["note"]) for r in rows] == [
        ("007", "NA"), ("1e3", "#N/A"), ("1,000", ""), ("true", "None"), (" 0042 ", "null")]
    registry.register("labels", path, "alpaca", {"instruction": "review", "output": "label"})
    answers = [ex["messages"][-1]["content"] for ex in load_examples(["labels"], None)]
    assert answers == ["007", "1e3", "1,000", "true", " 0042 "]


def test_csv_short_rows_are_padded_and_long_rows_refused(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("instruction,output,input\nq,a\nq2,a2,i2,extra\n", encoding="utf-8")
    problems = validate_file(path, "alpaca")
    assert len(problems) == 1 and "line 3: 4 cells but the header names 3" in str(problems[0])
    twice = tmp_path / "twice.csv"
    twice.write_text("output,output\na,b\n", encoding="utf-8")
    assert "'output' appears more than once" in str(validate_file(twice, "alpaca")[0])


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_numbers_and_booleans_keep_their_written_text(tmp_path, suffix):
    objects = [
        '{"instruction": "int", "output": 42}',
        '{"instruction": "big", "output": 12345678901234567890}',
        '{"instruction": "float", "output": 1.50}',
        '{"instruction": "exp", "output": 1e3}',
        '{"instruction": "negative zero", "output": -0.0}',
        '{"instruction": "bool", "output": true, "input": false}',
        '{"instruction": "null input", "input": null, "output": "x"}',
        '{"instruction": "date", "output": "1991-03-13"}',
    ]
    path = tmp_path / f"n{suffix}"
    path.write_text("[\n" + ",\n".join(objects) + "\n]" if suffix == ".json"
                    else "\n".join(objects) + "\n", encoding="utf-8")
    examples = load_examples([str(path)], None)
    assert [ex["messages"][-1]["content"] for ex in examples] == [
        "42", "12345678901234567890", "1.50", "1e3", "-0.0", "true", "x", "1991-03-13"]
    assert examples[5]["messages"][0]["content"] == "bool\n\nfalse"
    assert examples[6]["messages"][0]["content"] == "null input"


def test_null_answer_is_an_empty_answer(tmp_path):
    path = tmp_path / "null.jsonl"
    path.write_text('{"instruction": "q", "output": null}\n', encoding="utf-8")
    (problem,) = validate_file(path, "alpaca")
    assert (problem.row, problem.field) == (1, "output") and "empty" in problem.reason


def test_mixed_types_across_rows_do_not_depend_on_the_first_rows(tmp_path):
    # Arrow infers a column's type from the first rows; a later string then broke reading.
    lines = [json.dumps({"instruction": f"q{i}", "output": i}) for i in range(1500)]
    lines += [json.dumps({"instruction": "last", "output": "a string", "input": "new col"})]
    lines += ['{"instruction": "chat", "output": "ok", "input": 7}']
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    answers = [ex["messages"][-1]["content"] for ex in load_examples([str(path)], None)]
    assert answers[:3] == ["0", "1", "2"] and answers[-2:] == ["a string", "ok"]
    found = scan(path)
    assert found.total == 1502 and found.columns == ["instruction", "output", "input"]
    messages = tmp_path / "m.json"
    messages.write_text(json.dumps([{"messages": [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": 4}]}]))
    assert load_examples([str(messages)], None)[0]["messages"][1]["content"] == "4"


def test_parquet_typed_columns_become_text(tmp_path):
    path = tmp_path / "typed.parquet"
    pq.write_table(pa.table({
        "s": pa.array([" 007 "], pa.string()),
        "i": pa.array([42], pa.int64()),
        "f": pa.array([1000.0], pa.float64()),
        "b": pa.array([True], pa.bool_()),
        "d": pa.array([datetime.date(1991, 3, 13)], pa.date32()),
        "t": pa.array([datetime.datetime(1991, 3, 13, 8, 30)], pa.timestamp("s")),
        "n": pa.array([None], pa.string()),
    }), path)
    (row,), _ = read_rows(path)
    texts = {c: to_example(row, "text", {"text": c}, file=path, row_number=1)["text"]
             for c in "sifbdt"}
    assert texts == {"s": " 007 ", "i": "42", "f": "1000.0", "b": "true", "d": "1991-03-13",
                     "t": "1991-03-13T08:30:00"}
    assert validate_file(path, "alpaca", {"instruction": "s", "output": "n"})[0].field == "n"


# -- the property: any such strings survive reading, registering and encoding ------------
# Control characters other than tab and line breaks, and code points from U+40000 (lead
# byte 0xF1), are left out: SmolLM2's vocabulary has no token for bytes 0x04, 0x06, 0x13,
# 0x14, 0x16, 0x1D, 0xF1 and 0xF2, so its tokenizer cannot give them back whatever we read.
_text = st.one_of(
    st.sampled_from(TRICKY),
    st.text(st.characters(blacklist_categories=("Cs", "Cc"), max_codepoint=0x3FFFF)
            | st.sampled_from("\t\n\r"), max_size=20),
)
_row = st.fixed_dictionaries({
    "instruction": _text.filter(str.strip),
    "input": _text,
    "output": _text.filter(str.strip),
})


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(_row, min_size=1, max_size=4))
def test_property_rows_survive_read_register_and_encode(tokenizer, rows):
    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.dict(os.environ, {"PEFT_STUDIO_DATA": str(Path(tmp) / "data")}):
        for suffix in SUFFIXES:
            name = f"prop_{suffix[1:]}"
            registry.register(name, write(Path(tmp) / f"upload{suffix}", rows), "alpaca")
            examples = load_examples([name], None)
            assert [ex["messages"] for ex in examples] == [expected(r) for r in rows], suffix
            for ex, row in zip(examples, rows, strict=True):
                ((text, spans),) = render(tokenizer, ex["messages"]).samples
                assert ex["messages"][0]["content"] in text
                assert text[spans[-1][0]:].startswith(row["output"])
                ids = encode_messages(tokenizer, ex["messages"], 100_000).input_ids
                assert tokenizer.decode(ids) == text


# -- messages name the user's file ---------------------------------------------------------
def gradio_upload(tmp_path: Path, name: str, content: bytes) -> Path:
    """Where gradio puts an upload: <upload dir>/<hash>/<the user's file name>."""
    path = tmp_path / "gradio" / "5b1c9e0d7f3a" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return path


def test_upload_errors_name_the_uploaded_file_not_the_temporary_path(data, tmp_path):
    src = gradio_upload(tmp_path, "broken.jsonl",
                        b'{"text": "a"}\n{"text": "b"}\n{"text": \n')
    with pytest.raises(DataError) as err:
        upload.inspect_upload(src)
    assert str(err.value).startswith("broken.jsonl: line 3, column 10: not valid JSON")
    assert "gradio" not in str(err.value)
    result = upload.register_upload(src, "broken", "text", {"text": "text"})
    assert not result.ok and "broken.jsonl: line 3" in result.message
    assert "gradio" not in result.message
    bad_rows = gradio_upload(tmp_path / "b", "rows.json",
                             json.dumps([{"text": "ok"}, {"text": ""}]).encode())
    result = upload.register_upload(bad_rows, "rows", "text", {"text": "text"})
    assert not result.ok and result.problems["row"].tolist() == [2]
    assert "gradio" not in result.message + " ".join(result.problems["reason"])
    wrong = gradio_upload(tmp_path / "c", "notes.xlsx", b"PK")
    with pytest.raises(DataError, match=r"^notes\.xlsx: upload a"):
        upload.inspect_upload(wrong)


# -- encodings and empty files -------------------------------------------------------------
@pytest.mark.parametrize(("name", "content", "where"), [
    ("latin.csv", "instruction,output\ncafé,olé\n".encode("latin-1"),
     "line 2, column 4 (byte 22 of the file): byte 0xe9"),
    ("bad.json", b'[\n {"instruction": "a", "output": "\xff"}\n]',
     "line 2, column 34 (byte 35 of the file): byte 0xff"),
    ("bad.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "\xe9t\xe9"}\n',
     "line 2, column 18 (byte 53 of the file): byte 0xe9"),
])
def test_non_utf8_file_says_where_and_to_save_as_utf8(data, tmp_path, name, content, where):
    path = tmp_path / name
    path.write_bytes(content)
    (problem,) = validate_file(path, "alpaca")
    assert str(problem) == (f"{path}: {where} is not UTF-8 text; save the file as UTF-8 "
                            '(in a spreadsheet: "CSV UTF-8"; in an editor: "Save with '
                            'encoding UTF-8")')
    with pytest.raises(DataError, match=rf"^{name}: line 2"):
        upload.inspect_upload(gradio_upload(tmp_path, name, content))


def test_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("instruction,output\nq,007\n".encode("utf-8-sig"))
    assert read_rows(path) == ([{"instruction": "q", "output": "007"}], ["instruction", "output"])
    path = tmp_path / "bom.json"
    path.write_bytes('[{"text": "a"}]'.encode("utf-8-sig"))
    assert read_rows(path)[0] == [{"text": "a"}]


@pytest.mark.parametrize("suffix", [*SUFFIXES, ".txt"])
def test_empty_file_is_a_clear_error(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    (problem,) = validate_file(path, "text")
    assert str(problem) == f"{path}: the file is empty (0 bytes)"
    if suffix in (".json", ".jsonl", ".txt"):
        path.write_text(" \n\n ")
        assert "the file is empty (only blank" in str(validate_file(path, "text")[0])


@pytest.mark.parametrize(("name", "content", "message"), [
    ("header.csv", "text\n", "the file has no rows"),
    ("list.json", "[]", "the file has no rows"),
    ("scalar.json", '"text"', "line 1, column 1: expected a list of objects"),
    ("numbers.json", "[1, 2]", "row 1: line 1, column 2: item 1 of the list is 1, not an object"),
    ("comma.json", '[{"text": "a"},]', "line 1, column 16: not valid JSON (a ',' before"),
    ("after.json", '[{"text": "a"}] x', "line 1, column 17: not valid JSON (text after"),
    ("line.jsonl", '{"text": "a"}\n[1]\n', "line 2: expected one object {...} per line"),
])
def test_json_and_csv_shape_problems(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    (problem,) = validate_file(path, "text")
    assert message in str(problem)


def test_json_lines_saved_as_json_are_read(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('{"text": "1991-03-13"}\n{"text": "007"}\n', encoding="utf-8")
    assert load_examples([str(path)], None) == [{"text": "1991-03-13"}, {"text": "007"}]


# -- names that would collide with the registry --------------------------------------------
@pytest.mark.parametrize("name", ["dataset_info", "DATASET_INFO", "Dataset_Info"])
def test_dataset_named_like_the_registry_file_is_refused(data, tmp_path, name):
    before = (data / "dataset_info.json").read_bytes()
    src = write(tmp_path / "upload.json", tricky_rows())
    with pytest.raises(DataError, match="taken by the registry file dataset_info.json"):
        registry.register(name, src, "alpaca")
    result = upload.register_upload(src, name, "alpaca", {"instruction": "instruction",
                                                           "output": "output"})
    assert not result.ok and "taken by the registry file" in result.message
    assert (data / "dataset_info.json").read_bytes() == before
    assert upload.suggested_name(tmp_path / "dataset_info.json") == "dataset_info_2"


def test_unregistered_file_in_data_is_never_overwritten(data, tmp_path):
    (data / "notes.json").write_text('[{"text": "mine"}]', encoding="utf-8")
    src = write(tmp_path / "upload.json", tricky_rows())
    with pytest.raises(DataError, match="notes.json already exists"):
        registry.register("notes", src, "alpaca")
    assert (data / "notes.json").read_text(encoding="utf-8") == '[{"text": "mine"}]'


# -- a broken registry file ----------------------------------------------------------------
BROKEN_REGISTRY = [
    (b'{"identity": {"file": "identity.json", "format": "alpaca"},',
     "line 1, column 60: not valid JSON"),
    (b'{"caf\xe9": {}}', "byte 5 is not UTF-8 text"),
    (b'[{"file": "identity.json"}]', "expected an object of name: entry, found list"),
]
BAD_ENTRIES = [
    (b'{"x": "x.json"}', "entry 'x' is not an object"),
    (b'{"x": {"format": "alpaca"}}', "entry 'x' has no 'file'"),
    (b'{"x": {"file": "x.json", "format": "yaml"}}', "entry 'x' has format 'yaml'"),
    (b'{"x": {"file_name": "x.json", "formatting": "sharegpt"}}',
     "entry 'x' is written the LLaMA-Factory way (file_name, formatting)"),
]


@pytest.mark.parametrize(("content", "reason"), BROKEN_REGISTRY)
def test_broken_registry_says_which_file_and_what_to_do(data, tmp_path, content, reason,
                                                        saves, capsys):
    from core.cli.main import main

    (data / "dataset_info.json").write_bytes(content)
    with pytest.raises(DataError) as err:
        registry.load_info()
    message = str(err.value)
    assert reason in message and "fix or delete" in message
    assert message.startswith(f"{data / 'dataset_info.json'}: ")
    assert registry.info_problem() == message
    listing = dataview.table()
    assert listing["description"].tolist() == [message]
    assert dataview.names() == [] and registry.test_sets() == {}
    src = write(tmp_path / "up.json", tricky_rows())
    assert message in upload.register_upload(src, "fresh", "alpaca", {
        "instruction": "instruction", "output": "output"}).message
    assert (data / "dataset_info.json").read_bytes() == content  # never written over
    assert upload.inspect_upload(src).name == "up"
    # A name cannot be found in it (said with why), a file path runs all the same.
    assert main(["train", "--dataset", "identity"]) == 2
    assert message in capsys.readouterr().err
    assert registry.dataset_problems([str(src)]) == []
    assert not list(saves.iterdir())


@pytest.mark.parametrize(("content", "reason"), BAD_ENTRIES)
def test_a_bad_entry_is_a_problem_of_its_own(data, tmp_path, content, reason):
    """An entry the studio cannot use (another tool's, or one missing its file) is said
    beside the list; the other entries, new registrations and runs go on."""
    good = json.loads((data / "dataset_info.json").read_text(encoding="utf-8"))
    theirs = json.loads(content)
    (data / "dataset_info.json").write_text(json.dumps({**good, **theirs}), encoding="utf-8")
    assert set(registry.load_info()) == set(good)
    [problem] = registry.registry_problems()
    assert reason in problem and "skipped" in problem
    listing = dataview.table()
    assert problem in listing["description"].tolist() and "identity" in dataview.names()
    assert registry.dataset_problems(["identity"]) == []
    assert "cannot be used" in registry.dataset_problems(["x"])[0]
    src = write(tmp_path / "up.json", tricky_rows())
    assert upload.register_upload(src, "fresh", "alpaca", {
        "instruction": "instruction", "output": "output"}).ok
    kept = json.loads((data / "dataset_info.json").read_text(encoding="utf-8"))
    assert kept["x"] == theirs["x"] and "fresh" in kept  # theirs is written back as it was


def test_app_builds_and_lists_the_problem_with_a_broken_registry(data, monkeypatch):
    import gradio as gr

    from webui import app
    from webui.tabs import data as data_tab

    (data / "dataset_info.json").write_text("{oops", encoding="utf-8")
    monkeypatch.setenv("PEFT_STUDIO_MAX_UPLOAD_MB", "5")
    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw))
    app.launch()  # builds the whole app, then the patched launch records its settings
    assert launched["max_file_size"] == 5 * 2**20
    table, choices = data_tab._refresh_lists(None)
    assert "dataset_info.json" in table["description"][0]
    assert "fix or delete" in table["description"][0]
    assert choices["choices"] == []


def test_training_start_refuses_with_a_broken_registry(data, saves):
    from core.schema.config import SETTINGS
    from webui.tabs.train import handlers as training

    (data / "dataset_info.json").write_text("[]", encoding="utf-8")
    values = {n: (list(s.default) if isinstance(s.default, list) else s.default)
              for n, s in SETTINGS.items()}
    started = training.start(values)
    assert started.run_dir is None and "fix or delete" in started.message
    assert "dataset_info.json" in started.message and not list(saves.iterdir())


def test_upload_limit_setting(monkeypatch):
    monkeypatch.delenv("PEFT_STUDIO_MAX_UPLOAD_MB", raising=False)
    assert upload.max_upload_mb() == 1024
    monkeypatch.setenv("PEFT_STUDIO_MAX_UPLOAD_MB", "200")
    assert upload.max_upload_mb() == 200
    for bad in ("lots", "0", "-5"):
        monkeypatch.setenv("PEFT_STUDIO_MAX_UPLOAD_MB", bad)
        assert upload.max_upload_mb() == 1024


# -- big files are looked at without holding them -----------------------------------------
@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_inspecting_a_big_upload_holds_only_a_sample(tmp_path, suffix):
    row = {"instruction": "Convert this date to ISO 8601 format. " * 5,
           "input": "March 13, 1991", "output": "1991-03-13"}
    count = 15_000  # about 4 MB
    path = write(tmp_path / f"big{suffix}", [row] * count)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        found = upload.inspect_upload(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.rows == count and len(found.sample) == 5
    assert found.sample["output"].tolist() == ["1991-03-13"] * 5
    assert peak < size / 2, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"
