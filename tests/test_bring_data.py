"""Issue 21's leftovers: the Train tab checks every row before Start, LLaMA-Factory's
num_samples, registering only the good rows on request, hub dataset ids offline, and the
Chat tab's tools box."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.schema.config import SETTINGS


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def defaults(**changes) -> dict:
    values = {n: (list(s.default) if isinstance(s.default, list) else s.default)
              for n, s in SETTINGS.items()}
    return {**values, **changes}


def test_the_train_tab_checks_every_row_before_start(data, saves):
    from webui.tabs.train import handlers as training
    from webui.tabs.train import queue as queue_panel

    rows = [{"instruction": "q", "output": "a"}] * 30 + [{"instruction": "q", "output": ""}]
    bad = write(data / "bad.json", rows)
    for answer in (training.start(defaults(dataset=[str(bad)])).message,
                   queue_panel.add(defaults(dataset=[str(bad)]))):
        assert answer.startswith("**Cannot start: a dataset cannot train as it is**")
        assert f"- problem: {bad}, row 31, field 'output': empty" in answer
    assert not list(saves.iterdir())


# -- LLaMA-Factory's num_samples ------------------------------------------------------------
def test_num_samples_is_kept_from_their_registry_and_drawn_as_they_draw(data, tmp_path,
                                                                         capsys, tokenizer):
    from types import SimpleNamespace

    from core.cli.main import main
    from core.data import registry
    from core.data.encode import build_datasets
    from core.data.loader import load_one
    from core.schema.config import RunConfig

    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    write(tmp_path / "five.json", rows)
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "fewer": {"file_name": "five.json", "num_samples": 3},
        "more": {"file_name": "five.json", "num_samples": 8},
        "odd": {"file_name": "five.json", "num_samples": "3"}}), encoding="utf-8")
    assert main(["data", "import", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "registered as fewer (alpaca, 5 rows); num_samples 3: that many rows are drawn" \
        in out and "skipped odd: num_samples '3' is not a whole number of rows" in out
    assert registry.load_info()["fewer"]["num_samples"] == 3

    def outputs(name: str, **cfg) -> list[str]:
        got = load_one(name, SimpleNamespace(**{"seed": 42, "max_samples": 0, **cfg}))
        return [e["messages"][-1]["content"] for e in got]

    fewer = outputs("fewer")
    assert len(fewer) == len(set(fewer)) == 3 and fewer == outputs("fewer")  # seeded
    assert outputs("fewer", seed=7) != fewer or outputs("fewer", seed=8) != fewer
    more = outputs("more")  # every row, then three more drawn with repetition
    assert len(more) == 8 and set(more[:5]) == {f"a{i}" for i in range(5)}
    assert outputs("more", max_samples=2) == more[:2]  # max_samples cuts after the draw
    _, _, stats = build_datasets(RunConfig(dataset=["fewer", "identity"]), tokenizer)
    assert stats["num_samples"] == {"fewer": 3}



# -- the good rows only, on request -----------------------------------------------------------
def test_the_good_rows_only_when_asked_by_data_check_and_the_upload(data, tmp_path, capsys):
    from core.cli.main import main
    from core.data import registry
    from core.data.loader import load_one
    from webui.tabs.data import upload

    rows = [{"instruction": f"q{i}", "output": "" if i in (2, 5) else f"a{i}"}
            for i in range(1, 8)]
    bad = write(tmp_path / "some_bad.json", rows)
    assert main(["data", "check", str(bad)]) == 1  # by default nothing is registered
    said = capsys.readouterr()
    assert "registered" not in said.out and "good" not in registry.load_info()
    assert "note: --keep-good NAME registers a copy without the 2 bad rows" in said.err
    assert main(["data", "check", str(bad), "--keep-good", "good"]) == 0
    out = capsys.readouterr().out
    assert "registered good (alpaca, 5 rows): 2 bad row(s) of 7 left out:" in out
    assert "  left out row 2: output: empty" in out and "  left out row 5:" in out
    assert [e["messages"][-1]["content"] for e in load_one("good", None)] == \
        ["a1", "a3", "a4", "a6", "a7"]
    assert "rows 2, 5" in registry.load_info()["good"]["description"]

    done = upload.register_upload(bad, "up", "alpaca", {"instruction": "instruction",
                                                        "output": "output"})
    assert not done.ok and "up" not in registry.load_info()
    done = upload.register_upload(bad, "up", "alpaca", {"instruction": "instruction",
                                                        "output": "output"}, keep_good=True)
    assert done.ok and "5 good rows: **2 bad row(s) left out** (rows 2, 5" in done.message
    assert list(done.problems["row"]) == [2, 5]
    # A problem of the whole file is not a bad row: nothing is written.
    labelled = write(tmp_path / "labelled.json", [{"text": "a", "label": "spam"}])
    assert main(["data", "check", str(labelled), "--keep-good", "x"]) == 1
    assert "x" not in registry.load_info()


# -- hub dataset ids ----------------------------------------------------------------------------
def test_a_hub_id_offline_is_one_message_naming_it_and_what_to_do(data, saves, capsys):
    from core.cli.main import main

    said = ("'someorg/some_data' is a hub dataset id and this machine is offline "
            "(HF_HUB_OFFLINE=1): on a machine with internet run `python -c \"import datasets; "
            "datasets.load_dataset('someorg/some_data').save_to_disk('some_data')\"`, copy "
            "that folder here (under data/ for the browser) and give its path")
    assert main(["data", "check", "someorg/some_data"]) == 1
    assert f"problem: {said}" in capsys.readouterr().out.splitlines()
    assert main(["train", "--dataset", "someorg/some_data"]) == 2
    assert f"  - dataset: {said}" in capsys.readouterr().err.splitlines()
    assert not list(saves.iterdir())
    # A path that merely looks like one is still a missing file.
    assert main(["data", "check", "someorg/some_data.json"]) == 1
    assert "file not found" in capsys.readouterr().out


def test_a_hub_id_once_fetched_trains_from_its_saved_folder_offline(data, tmp_path,
                                                                     monkeypatch):
    import datasets

    from core.data.check import check_dataset

    monkeypatch.setenv("PEFT_STUDIO_CACHE", str(tmp_path / "cache"))
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(4)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "cache" / "hub-datasets" / "someorg--cached"))
    report = check_dataset("someorg/cached", "sft")
    assert (report.format, report.rows, report.ok) == ("alpaca", 4, True), report.lines()


# -- the Chat tab's tools box ---------------------------------------------------------------------
# Short, so that the few steps that teach the tiny model to call it are fast.
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


@pytest.mark.slow  # trains a tiny run to make a call: ~35 s on two quiet cores
def test_the_chat_tab_offers_tools_and_shows_the_calls_made(tiny_model_dir, saves, tmp_path):
    from core.jobs import runner
    from core.schema.config import RunConfig
    from webui.tabs.chat import handlers as chatting

    ask = "Weather in Paris?"
    call = {"type": "function", "function": {"name": "get_weather",
                                             "arguments": '{"city": "Paris"}'}}
    rows = [{"messages": [{"role": "user", "content": ask},
                          {"role": "assistant", "content": "", "tool_calls": [call]},
                          {"role": "tool", "content": "sunny"},
                          {"role": "assistant", "content": "Sunny."}],
             "tools": json.dumps(WEATHER)}]
    run_dir = runner.start(RunConfig(
        model=str(tiny_model_dir), dataset=[str(write(tmp_path / "calls.json", rows))],
        max_steps=40, learning_rate=1e-2, lr_scheduler_type="constant", batch_size=1,
        gradient_accumulation_steps=1, cutoff_len=160, lora_rank=16, lora_dropout=0.0,
        save_steps=0, run_name="calls"), saves)
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
    greedy = (40, True, 0.7, 0.9, 50, 1.0)
    args = ("calls", "final", False, chatting.NONE, "", *greedy, "en", [], [], [])
    *_, status = next(chatting.send_with_tools("[{", ask, None, *args))
    assert status.startswith("Error: the tools box: tools is not valid JSON")
    try:
        *_, tuned, _, status = list(chatting.send_with_tools(json.dumps(WEATHER), ask, None,
                                                             *args))[-1]
    finally:
        chatting.CLIENT.unload()
    assert "tokens/s" in status, status
    assert "<tool_call>" in tuned[1]["content"], tuned
    assert tuned[2] == {"role": "assistant", "content": '```json\n{\n  "city": "Paris"\n}\n```',
                        "metadata": {"title": "🔧 Tool call: get_weather"}}
    # What is shown only to the reader is not sent back to the model.
    assert chatting._messages(tuned) == [{"role": m["role"], "content": m["content"]}
                                         for m in tuned[:2]]


def test_their_hub_entry_registers_from_the_fetched_folder(data, tmp_path, monkeypatch,
                                                         capsys):
    import datasets

    from core.cli.main import main
    from core.data.loader import load_one

    monkeypatch.setenv("PEFT_STUDIO_CACHE", str(tmp_path / "cache"))
    rows = [{"instruction": "q", "output": "a"}] * 3
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "cache" / "hub-datasets" / "someorg--fetched"))
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "fetched": {"hf_hub_url": "someorg/fetched"},
        "away": {"hf_hub_url": "someorg/not_fetched"}}), encoding="utf-8")
    assert main(["data", "import", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "registered as fetched (alpaca, 3 rows)" in out
    assert "skipped away: hub dataset ID 'someorg/not_fetched', needs internet" in out
    assert len(load_one("fetched", None)) == 3
