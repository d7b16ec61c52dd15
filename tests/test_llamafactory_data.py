"""Data brought from elsewhere: LLaMA-Factory's data folder (tests/fixtures/llamafactory/
holds a few rows of each demo file its repository ships, and a dataset_info.json naming
them, its hub entries and a missing file), TRL's conversational preference shapes, and
content written as parts. Detected, trained as written, or refused with why; never
trained wrong in silence."""

from __future__ import annotations

import json
import random
import shutil
import string
from pathlib import Path

import pytest

from core.cli.main import main
from core.data import registry
from core.data.check import check_dataset
from core.data.formats import DataError, detect_format, to_example, validate_file
from core.data.importer import import_llamafactory
from core.data.loader import load_one
from core.stages import format_problem

FIXTURES = Path(__file__).parent / "fixtures" / "llamafactory"


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


# -- their files, given as paths ------------------------------------------------------------
@pytest.mark.parametrize(("file", "fmt"), [
    ("identity.json", "alpaca"),
    ("alpaca_en_demo.json", "alpaca"),
    ("dpo_en_demo.json", "pairwise"),  # conversations + chosen/rejected message objects
    ("kto_en_demo.json", "kto"),  # messages + label
    ("v1_sft_demo.jsonl", "messages"),  # content as [{"type": "text", "value": ...}]
    ("c4_demo.jsonl", "text"),
    ("glaive_toolcall_en_demo.json", "sharegpt"),
])
def test_their_demo_files_are_detected_sure_and_pass_every_row(file, fmt):
    report = check_dataset(str(FIXTURES / file))
    assert (report.format, report.ok, report.unused) == (fmt, True, []), report.lines()
    assert detect_format(report.columns).confident


@pytest.mark.parametrize(("file", "why"), [
    ("mllm_demo.json", "this dataset has images (column 'images'); image fine-tuning is "
                       "not supported yet"),
])
def test_media_files_are_refused_not_stripped(file, why, saves, capsys):
    report = check_dataset(str(FIXTURES / file))
    assert not report.ok and why in str(report.problems[0])
    assert main(["data", "check", str(FIXTURES / file)]) == 1
    assert why in capsys.readouterr().out
    # A run is refused before its folder exists.
    assert main(["train", "--dataset", str(FIXTURES / file)]) == 2
    assert why in capsys.readouterr().err and not list(saves.iterdir())


def test_kto_labels_reach_the_kto_examples_and_never_sft():
    examples = load_one(str(FIXTURES / "kto_en_demo.json"), None)
    assert [e["label"] for e in examples] == [True, False, True, False]
    first = json.loads((FIXTURES / "kto_en_demo.json").read_text())[0]["messages"]
    assert examples[0]["prompt"] == first[:-1]
    assert examples[0]["completion"] == [first[-1]]
    assert "the sft stage cannot train on" in format_problem("sft", "kto_en_demo", "kto")
    refused = check_dataset(str(FIXTURES / "alpaca_en_demo.json"), stage="kto")
    assert not refused.ok and "the kto stage cannot train on" in refused.stage_problem


def test_their_sharegpt_pairs_read_as_prompt_and_two_replies():
    [ex, *_] = load_one(str(FIXTURES / "dpo_en_demo.json"), None)
    row = json.loads((FIXTURES / "dpo_en_demo.json").read_text())[0]
    assert ex["prompt"] == [{"role": "user", "content": row["conversations"][0]["value"]}]
    assert ex["chosen"] == [{"role": "assistant", "content": row["chosen"]["value"]}]
    assert ex["rejected"] == [{"role": "assistant", "content": row["rejected"]["value"]}]


# -- TRL's conversational shapes, LLaMA-Factory's alpaca pairs -------------------------------
U = {"role": "user", "content": "2+2?"}
A = {"role": "assistant", "content": "4"}
B = {"role": "assistant", "content": "5"}


@pytest.mark.parametrize(("row", "fmt", "expected"), [
    ({"prompt": [U], "chosen": [A], "rejected": [B]}, "pairwise",
     {"prompt": [U], "chosen": [A], "rejected": [B]}),
    ({"chosen": [U, A], "rejected": [U, B]}, "pairwise",  # TRL's implicit prompt
     {"prompt": [U], "chosen": [A], "rejected": [B]}),
    ({"instruction": "2+2?", "input": "", "chosen": "4", "rejected": "5"}, "pairwise",
     {"prompt": [U], "chosen": [A], "rejected": [B]}),
    ({"prompt": [U], "completion": [A], "label": True}, "kto",
     {"prompt": [U], "completion": [A], "label": True}),
    ({"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "5"}],
      "kto_tag": False}, "kto", {"prompt": [U], "completion": [B], "label": False}),
])
def test_preference_shapes_detected_sure_and_read_as_written(tmp_path, row, fmt, expected):
    found = detect_format(list(row))
    assert (found.format, found.confident) == (fmt, True), found
    path = write(tmp_path / "p.json", [row, row])
    assert validate_file(path, fmt, found.columns) == []
    assert load_one(str(path), None) == [expected, expected]


def test_implicit_prompt_that_differs_before_the_reply_is_refused(tmp_path):
    row = {"chosen": [U, A], "rejected": [{"role": "user", "content": "3+3?"}, B]}
    [problem] = validate_file(write(tmp_path / "p.json", [row]), "pairwise")
    assert problem.row == 1 and "same conversation up to their last reply" in problem.reason


# -- the unused-column rule ----------------------------------------------------------------
VALID = [
    {"instruction": "hi", "output": "hello"},
    {"messages": [U, A]},
    {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
    {"text": "a document"},
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "2+2?", "completion": "4", "label": True},
    {"messages": [U, A], "label": True},
]


def test_adding_any_unknown_column_never_leaves_a_silent_sure_detection():
    rng = random.Random(0)
    names = ["id", "source", "meta", "score", "lang", "reward", "category"] + [
        "".join(rng.choices(string.ascii_lowercase + "_", k=rng.randint(1, 12)))
        for _ in range(30)]
    for row in VALID:
        assert detect_format(list(row)).confident, row
        for extra in names:
            if extra in row or extra in ("input", "system", "history", "completion", "text"):
                continue  # columns every format may read
            found = detect_format([*row, extra])
            assert not found.confident or extra in found.columns.values(), (row, extra)
            if extra not in found.columns.values():
                assert extra in found.unused and repr(extra) in found.note, (row, extra)


# -- content parts -------------------------------------------------------------------------
def test_content_parts_read_as_their_text_and_media_parts_are_refused():
    openai = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Who "},
                                                          {"type": "text", "text": "are you?"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "Me."}]}]}
    assert to_example(openai, "messages")["messages"][0]["content"] == "Who are you?"
    v1 = json.loads((FIXTURES / "v1_sft_demo.jsonl").read_text().splitlines()[0])
    assert to_example(v1, "messages")["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": v1["messages"][1]["content"][0]["value"]}]
    image = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x.png"}}, {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": "a cat"}]}
    with pytest.raises(DataError, match="message 1, part 1 is an image; this dataset has "
                       "images; image fine-tuning is not supported yet"):
        to_example(image, "messages", row_number=1)


# -- their registry: imported, and never stopping anything -----------------------------------
@pytest.fixture()
def beside_a_bad_entry(data: Path) -> Path:
    """The studio's data/ whose registry also holds an entry it cannot use."""
    info = json.loads((data / "dataset_info.json").read_text())
    info["theirs"] = {"file_name": "theirs.json", "columns": {"prompt": "q"}}
    (data / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return data


def test_import_registers_every_entry_it_can_and_says_why_for_the_rest(beside_a_bad_entry,
                                                                          capsys):
    assert main(["data", "import", str(FIXTURES)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "registered identity as identity_2 (alpaca, 3 rows)",  # the studio has one
        "registered as alpaca_en_demo (alpaca, 2 rows)",
        "registered as glaive_toolcall_en_demo (sharegpt, 1 rows)",
        "skipped mllm_demo: this dataset has images (column 'images'); image fine-tuning is "
        "not supported yet",
        "registered as dpo_en_demo (pairwise, 3 rows)",
        "registered as kto_en_demo (kto, 4 rows)",
        "registered as wiki_demo (text, 3 rows)",  # one document per line
        "registered as c4_demo (text, 2 rows)",
        "skipped alpaca_en: hub dataset ID 'llamafactory/alpaca_en', needs internet; "
        "download it and add the file (a file_name entry, or the Data tab's upload)",
        "skipped lima: hub dataset ID 'llamafactory/lima', needs internet; download it and "
        "add the file (a file_name entry, or the Data tab's upload)",
        "registered as v1_sft_demo (messages, 2 rows)",
        "skipped missing_file: not_here.json not found in tests/fixtures/llamafactory",
        "8 of 12 entries registered",
    ]
    info = json.loads((beside_a_bad_entry / "dataset_info.json").read_text())
    assert info["theirs"] == {"file_name": "theirs.json", "columns": {"prompt": "q"}}
    assert info["kto_en_demo"]["format"] == "kto"
    assert [e["label"] for e in load_one("kto_en_demo", None)] == [True, False, True, False]
    assert main(["data", "check", "dpo_en_demo", "--stage", "dpo"]) == 0
    assert main(["data", "check", "kto_en_demo", "--stage", "sft"]) == 1
    assert "the sft stage cannot train on" in capsys.readouterr().out
    problems = registry.registry_problems()
    assert len(problems) == 1 and "'theirs' is written the LLaMA-Factory way" in problems[0]


def test_their_registry_as_the_studios_own_is_imported_in_place(tmp_path, monkeypatch):
    """Their data/ folder used as the studio's: every run and list works meanwhile (a
    path trains), and importing it turns their entries into the studio's in place."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    monkeypatch.setenv("PEFT_STUDIO_DATA", str(data))
    assert registry.load_info() == {} and len(registry.registry_problems()) == 12
    assert registry.dataset_problems([str(data / "identity.json")]) == []
    assert "cannot be used" in registry.dataset_problems(["identity"])[0]
    outcomes = import_llamafactory(data)
    assert [o.name for o in outcomes if o.name] == [
        "identity", "alpaca_en_demo", "glaive_toolcall_en_demo", "dpo_en_demo", "kto_en_demo",
        "wiki_demo", "c4_demo", "v1_sft_demo"]
    assert registry.resolve("identity").path == data / "identity.json"  # not copied
    assert len(registry.registry_problems()) == 4  # what it skipped, still named


def test_a_broken_registry_in_their_folder_is_one_error(tmp_path, data, capsys):
    (tmp_path / "dataset_info.json").write_text('{"identity": {"file_name": ', "utf-8")
    assert main(["data", "import", str(tmp_path)]) == 2
    assert "cannot be read as JSON" in capsys.readouterr().err


# -- data check and train ------------------------------------------------------------------
def test_data_check_lists_every_bad_row_and_train_leaves_no_failed_run(tmp_path, saves,
                                                                        capsys):
    rows = [{"instruction": "q", "output": "a"}] + [{"instruction": "q", "output": ""}] * 25
    bad = write(tmp_path / "bad.json", rows)
    assert main(["data", "check", str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [f"dataset: {bad}", "format: alpaca", "rows: 26"]
    assert out[3].startswith(f"problem: {bad}, row 2, field 'output': empty")
    assert out[23:] == ["... and 5 more problems (25 in all)",
                        "not ok: it cannot train as it is"]
    assert main(["train", "--dataset", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "row 26" not in err and "row 21" in err and not list(saves.iterdir())
    good = write(tmp_path / "good.json", rows[:1])
    assert main(["data", "check", str(good), "--stage", "sft"]) == 0


def test_the_data_tab_imports_a_folder_under_data_only(data, tmp_path):
    from webui.tabs.data import upload

    shutil.copytree(FIXTURES, data / "llamafactory")
    done = upload.import_folder("llamafactory")
    assert done.ok and done.message.startswith("8 of 12 entries registered")
    assert "- ✓ registered as kto_en_demo (kto, 4 rows)" in done.message
    assert "- ✗ skipped mllm_demo: this dataset has images" in done.message
    assert registry.resolve("kto_en_demo").format == "kto"
    for outside in (str(FIXTURES), "../", str(tmp_path)):
        refused = upload.import_folder(outside)
        assert not refused.ok and "outside" in refused.message, outside
    assert "no folder" in upload.import_folder("nope").message


def test_registering_a_format_that_drops_a_meaningful_column_is_refused(data, tmp_path):
    """Chosen by hand in the Data tab, a format that would read past the images or the
    labels is refused too; an empty such column is no data and does not count."""
    from webui.tabs.data import upload

    done = upload.register_upload(FIXTURES / "mllm_demo.json", "pics", "messages",
                                  {"messages": "messages"})
    assert not done.ok and "image fine-tuning is not supported yet" in done.message
    labelled = write(tmp_path / "l.json", [{"text": "a", "label": "spam"}])
    with pytest.raises(DataError, match="'label' .* unused .*the kto format reads them"):
        registry.register("labelled", labelled, "text")
    assert "pics" not in registry.load_info() and "labelled" not in registry.load_info()
    empty = write(tmp_path / "e.json", [{"messages": [U, A], "images": []}])
    registry.register("no_pictures", empty, "messages")
    assert registry.resolve("no_pictures").format == "messages"


def test_a_txt_file_is_one_document_per_paragraph_or_per_line_as_chosen(data, tmp_path):
    from webui.tabs.data import upload

    txt = tmp_path / "notes.txt"
    txt.write_text("first line\nsecond line\n\nthird\u2028same line\n", encoding="utf-8")
    assert upload.inspect_upload(txt).rows == 2
    seen = upload.inspect_upload(txt, "line")
    assert (seen.format, seen.rows) == ("text", 3)
    assert upload.register_upload(txt, "notes", "text", {"text": "text"}, "line").ok
    assert [e["text"] for e in load_one("notes", None)] == [
        "first line", "second line", "third\u2028same line"]
    assert registry.load_info()["notes"]["text_split"] == "line"
    assert check_dataset("notes", "pt").rows == 3


# -- folders: save_to_disk, and shards as a hub snapshot leaves them -------------------------
def test_a_saved_dataset_folder_trains_from_its_train_split(data, tmp_path, saves, capsys):
    import datasets

    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:2])}).save_to_disk(saved)
    report = check_dataset(str(saved), "sft")
    assert (report.format, report.rows, report.ok) == ("alpaca", 5, True), report.lines()
    assert load_one(str(saved), None)[4]["messages"][-1]["content"] == "a4"
    registry.register("saved", saved, "alpaca")
    assert (data / "saved").is_dir() and check_dataset("saved").rows == 5
    assert main(["data", "check", str(saved / "test")]) == 0  # one split, named


def test_a_folder_of_shards_reads_its_train_shards_in_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    snap = tmp_path / "snapshot" / "data"
    snap.mkdir(parents=True)
    for i in range(2):
        pq.write_table(pa.Table.from_pylist([{"text": f"train {i}-{j}"} for j in range(3)]),
                       snap / f"train-0000{i}-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist([{"text": "held out"}]),
                   snap / "test-00000-of-00001.parquet")
    (snap.parent / "README.md").write_text("a dataset card")
    texts = [e["text"] for e in load_one(str(snap.parent), None)]
    assert texts == [f"train {i}-{j}" for i in range(2) for j in range(3)]
    (snap / "train-extra.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match="several kinds"):
        load_one(str(snap.parent), None)


def test_import_takes_a_folder_entry_as_one_dataset(data, tmp_path):
    theirs = tmp_path / "theirs"
    (theirs / "c4").mkdir(parents=True)
    for i in range(2):
        (theirs / "c4" / f"part{i}.jsonl").write_text(f'{{"text": "doc {i}"}}\n')
    (theirs / "dataset_info.json").write_text(json.dumps(
        {"c4_parts": {"file_name": "c4", "columns": {"prompt": "text"}},
         "escape": {"file_name": "../theirs/../../etc"}}))
    lines = [o.line for o in import_llamafactory(theirs)]
    assert lines[0] == "registered as c4_parts (text, 2 rows)"
    assert lines[1].startswith("skipped escape: file_name '../theirs/../../etc' points outside")
    assert [e["text"] for e in load_one("c4_parts", None)] == ["doc 0", "doc 1"]
    assert (data / "c4_parts" / "part1.jsonl").is_file()
