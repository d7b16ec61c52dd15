"""Resume: a run killed after a checkpoint goes on in the same folder from its newest resume
point and trains exactly the steps the uninterrupted run trains (optimizer, scheduler, RNG
and data order restored), and its events read as one stream of steps."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from support import events_of, kill_after_first_checkpoint, run_cli, tiny

from core.jobs import runner
from core.jobs.resume import resume, resume_points
from core.jobs.runs import CONFIG, FAILED, list_runs, run_info, run_status
from webui.tabs.train import handlers as training
from webui.tabs.train import history

STEPS, EVERY = 24, 4


def _losses(run_dir) -> dict[int, float]:
    steps = [e for e in events_of(run_dir) if e["type"] == "step"]
    assert len({e["step"] for e in steps}) == len(steps), "a step appears twice"
    return {e["step"]: e["loss"] for e in steps}


@pytest.fixture(scope="module")
def runs(tiny_model_dir, module_saves):
    # fp32: the resumed steps are compared with the whole run's to 1e-4
    settings = dict(max_steps=STEPS, save_steps=EVERY, save_total_limit=2, lora_dropout=0.1,
                    precision="fp32")
    whole = runner.start(tiny(tiny_model_dir, run_name="whole", **settings), module_saves)
    assert runner.wait(whole, timeout=300) == "done", (whole / "log.txt").read_text()[-2000:]
    cut = runner.start(tiny(tiny_model_dir, run_name="cut", **settings), module_saves)
    kill_after_first_checkpoint(cut)
    return whole, cut


def test_a_resumed_run_may_change_only_how_long_it_runs_and_how_it_reports(runs):
    _, cut = runs
    before = (cut / "events.jsonl").read_bytes()
    with pytest.raises(ValueError, match=r"these cannot change: learning_rate \(0.001 -> 0.1\)"):
        resume(cut, {"learning_rate": 0.1, "max_steps": STEPS + 10})
    assert (cut / "events.jsonl").read_bytes() == before  # nothing written


def test_a_killed_run_resumes_where_it_stopped_and_trains_the_same_steps(runs):
    whole, cut = runs
    assert run_status(cut)[0] == FAILED  # killed: ended without reporting
    assert not resume_points(whole), "a finished run keeps no optimizer state"
    point = max(resume_points(cut))
    assert point % EVERY == 0 and point < STEPS

    # As the Train tab does it: the run picked in the history, whose status says it can.
    info = next(r for r in list_runs() if r.name == "cut")
    assert history.shown_status(info) == f"failed · resumable from step {point}"
    assert "Pick one stopped run" in training.resume([]).message
    assert "no longer exists" in training.resume(["../cut"]).message
    started = training.resume(["cut"])
    assert started.run_dir == cut and f"from step {point}" in started.message
    assert runner.wait(cut, timeout=300) == "done", (cut / "log.txt").read_text()[-2000:]

    expected, got = _losses(whole), _losses(cut)
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-4), step
    events = events_of(cut)
    assert [e["type"] for e in events].count("end") == 1 and events[-1]["status"] == "done"
    resumed = next(e for e in events if e["type"] == "resume")
    assert resumed["step"] == point and resumed["changed"] == {}
    # Checkpoints of the killed part past the point were trained again, kept at the limit.
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == \
        [f"step-{STEPS - 2 * EVERY}", f"step-{STEPS - EVERY}"]
    assert run_info(cut).step == STEPS and not resume_points(cut)


def test_what_cannot_be_resumed_is_refused_with_the_reason(runs, capsys):
    whole, cut = runs
    code, out = run_cli(["train", "--resume", str(whole)], capsys)
    assert code == 2 and "finished all its steps; there is nothing to resume" in out
    never = whole.parent / "never"  # a run whose trainer died before its first checkpoint
    never.mkdir()
    shutil.copy(whole / CONFIG, never / CONFIG)
    os.utime(never / CONFIG, (time.time() - 600,) * 2)
    code, out = run_cli(["train", "--resume", str(never)], capsys)
    assert code == 2 and "has no resume point" in out, out
