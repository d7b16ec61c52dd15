"""The run queue and sweeps, driven as a user would: the Train tab's handlers and the CLI.

One 2x2 sweep is queued from a UI process that then quits; the CLI moves and cancels
entries while the device is taken; a fresh UI (this process, which never held any of it)
follows the queue to its end and gets the whole table, the best row marked, and its
settings back. Runs are the tiny model's, one step each."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.cli.main import main as cli
from core.experiments import sweep
from core.jobs import queue, runner
from core.jobs.device import hold_device
from core.jobs.events import read_events
from core.jobs.process import PROCESS
from core.jobs.runs import ABORTED, CONFIG, DONE, list_runs, run_status
from core.paths import ROOT, child_env
from core.schema.config import SETTINGS, ConfigError, RunConfig

FAST = dict(dataset=["identity"], max_steps=1, batch_size=2, cutoff_len=64,
            gradient_accumulation_steps=1, logging_steps=1, save_steps=0)

# A UI process: the Sweep panel's Start, then it exits (the worker and the sweep's job are
# not its children to keep).
UI_QUEUES_A_SWEEP = """
import json, sys
from pathlib import Path
from webui import guard
from webui.tabs.train import sweep as panel
from core.schema.config import SETTINGS
guard.POLICY.models_dirs = (*guard.POLICY.models_dirs, Path(sys.argv[2]))
values = {n: s.default for n, s in SETTINGS.items()}
values.update(json.loads(sys.argv[1]))
message, job = panel.start(values, "learning_rate = 1e-3, 3e-3\\nlora_rank = 2, 4", "grid",
                           "", 5)
print(json.dumps({"message": message, "job": job}))
"""


def wait_until(check, timeout=240.0, what=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_sweep_queued_cancelled_and_followed_after_a_ui_restart(tiny_model_dir, saves,
                                                                 capsys):
    from webui.tabs.train import queue as queue_panel
    from webui.tabs.train import sweep as sweep_panel

    # Something holds the device (a run started by hand): the queue waits for it.
    device = hold_device("a hand-started job")
    settings = {"model": str(tiny_model_dir), **FAST}
    ui = subprocess.run([sys.executable, "-c", UI_QUEUES_A_SWEEP, json.dumps(settings),
                         str(tiny_model_dir.parent)], cwd=ROOT, env=child_env(),
                        capture_output=True, text=True, timeout=120)
    assert ui.returncode == 0, ui.stderr
    answer = json.loads(ui.stdout.strip().splitlines()[-1])
    assert answer["job"], answer["message"]
    job = Path(answer["job"])
    assert "4 runs" in answer["message"]

    ids = [e["id"] for e in queue.entries()]
    assert len(ids) == 4
    wait_until(lambda: queue.entries()[0].get("waiting"), 30, "the worker to wait")
    assert cli(["queue", "list"]) == 0
    listing = capsys.readouterr().out
    assert "a hand-started job is using the device" in listing
    assert "learning_rate=0.001, lora_rank=2" in listing
    # The last queued goes first among the waiting; the one after the running is cancelled.
    assert cli(["queue", "move", str(ids[3]), "--to", "1"]) == 0
    assert cli(["queue", "cancel", str(ids[1])]) == 0
    assert [e["id"] for e in queue.entries()] == [ids[0], ids[3], ids[1], ids[2]]
    assert cli(["queue", "move", str(ids[1]), "--to", "1"]) == 1
    assert "only a waiting entry can move" in capsys.readouterr().err
    assert cli(["queue", "cancel", "99"]) == 1
    assert "no queue entry 99" in capsys.readouterr().err

    device.close()  # the hand-started job ends; the queue goes on
    # This process is the UI opened again: it never held anything of the queue.
    wait_until(lambda: sum(e["status"] == DONE for e in queue.entries()) >= 1,
               what="the first run")
    assert sweep_panel.latest() == str(job)
    line, frame = sweep_panel.view(str(job))
    assert "running" in line and len(frame) == 4

    assert runner.wait(job, timeout=400) == DONE, (job / "log.txt").read_text()
    table = sweep.rows(job)
    assert [(r["learning_rate"], r["lora_rank"]) for r in table] == [
        (1e-3, 2), (1e-3, 4), (3e-3, 2), (3e-3, 4)]
    assert [r["status"] for r in table] == ["done", "cancelled", "done", "done"]
    ran = [r for r in table if r["status"] == "done"]
    # The runs ran in the queue's order, after the reordering.
    started = [json.loads((saves / r["run"] / PROCESS).read_text())["started"]
               for r in ran]
    assert started[0] < started[2] < started[1]
    for r in ran:
        assert r["final_loss"] is not None and r["peak_memory_mb"] > 0 and r["seconds"] > 0
        cfg = RunConfig.load(saves / r["run"] / CONFIG)
        assert (cfg.learning_rate, cfg.lora_rank) == (r["learning_rate"], r["lora_rank"])
    best = [r for r in table if r["best"]]
    assert len(best) == 1 and best[0]["final_loss"] == min(r["final_loss"] for r in ran)
    assert table[1]["run"] is None and not (saves / f"{job.name}-0.001-4").exists()

    line, frame = sweep_panel.view(str(job))
    assert "done" in line and "best by final loss" in line
    assert list(frame["Status"]) == ["done", "cancelled", "done", "done"]
    values, message = sweep_panel.use_settings(str(job), None)
    assert values["learning_rate"] == best[0]["learning_rate"]
    assert values["lora_rank"] == best[0]["lora_rank"] and values["run_name"] == ""
    shown = queue_panel.table()
    assert list(shown["Id"]) == [ids[0], ids[3], ids[1], ids[2]]
    assert list(shown["Status"]) == ["done", "done", "cancelled", "done"]
    wait_until(lambda: not queue.worker_alive(), 30, "the worker to exit")


def test_a_running_entry_cancelled_stops_its_run(tiny_model_dir, saves, capsys):
    from webui.tabs.train import queue as queue_panel

    values = {n: s.default for n, s in SETTINGS.items()}
    values.update(model=str(tiny_model_dir), **{**FAST, "max_steps": 5000})
    message = queue_panel.add(values)
    assert "Queued as entry **1**" in message, message
    assert cli(["train", "--model", str(tiny_model_dir), "--dataset", "identity",
                "--max-steps", "1", "--queue"]) == 0
    assert "queued: entry 2 (1 ahead of it)" in capsys.readouterr().out
    run = wait_until(lambda: queue.entries()[0].get("run"), 60, "the first run to start")
    wait_until(lambda: any(e["type"] == "step" for e in read_events(saves / run)[0]), 120,
               "its first step")
    assert queue_panel.cancel(2) == "Entry 2 cancelled."
    assert queue_panel.cancel(1).startswith("Entry 1: its run stops")
    wait_until(lambda: not queue.pending(), 120, "the queue to empty")
    assert [e["status"] for e in queue.entries()] == [queue.CANCELLED, queue.CANCELLED]
    assert run_status(saves / run)[0] == ABORTED
    assert [r.name for r in list_runs()] == [run]  # entry 2 never ran
    assert queue_panel.cancel(1).startswith("✗ queue entry 1 already ended")
    wait_until(lambda: not queue.worker_alive(), 30, "the worker to exit")


def test_bad_sweeps_are_refused_with_every_problem(saves):
    with pytest.raises(ConfigError) as caught:
        sweep.start(sweep.SweepSpec(axes={"learning_rat": ["1e-4"], "lora_rank": ["4", "x"],
                                          "dataset": ["a"]}))
    text = str(caught.value)
    assert "learning_rat: unknown setting" in text
    assert "lora_rank=x: expected int" in text and "dataset: cannot be swept" in text
    with pytest.raises(ConfigError, match="same number of values"):
        sweep.start(sweep.SweepSpec(axes={"learning_rate": [1e-4, 2e-4], "lora_rank": [4]},
                                    mode=sweep.LIST))
    with pytest.raises(ConfigError, match="batch_size=0: must be at least 1"):
        sweep.start(sweep.SweepSpec(axes={"batch_size": [0, 2]}))
    assert not sweep.sweeps_dir().exists() or not any(sweep.sweeps_dir().iterdir())
    assert queue.entries() == []
    # A method axis drops the other methods' settings: lora_rank x [lora, ia3] trains IA3 once.
    runs = sweep.SweepSpec(axes={"lora_rank": [4, 8], "method": ["lora", "ia3"]}).configs("s")
    assert [(v, c.method) for v, c in runs] == [
        ({"lora_rank": 4, "method": "lora"}, "lora"), ({"method": "ia3"}, "ia3"),
        ({"lora_rank": 8, "method": "lora"}, "lora")]
    assert [c.run_name for _, c in runs] == ["s-4-lora", "s-ia3", "s-8-lora"]


@pytest.mark.parametrize("damage", [b"{\"entries\": [", b"[1, 2]", b"\xff\xfe"])
def test_a_damaged_queue_is_refused_with_what_to_do_and_kept(saves, capsys, damage):
    """A queue.json cut short, of the wrong shape or not text: every reader and writer
    refuses it naming the file and what to do (the CLI exits 1, the Train tab's table
    says so in its one row, queueing a run says so), and the file is left as it was:
    the runs it names are the user's work."""
    from webui.tabs.train import queue as panel

    state = queue.queue_dir(saves) / "queue.json"
    state.parent.mkdir(parents=True)
    state.write_bytes(damage)
    assert cli(["queue", "list"]) == 1
    said = capsys.readouterr()
    assert "move it aside to start an empty queue" in said.out + said.err, said
    row = panel.table().iloc[0]
    assert row["Status"] == "damaged" and "move it aside" in " ".join(map(str, row)), row
    with pytest.raises(queue.QueueError, match="move it aside"):
        queue.add([RunConfig(dataset=["identity"])])
    assert state.read_bytes() == damage
