"""Damaged run folders: random bytes, truncations, deletions, a folder where a file was,
JSON of the wrong shape, NUL bytes from a power cut, in each file of a finished run. Every
reader survives; a run whose events or settings are damaged is listed as `damaged` with
what is wrong and offered to no tab; the other runs, `peft-studio runs` and the app work."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from core.cli.main import main as cli
from core.jobs import runs
from core.jobs.events import EventWriter, read_events
from core.jobs.process import PROCESS
from core.jobs.runs import DAMAGED, DONE, RunInfo, list_runs, run_info, run_status
from core.methods.result import MANIFEST
from core.schema.config import RunConfig
from webui.live import monitor
from webui.live.panel import live_view
from webui.tabs.train import history

FILES = ("config.yaml", "events.jsonl", "log.txt", "process.json", f"adapter/{MANIFEST}")
SHAPES = (b"5\n", b"[]\n", b'{"type": 3}\n', b'{"type": "step", "step": "x", "loss": 1}\n',
          b'{"type": "end"}\n', b'{"type": "step"}\n', b'{"type": "step", "step": 2, '
          b'"loss": 1, "learning_rate": "fast"}\n', b'{"type": "end", "status": 7}\n')
# Events that are whole but leave out what readers usually find (no loss, no counts).
ODD = (b'{"type": "step", "step": 3}\n', b'{"type": "start"}\n', b'{"type": "eval", "step": 1, '
       b'"eval_loss": 2.0}\n', b'{"type": "saving"}\n')


def finished_run(saves: Path, name: str) -> Path:
    run_dir = saves / name
    run_dir.mkdir()
    RunConfig(model="embedded", dataset=["identity"], run_name=name).save(run_dir / "config.yaml")
    (run_dir / PROCESS).write_text(json.dumps({"pid": 0, "create_time": 0}))
    events = EventWriter(run_dir)
    events.emit("start", total_steps=2, method="lora", device="cpu", precision="fp32",
                trainable_params=10, total_params=1000, train_samples=5)
    for step, loss in ((1, 2.0), (2, 1.5)):
        events.emit("step", step=step, total_steps=2, loss=loss, learning_rate=1e-4,
                    tokens_per_second=100.0, epoch=step / 10, elapsed=step, eta=2 - step)
    (run_dir / "adapter").mkdir()
    (run_dir / "adapter" / MANIFEST).write_text(json.dumps({"method": "lora",
                                                            "model": "embedded"}))
    events.emit("end", status="done", final_loss=1.5, output_dir=str(run_dir / "adapter"),
                error=None)
    (run_dir / "log.txt").write_text("loading\nstep 2\n")
    return run_dir


def damage(path: Path, how: str, rng: random.Random) -> None:
    data = path.read_bytes()
    noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if how == "append":
        path.write_bytes(data + noise + b"\n")
    elif how == "append-nul":  # a power cut leaves zeros where the last write was
        path.write_bytes(data + b"\0" * 64)
    elif how == "middle":
        cut = rng.randrange(len(data) + 1)
        path.write_bytes(data[:cut] + noise + b"\n" + data[cut:])
    elif how == "replace":
        path.write_bytes(noise)
    elif how == "truncate":
        path.write_bytes(data[: rng.randrange(len(data) + 1)])
    elif how == "delete":
        path.unlink()
    elif how == "folder":
        path.unlink()
        path.mkdir()
    elif how.startswith("shape"):
        path.write_bytes(data + SHAPES[int(how[5:])])
    elif how.startswith("odd"):
        path.write_bytes(data + ODD[int(how[3:])])


HOWS = ("append", "append-nul", "middle", "replace", "truncate", "delete", "folder",
        *(f"shape{i}" for i in range(len(SHAPES))), *(f"odd{i}" for i in range(len(ODD))))


def readers_survive(saves: Path, victim: Path, healthy: Path) -> RunInfo:
    listed = {r.name: r for r in list_runs(saves)}
    assert listed[healthy.name].status == DONE
    assert healthy in runs.finished_runs(saves)
    info = listed[victim.name]
    if info.status == DAMAGED:
        assert info.error and victim not in runs.finished_runs(saves)
        assert runs.run_output(victim) is None  # Chat, Evaluate and Export ask this
    watch, _ = monitor.poll(monitor.attach(victim))
    assert isinstance(monitor.progress(watch), str) and isinstance(monitor.stats(watch), str)
    assert live_view({"run": victim.name, "known": "", "lang": "en"}) is not None
    history.curves([victim.name, healthy.name])
    history.rewards([victim.name])
    history.table()
    return info


@pytest.mark.parametrize("file", FILES)
def test_every_reader_survives_a_damaged_file(saves, file, capsys):
    rng = random.Random(file)
    healthy = finished_run(saves, "healthy")
    for how in HOWS:
        victim = finished_run(saves, f"victim-{how}")
        damage(victim / file, how, rng)
        info = readers_survive(saves, victim, healthy)
        if file == "events.jsonl" and how in ("append", "middle", "folder") \
                or file == "events.jsonl" and how.startswith("shape"):
            assert info.status == DAMAGED and "events.jsonl" in info.error, how
        if file == "config.yaml" and how in ("replace", "folder"):
            assert info.status == DAMAGED and "config.yaml" in info.error, how
        shutil.rmtree(victim)
    victim = finished_run(saves, "victim")
    damage(victim / file, "append" if file != "config.yaml" else "replace", rng)
    assert cli(["runs"]) == 0
    out = capsys.readouterr().out
    assert "healthy" in out and "victim" in out
    if run_info(victim).status == DAMAGED:
        assert "damaged" in out and "the other runs are unaffected" in out
        assert any(s.startswith("damaged: ") for s in history.table()["status"])


def test_a_damaged_line_is_skipped_and_the_rest_is_read(tmp_path):
    run_dir = finished_run(tmp_path, "r")
    with open(run_dir / "events.jsonl", "ab") as f:
        f.write(b"\xff\xfe\x00 not an event\n")
    EventWriter(run_dir).emit("eval", step=2, eval_loss=1.7)
    events, _ = read_events(run_dir)
    assert [e["type"] for e in events] == ["start", "step", "step", "end", "eval"]
    status, end = run_status(run_dir)
    assert status == DAMAGED
    assert end["error"] == "events.jsonl: 1 line(s) are not events (a damaged file)"


def test_the_app_starts_beside_damaged_runs(saves):
    from webui.app import build_app

    rng = random.Random(0)
    finished_run(saves, "healthy")
    for i, (file, how) in enumerate((f, h) for f in FILES for h in ("replace", "folder")):
        damage(finished_run(saves, f"victim-{i}") / file, how, rng)
    build_app()


@pytest.mark.parametrize("name", ["", ".", "..", "../saves", "/etc", "a/b", "x" * 300,
                                  "nul\0byte", None, 5])
def test_a_run_name_from_a_page_never_leaves_saves(saves, name):
    from webui import guard

    (saves.parent / "config.yaml").write_text("method: lora\n")  # a run-like folder above
    assert runs.run_in_saves(name) is None
    with pytest.raises(ValueError, match="no longer exists; refresh the list"):
        guard.existing_run(name)
    view = live_view({"run": name, "known": "", "lang": "en"})
    assert view["stamp"].startswith("idle")


def test_a_run_in_saves_is_found_by_name_or_by_its_path(saves):
    run = finished_run(saves, "mine")
    assert runs.run_in_saves("mine") == run == runs.run_in_saves(str(run))
