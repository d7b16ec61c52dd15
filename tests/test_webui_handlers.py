"""The web UI's handlers, called directly (no browser): uploads, settings round trips,
start/abort of a real run, the run monitor, history, presets, and the light start-up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

from core.data.formats import DataError
from core.jobs import runner
from core.jobs.events import EventWriter
from core.jobs.process import PROCESS
from core.jobs.runs import ABORTED, DONE, FAILED, list_runs
from core.schema.config import SETTINGS, ConfigError, RunConfig
from webui.live import monitor
from webui.tabs.data import upload
from webui.tabs.data import view as dataview
from webui.tabs.train import handlers as training
from webui.tabs.train import history
from webui.widgets import SettingsForm, config_values, from_config, make, to_config

ROOT = Path(__file__).resolve().parent.parent


def widget_values(**changes) -> dict:
    """What the Train tab's widgets hold before the user touches them, plus changes."""
    values = {n: (list(s.default) if isinstance(s.default, list) else s.default)
              for n, s in SETTINGS.items()}
    return {**values, **changes}


# -- start-up --------------------------------------------------------------------------------
def test_ui_process_does_not_import_torch():
    code = ("import sys, webui.app; webui.app.build_app(); "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_setting_has_a_widget_and_method_visibility():
    with gr.Blocks():
        from webui.i18n import I18n

        i18n = I18n()
        form = SettingsForm()
        for s in SETTINGS.values():
            form.add(s.name, make(s, i18n))
        form.add_box(gr.Group(), ["lora_rank", "lora_alpha"])
    assert form.missing() == []
    shown = dict(zip(form.names, form.visibility("prefix"), strict=False))
    assert shown["num_virtual_tokens"]["visible"] and shown["learning_rate"]["visible"]
    assert not shown["lora_rank"]["visible"] and not shown["quantization"]["visible"]
    assert form.visibility("prefix")[-1]["visible"] is False  # the LoRA box
    assert form.visibility("lora")[-1]["visible"] is True
    # Stage settings show only for their stage: DPO's beta is hidden in an SFT run.
    sft = dict(zip(form.names, form.visibility("lora", "sft"), strict=False))
    dpo = dict(zip(form.names, form.visibility("lora", "dpo"), strict=False))
    assert not sft["pref_beta"]["visible"] and dpo["pref_beta"]["visible"]
    assert not dpo["orpo_lambda"]["visible"] and dpo["learning_rate"]["visible"]
    assert len(i18n.updates("zh")) == len(i18n.components)


def test_language_switch_updates_each_kind_of_component():
    from webui.i18n import I18n

    with gr.Blocks():
        i18n = I18n()
        button = i18n.add(gr.Button("Load"), "Load", "加载")
        upload_button = i18n.add(gr.UploadButton("Load a file"), "Load a file", "加载文件")
        box = i18n.add(gr.Number(label="Rank"), "Rank", "秩", "help", "帮助")
        i18n.on_switch(gr.Markdown(), lambda lang: gr.update(value=lang))
    updates = dict(zip(map(id, i18n.components), i18n.updates("zh"), strict=True))
    assert updates[id(button)]["value"] == "加载"
    assert updates[id(upload_button)]["label"] == "加载文件"  # its value is a file
    assert "value" not in updates[id(upload_button)]
    assert (updates[id(box)]["label"], updates[id(box)]["info"]) == ("秩", "帮助")
    assert i18n.updates("zh")[-1]["value"] == "zh"


def test_setting_widgets_switch_label_and_help_to_chinese():
    from core.schema.config import SETTINGS
    from webui.i18n import I18n
    from webui.widgets import make

    with gr.Blocks():
        i18n = I18n()
        rank = make(SETTINGS["lora_rank"], i18n)
    update = dict(zip(map(id, i18n.components), i18n.updates("zh"), strict=True))[id(rank)]
    assert (update["label"], update["info"]) == ("LoRA 秩", SETTINGS["lora_rank"].help_zh)
    back = dict(zip(map(id, i18n.components), i18n.updates("en"), strict=True))[id(rank)]
    assert back["info"] == SETTINGS["lora_rank"].help


def test_model_status_resolves_without_loading(tiny_model_dir):
    from webui.topbar import describe_model, method_help

    assert "SmolLM2" in describe_model("embedded") and "SmolLM2" in describe_model(None)
    assert "Local folder" in describe_model(str(tiny_model_dir))
    assert "2 layers" in describe_model(str(tiny_model_dir))
    assert "Hub id" in describe_model("Qwen/Qwen2.5-0.5B-Instruct")
    assert describe_model("/no/such/model").startswith("✗")
    assert method_help("lora").startswith("**LoRA (")
    assert method_help("lora", "zh").startswith("**LoRA（")


# -- settings: widgets -> RunConfig -> YAML -> widgets --------------------------------------
@pytest.mark.parametrize("method", ["lora", "prefix", "full"])
def test_settings_round_trip(method):
    changes = dict(method=method, learning_rate=5e-5, max_steps=30, cutoff_len=128,
                   dataset=["identity", "sentiment"], run_name="trip", packing=True)
    if method == "lora":
        changes.update(lora_rank=16, lora_target=["q_proj", "v_proj"], use_dora=True)
    if method == "prefix":
        changes.update(num_virtual_tokens=12)
    # Another method's settings left changed in their hidden widgets do not leak in.
    values = widget_values(**changes, adapter_size=99 if method != "adapter" else 64)
    cfg = to_config(values)
    again = RunConfig.from_yaml(cfg.to_yaml())
    assert again == cfg
    restored = from_config(again)
    assert restored == {k: v for k, v in config_values(values).items()}
    assert "adapter_size" not in restored
    for name, value in changes.items():
        assert restored[name] == value


def test_cleared_number_means_default_and_problems_are_all_listed(saves):
    cfg = to_config(widget_values(max_samples=None, model=""))
    assert cfg.max_samples == 0 and cfg.model == "embedded"
    started = training.start(widget_values(cutoff_len=2, learning_rate=-1.0, dataset=[]))
    assert started.run_dir is None
    assert "cutoff_len" in started.message and "learning_rate" in started.message
    assert "2 problem(s)" in started.message
    assert list(saves.iterdir()) == []  # nothing started


def test_yaml_file_and_presets(saves, tmp_path):
    values = widget_values(method="ia3", max_steps=7)
    path = training.save_yaml(values)
    assert training.load_yaml(path)["max_steps"] == 7
    training.save_preset("short", values)
    assert training.list_presets() == ["short"]
    assert training.load_preset("short")["method"] == "ia3"
    assert list_runs(saves) == []  # presets/ is not mistaken for a run
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_rankk: 8\nlearning_rate: lots\n")
    with pytest.raises(ConfigError) as err:
        training.load_yaml(bad)
    assert len(err.value.problems) == 2
    with pytest.raises(ConfigError):
        training.save_preset("../escape", values)


# -- uploads ---------------------------------------------------------------------------------
def test_good_upload_is_registered(data, tmp_path):
    src = tmp_path / "qa.csv"
    src.write_text("question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n")
    found = upload.inspect_upload(src)
    assert (found.format, found.confident, found.rows) == ("alpaca", False, 2)
    assert found.mapping["instruction"] == "question" and found.name == "qa"
    mapping = upload.default_mapping(found.format, found.columns, found.mapping)
    result = upload.register_upload(src, "qa", "alpaca", mapping)
    assert result.ok, result.message
    info = json.loads((data / "dataset_info.json").read_text())
    assert info["qa"]["columns"] == {"instruction": "question", "output": "answer"}
    assert (data / "qa.csv").is_file()
    assert "qa" in dataview.names()
    page = dataview.page("qa", 1)
    assert page.total == 2 and list(page.rows.columns) == ["#", "question", "answer"]
    # A second upload under the same name is refused.
    assert not upload.register_upload(src, "qa", "alpaca", mapping).ok


def test_bad_upload_lists_rows_and_registers_nothing(data, tmp_path):
    before = (data / "dataset_info.json").read_text()
    files_before = sorted(p.name for p in data.iterdir())
    src = tmp_path / "bad.jsonl"
    rows = [{"instruction": "Say hi", "output": "hi"}, {"instruction": "", "output": "x"},
            {"instruction": "Say bye", "output": "bye"}, {"instruction": "Q", "output": ""}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = upload.register_upload(src, "bad", "alpaca",
                                    {"instruction": "instruction", "output": "output"})
    assert not result.ok and "2 bad row(s)" in result.message
    assert result.problems["row"].tolist() == [2, 4]
    assert result.problems["field"].tolist() == ["instruction", "output"]
    assert all("empty" in r for r in result.problems["reason"])
    assert (data / "dataset_info.json").read_text() == before
    assert sorted(p.name for p in data.iterdir()) == files_before


def test_upload_needs_required_roles_and_a_good_name(data, tmp_path):
    src = tmp_path / "x.json"
    src.write_text(json.dumps([{"a": "q", "b": "r"}]))
    assert upload.inspect_upload(src).format is None
    assert "instruction" in upload.register_upload(src, "x", "alpaca", {}).message
    assert "Bad dataset name" in upload.register_upload(src, "no/slash", "alpaca", {}).message
    wrong = tmp_path / "x.xml"  # .txt is a dataset now (one document per paragraph)
    wrong.write_text("<hello/>")
    with pytest.raises(DataError):
        upload.inspect_upload(wrong)


# -- the run monitor and history, from files -----------------------------------------------
def fake_run(saves: Path, name: str, losses: list[float], end: dict | None = None) -> Path:
    run_dir = saves / name
    run_dir.mkdir()
    RunConfig(model="embedded", dataset=["identity"], run_name=name).save(run_dir / "config.yaml")
    (run_dir / PROCESS).write_text(json.dumps({"pid": 0, "start_time": -1}))
    events = EventWriter(run_dir)
    events.emit("start", total_steps=len(losses), method="lora", device="cpu",
                precision="fp32", trainable_params=10, total_params=1000, train_samples=5)
    for i, loss in enumerate(losses, 1):
        events.emit("step", step=i, total_steps=len(losses), loss=loss, learning_rate=1e-4,
                    tokens_per_second=100.0, epoch=i / 10, elapsed=i, eta=len(losses) - i)
    if end is not None:
        events.emit("end", **end)
    (run_dir / "log.txt").write_text("loading\nTraceback: boom\n")
    return run_dir


def test_monitor_reads_only_what_is_new(saves):
    run_dir = fake_run(saves, "a", [2.0, 1.5])
    watch, changes = monitor.poll(monitor.Watch(run=str(run_dir)))
    assert changes.events and len(watch.events) == 3
    watch, changes = monitor.poll(watch)
    assert not changes.events and not changes.log
    EventWriter(run_dir).emit("eval", step=2, eval_loss=1.7)
    EventWriter(run_dir).emit("end", status="done", final_loss=1.5, output_dir="x",
                              error=None)
    watch, changes = monitor.poll(watch)
    assert changes.events and changes.status and watch.status == DONE
    assert "eval loss **1.7000**" in monitor.stats(watch)
    assert "Done" in monitor.stats(watch)
    assert "step 2 / 2" in monitor.progress(watch)


def test_failed_run_shows_its_error_and_log(saves):
    run_dir = fake_run(saves, "broken", [3.0], {"status": "failed", "final_loss": None,
                                                 "error": "CUDA out of memory"})
    watch = monitor.attach(run_dir)
    assert watch.status == FAILED and not watch.live
    assert "Failed:** CUDA out of memory" in monitor.stats(watch)
    assert "Traceback: boom" in monitor.log_tail(watch)
    assert "ps-failed" in monitor.progress(watch)


def test_history_shows_failed_runs_with_error_and_log(saves):
    fake_run(saves, "good", [2.0, 1.0], {"status": "done", "final_loss": 1.0, "error": None})
    fake_run(saves, "bad", [3.0], {"status": "failed", "error": "out of memory",
                                    "final_loss": None})
    table = history.table()
    assert set(table["run"]) == {"good", "bad"}
    assert dict(zip(table["run"], table["status"], strict=True)) == {"good": "done",
                                                                     "bad": "failed"}
    losses, rates, details = history.curves(["good", "bad"])
    assert set(losses["series"]) == {"good", "bad"}
    assert len(rates) == 2  # the first run's learning rate
    assert "out of memory" in details and "Traceback: boom" in details
    assert history.curves(["../etc"])[0].empty


# -- a real run: start, watch, abort --------------------------------------------------------
def test_start_and_abort_a_real_run(tiny_model_dir, saves):
    values = widget_values(model=str(tiny_model_dir), max_steps=500, logging_steps=1,
                           batch_size=2, gradient_accumulation_steps=1, cutoff_len=64)
    started = training.start(values)
    assert started.run_dir is not None, started.message
    busy = training.start(values)  # one run at a time
    assert busy.run_dir is None and "still training" in busy.message
    watch = monitor.Watch(run=str(started.run_dir))
    deadline = time.time() + 180
    while time.time() < deadline:
        watch, _ = monitor.poll(watch)
        if any(e["type"] == "step" for e in watch.events) or not watch.live:
            break
        time.sleep(0.3)
    assert watch.live, monitor.log_tail(watch)
    t0 = time.time()
    message = training.abort(watch.run)
    assert time.time() - t0 < 1.0  # the UI thread does not wait for the trainer
    assert "Stopping" in message
    assert runner.wait(started.run_dir, timeout=120) == ABORTED
    watch, _ = monitor.poll(watch)
    assert watch.status == ABORTED and "Aborted" in monitor.stats(watch)
    assert training.abort(watch.run) == "No run is training."


def test_parameter_count_and_model_view_use_the_probe(tiny_model_dir, data):
    result = training.count_parameters(widget_values(model=str(tiny_model_dir), lora_rank=4))
    assert 0 < result["trainable"] < result["total"]
    assert "q_proj" in result["targets"] and "lm_head" not in result["targets"]
    view = dataview.model_view(str(tiny_model_dir), "identity", 2, 1024, False)
    labels = {label for _, label in view.segments}
    assert labels == {dataview.TRAINED, dataview.MASKED}
    trained = "".join(t for t, label in view.segments if label == dataview.TRAINED)
    assert "Studio Assistant" in trained and "<|im_start|>user" not in trained
    assert view.count == 52 and "0** cut" in view.summary
    short = dataview.model_view(str(tiny_model_dir), "identity", 2, 40, False)
    assert "**0** cut" not in short.summary and short.figure is not None




def test_uploads_do_not_stay_in_the_cache():
    """Gradio deletes cached uploads on this schedule; a page sending files cannot fill the
    disk with them (each is also capped by the upload limit)."""
    from webui.app import DELETE_UPLOADS, build_app

    assert build_app().delete_cache == DELETE_UPLOADS
    assert DELETE_UPLOADS[1] <= 24 * 3600
