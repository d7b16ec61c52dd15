"""webui.wake: the stamp a Train tab compares to decide whether to refresh."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import runner
from core.events import EVENTS, LOG
from webui import wake


@pytest.fixture()
def live(tmp_path, monkeypatch):
    """A run folder that core.runner reports as the live run until `live.end()`."""
    run = tmp_path / "lora-1"
    run.mkdir()
    (run / EVENTS).write_text('{"type": "start"}\n')
    (run / LOG).write_text("loading\n")
    state = {"run": run}
    monkeypatch.setattr(runner, "saves_dir", lambda: tmp_path)
    monkeypatch.setattr(runner, "active_run", lambda saves=None: state["run"])
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
    _append(live.path / LOG, "step 1\n")
    assert wake.stamp(None, now=t + 1.5) != after_step


def test_a_live_run_refreshes_the_clock_every_few_seconds(live):
    t = 1000.0
    assert wake.stamp(None, now=t) != wake.stamp(None, now=t + wake.CLOCK_EVERY)


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
