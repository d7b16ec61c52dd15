"""webui.live.wake: the stamp a Train tab compares to decide whether to refresh."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import paths
from core.jobs import runs
from core.jobs.events import EVENTS, LOG
from core.jobs.runs import DONE, RUNNING
from webui.live import wake


@pytest.fixture()
def live(tmp_path, monkeypatch):
    """A run folder that core.jobs.runs reports as the live run until `live.end()`."""
    run = tmp_path / "lora-1"
    run.mkdir()
    (run / EVENTS).write_text('{"type": "start"}\n')
    (run / LOG).write_text("loading\n")
    state = {"run": run}
    monkeypatch.setattr(paths, "saves_dir", lambda: tmp_path)
    monkeypatch.setattr(runs, "active_run", lambda saves=None: state["run"])
    monkeypatch.setattr(wake, "_scan", {"at": float("-inf"), "run": None, "saves": None})

    class Live:
        path = run

        @staticmethod
        def end() -> None:
            state["run"] = None

    return Live


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_the_stamp_changes_when_the_run_writes_and_only_then(live):
    t = 1000.0
    first = wake.stamp(None, now=t)
    assert first.startswith("lora-1:")
    assert wake.stamp(None, now=t + 0.5) == first  # nothing new: the page does nothing
    _append(live.path / EVENTS, '{"type": "step"}\n')
    after_step = wake.stamp(None, now=t + 1)
    assert after_step != first
    # A log line alone waits for the next event or clock refresh: the trainer writes one
    # beside every step's event, and each refresh costs the page a Gradio event.
    _append(live.path / LOG, "step 1\n")
    assert wake.stamp(None, now=t + 1.5) == after_step


def test_a_quiet_live_run_is_refreshed_every_clock_period_and_a_busy_one_by_its_events(live):
    t = (live.path / EVENTS).stat().st_mtime
    assert wake.stamp(None, now=t + 1) == wake.stamp(None, now=t + wake.CLOCK_EVERY - 1)
    # A model still loading writes no event for a while: its log is shown every period.
    quiet = wake.stamp(None, now=t + wake.CLOCK_EVERY + 1)
    assert quiet != wake.stamp(None, now=t + 1)
    assert wake.stamp(None, now=t + 2 * wake.CLOCK_EVERY + 1) != quiet
    # A run that writes an event more often than that is refreshed by its events alone.
    _append(live.path / EVENTS, '{"type": "step"}\n')
    t = (live.path / EVENTS).stat().st_mtime
    assert wake.stamp(None, now=t + 1) == wake.stamp(None, now=t + wake.CLOCK_EVERY - 1)


def test_a_run_that_ends_is_seen_at_the_next_scan(live):
    t = 1000.0
    assert wake.stamp(None, now=t) != wake.IDLE
    live.end()
    # Between scans the answer is the cached run's (cheap); the next scan finds none.
    assert wake.stamp(None, now=t + wake.SCAN_EVERY / 2) != wake.IDLE
    assert wake.stamp(None, now=t + wake.SCAN_EVERY) == wake.IDLE
    assert wake.stamp(None, now=t + 100) == wake.IDLE  # idle stays idle: no refreshes


def test_the_waker_offers_only_the_stamp_to_the_page():
    component = wake.waker("w")
    assert [f.__name__ for f in component.server_fns] == ["stamp"]
    assert "server.stamp" in component.js_on_load and "trigger('change')" in component.js_on_load


def test_the_comparison_stamp_follows_the_newest_comparison_and_its_run(live, monkeypatch):
    from core.experiments import compare

    monkeypatch.setattr(compare, "comparisons_dir", lambda: live.path.parent / "comparisons")
    assert wake.comparison_stamp(None, now=1000.0) == wake.IDLE
    job = live.path.parent / "comparisons" / "compare-1"
    job.mkdir(parents=True)
    (job / compare.SPEC_FILE).write_text("methods: [lora, ia3]\n")
    (job / EVENTS).write_text('{"type": "start"}\n')
    running = {"status": RUNNING}
    monkeypatch.setattr(runs, "run_status", lambda path, events=None: (running["status"], {}))
    first = wake.comparison_stamp(None, now=1000.0)
    assert first.startswith("compare-1:")
    # The run the comparison trains wrote a step: the panel redraws.
    _append(live.path / EVENTS, '{"type": "step"}\n')
    after_step = wake.comparison_stamp(None, now=1000.5)
    assert after_step != first
    # The comparison wrote its next run; then it ended: once each, then nothing moves.
    _append(job / EVENTS, '{"type": "run"}\n')
    assert wake.comparison_stamp(None, now=1001.0) != after_step
    running["status"] = DONE
    ended = wake.comparison_stamp(None, now=1001.5)
    _append(live.path / EVENTS, '{"type": "step"}\n')  # another run, not the comparison's
    assert wake.comparison_stamp(None, now=1000.0 + 10 * wake.CLOCK_EVERY) == ended


def test_a_waker_asks_the_function_it_is_given():
    component = wake.waker("w", wake.comparison_stamp)
    assert [f.__name__ for f in component.server_fns] == ["comparison_stamp"]
    assert "server.comparison_stamp(arg)" in component.js_on_load
    assert 'const field = "" ?' in component.js_on_load  # asks about no job of the page's
    follower = wake.waker("w2", wake.job_stamp, source="eval-job")
    assert "server.job_stamp(arg)" in follower.js_on_load
    assert '"#eval-job textarea, #eval-job input"' in follower.js_on_load


def test_a_followed_job_is_stamped_only_inside_saves(tmp_path, monkeypatch):
    """The Evaluate and Export tabs follow their job by its stamp; the job's name comes from
    the page, so a folder outside saves/ (or none, or nonsense) is idle."""
    saves = tmp_path / "saves"
    job = saves / "run" / "evals" / "20260101-000000"
    job.mkdir(parents=True)
    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(saves))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    first = wake.job_stamp(str(job))
    assert first.startswith("20260101-000000:0:")
    (job / "events.jsonl").write_text('{"type": "start"}\n')
    assert wake.job_stamp(str(job)) != first
    for other in ("", None, str(outside), str(saves / ".." / "elsewhere"), "x" * 5000, 42):
        assert wake.job_stamp(other) == wake.IDLE
