"""Resume from the page: a run killed after its first checkpoint reads "resumable from step N"
in the Train tab's run history, and its ⟳ Resume goes on in the same folder while the live
panel follows it: the curve continues past the step it was killed at, to the end."""

from __future__ import annotations

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, wait_for
from support import events_of, kill_after_first_checkpoint, tiny

from core.jobs import runner
from core.jobs.resume import resume_points
from core.jobs.runs import DONE, run_status

pytestmark = pytest.mark.browser

STEPS, EVERY = 12, 4


def curve(page) -> tuple[int, int]:
    """(the step the live bar shows, the points of its training-loss line)."""
    return tuple(page.evaluate("""() => {
        const live = document.querySelector('#run-live .ps-live');
        if (!live) return [0, 0];
        const step = live.querySelector('.ps-detail').innerText.match(/step (\\d+) \\//);
        const line = live.querySelector('#run-loss polyline[data-series=training]');
        return [step ? Number(step[1]) : 0, line ? Number(line.dataset.points) : 0];
    }"""))


def test_resume_a_killed_run_from_the_history(app, tiny_model_dir, output_dir):
    from playwright.sync_api import sync_playwright

    cfg = tiny(tiny_model_dir, run_name="cut", max_steps=STEPS, save_steps=EVERY,
               precision="fp32")
    run_dir = runner.start(cfg, app.saves)
    kill_after_first_checkpoint(run_dir)
    point = max(resume_points(run_dir))
    logged = {e["step"] for e in events_of(run_dir) if e["type"] == "step"}
    assert point < STEPS and max(logged) < STEPS

    shots = output_dir / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(app.url)
        page.get_by_role("tab", name="Train").click()
        history = page.locator("#history-table")
        wait_for(lambda: f"resumable from step {point}" in history.inner_text(), 30,
                 "the history to say the run can be resumed")
        page.locator("#history-runs input").click()
        page.get_by_role("option", name="cut").click()
        page.keyboard.press("Escape")
        page.locator("#history-resume").click()
        # The live panel follows the resumed run: its curve holds the steps of before and
        # grows past the step it was killed at.
        wait_for(lambda: curve(page)[0] > point, 120, "the resumed run's steps on the page")
        page.screenshot(path=str(shots / "resume-01-live.png"), full_page=True)
        wait_for(lambda: run_status(run_dir)[0] == DONE, 180, "the resumed run to end")
        wait_for(lambda: curve(page)[1] == STEPS, 30, "the whole curve on the page")
        assert not errors, errors
        browser.close()
    steps = [e["step"] for e in events_of(run_dir) if e["type"] == "step"]
    assert sorted(set(steps)) == list(range(1, STEPS + 1))  # one stream, each step once
