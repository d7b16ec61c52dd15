"""The app in a real browser: headless Chromium drives a training run end to end, reloads
the page mid-run, and switches methods. Screenshots of each step go to
tests/output/browser/."""

from __future__ import annotations

import re

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, step_of, wait_for

# More steps than the test ever waits for: the run cannot end before the reload however fast
# the machine is, and the test ends it with Abort (which keeps what was trained).
STEPS = 100_000
# How long a reloaded page may take to show the live run: the page's load events and the
# first refresh, on a machine whose cores the run keeps busy.
REATTACH_SECONDS = 60

pytestmark = pytest.mark.browser

FRAME_COUNTER = """
window.__frames = 0;
const request = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => { window.__frames++; return request(callback); };
"""


def step_and_points(page) -> tuple[int, int]:
    """The step the bar shows and the points of the loss curve, read at one moment (the
    page draws both from one answer: webui.live.panel)."""
    return tuple(page.evaluate("""() => {
        const live = document.querySelector('#run-live .ps-live');
        const step = live.querySelector('.ps-detail').innerText.match(/step (\\d+) \\//);
        const line = live.querySelector('#run-loss polyline[data-series=training]');
        return [step ? Number(step[1]) : 0, line ? Number(line.dataset.points) : 0];
    }"""))


def test_train_reload_and_reattach(app, tiny_model_dir, output_dir):
    from playwright.sync_api import sync_playwright

    url, saves, startup = app.url, app.saves, app.startup_seconds
    shots = output_dir / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    assert startup < 30, f"the app took {startup:.1f} s to come up"

    def shot(page, name: str, full: bool = True) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=full)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # Counts the animation frames the page really asks the browser for (this runs
        # before every script of the page, webui.idle's included).
        page.add_init_script(FRAME_COUNTER)
        page.goto(url)
        page.wait_for_selector("text=Registered datasets", timeout=30_000)

        # -- Data tab: what the model sees of a sample ---------------------------------------
        page.locator("#preview-cutoff_len input").fill("64")
        page.locator("#preview-cutoff_len input").press("Tab")
        page.get_by_role("button", name="Show", exact=True).click()
        page.get_by_text("Sample 1 of 52", exact=False).wait_for(timeout=90_000)
        assert "cut at 64" in page.get_by_text("Sample 1 of 52", exact=False).inner_text()
        page.locator(".ps-plot img").first.wait_for(timeout=10_000)
        shot(page, "01_data_tab")

        # -- language switch -------------------------------------------------------------------
        page.get_by_label("中文").check()
        page.get_by_role("tab", name="训练").wait_for(timeout=10_000)
        page.get_by_label("English").check()
        page.get_by_role("tab", name="Train").wait_for(timeout=10_000)

        # -- Train tab: a non-LoRA method shows its own settings, not LoRA's ------------------
        page.get_by_role("tab", name="Train").click()
        # The trainable-parameter count is in view before anything is pressed; it comes
        # from a helper process that builds the model without weights.
        count = page.locator("#param-count")
        embedded_count = wait_for(lambda: "parameters trainable" in count.inner_text()
                                  and count.inner_text(), 90, "the count on page load")
        # An idle Train tab asks the server only for a stamp of the live run's files
        # (webui.live.wake), and starts no Gradio event: each costs this page's browser about
        # 0.25 CPU-seconds, which on a small machine the trainer would lose.
        calls: list[str] = []

        def note(request) -> None:
            calls.append(request.url)

        def stamps() -> int:
            page.wait_for_timeout(200)  # lets Playwright deliver the request events
            return sum("/component_server" in c for c in calls)

        page.on("request", note)
        wait_for(lambda: stamps() >= 4, 60, "the page to ask for 4 stamps")
        page.remove_listener("request", note)
        # The first stamp (the tab just mounted) may start one refresh; from the third on,
        # with nothing running, none may.
        third = [i for i, c in enumerate(calls) if "/component_server" in c][2]
        assert not [c for c in calls[third:] if "/queue/join" in c], calls
        # Nor does it draw: Gradio's hidden status-tracker clock alone would ask for 60
        # frames a second; webui.idle lets it have 4.
        frames = page.evaluate("window.__frames")
        page.wait_for_timeout(3000)
        assert page.evaluate("window.__frames") - frames < 60
        # Between refreshes the page moves a live run's clocks on by itself (webui.live.panel):
        # a bar's elapsed time counts up, its ETA down and not below zero.
        page.evaluate("""document.querySelector('#run-live .ps-live').insertAdjacentHTML(
            'beforeend',
            '<div class="ps-running" id="fake-bar">' +
            '<span class="ps-clock" data-s="58" data-d="1">0:58</span> ' +
            '<span class="ps-clock" data-s="1" data-d="-1">0:01</span></div>')""")
        clocks = page.locator("#fake-bar .ps-clock")
        wait_for(lambda: clocks.all_inner_texts()[0].startswith("1:"), 15,
                 "the page's own clock to move past a minute")
        assert clocks.all_inner_texts()[1] == "0:00"
        # A refresh gives the same span a new time (Gradio patches the bar in place): the
        # clock goes on from that time, not from when the span first appeared.
        page.evaluate("document.querySelector('#fake-bar .ps-clock').dataset.s = '5'")
        wait_for(lambda: clocks.all_inner_texts()[0] in ("0:05", "0:06"), 15,
                 "the clock to take the refreshed time")
        page.evaluate("document.getElementById('fake-bar').remove()")
        # The preview's cut-off is the run's cut-off.
        assert page.locator("#setting-cutoff_len input").input_value() == "64"
        lora_rank = page.locator("#setting-lora_rank")
        adapter_size = page.locator("#setting-adapter_size")
        assert lora_rank.is_visible() and not adapter_size.is_visible()
        page.locator("#setting-method input").click()
        page.get_by_role("option", name="Bottleneck adapter (Houlsby)").click()
        adapter_size.wait_for(state="visible", timeout=10_000)
        assert not lora_rank.is_visible()
        assert not page.locator("#setting-quantization").is_visible()
        wait_for(lambda: "Bottleneck adapter" in page.locator("#method-help").inner_text(), 10,
                 "the method's help text")
        shot(page, "02_adapter_settings", full=False)
        page.locator("#setting-method input").click()
        page.get_by_role("option", name=re.compile(r"^LoRA")).click()
        lora_rank.wait_for(state="visible", timeout=10_000)
        assert not adapter_size.is_visible()

        # -- a short run on the tiny model ---------------------------------------------------
        model = page.locator("#setting-model input")
        model.fill(str(tiny_model_dir))
        model.press("Enter")
        page.get_by_text("Local folder", exact=False).wait_for(timeout=10_000)
        wait_for(lambda: "parameters trainable" in count.inner_text()
                 and count.inner_text() != embedded_count, 90, "the tiny model's count")
        page.locator("#setting-dataset [title=Clear]").click()
        page.locator("#setting-dataset input").click()
        page.get_by_role("option", name="identity", exact=True).click()
        page.keyboard.press("Escape")
        assert page.locator("#setting-dataset .token").all_inner_texts() == ["identity"]
        for name, value in [("max_steps", str(STEPS)), ("batch_size", "2"), ("cutoff_len", "128"),
                            ("gradient_accumulation_steps", "1")]:
            page.locator(f"#setting-{name} input").fill(value)
        page.get_by_text("Logging, evaluation and checkpoints").click()
        page.locator("#setting-logging_steps input").fill("1")
        page.locator("#setting-logging_steps input").press("Tab")
        shot(page, "03_train_settings")

        page.get_by_role("button", name="▶ Start").click()
        page.get_by_text("Started run", exact=False).wait_for(timeout=20_000)
        wait_for(lambda: step_of(page) >= 2, 120, "the first logged steps")
        # The page draws the bar and the curve from one answer, without a Gradio event.
        events_before = sum("/queue/join" in c for c in calls)
        page.on("request", note)
        step, first = step_and_points(page)
        assert first >= 2 and first == step
        wait_for(lambda: step_and_points(page)[1] > first, 30, "the loss curve to gain points")
        step, points = step_and_points(page)
        assert points == step
        page.remove_listener("request", note)
        assert sum("/queue/join" in c for c in calls) == events_before, \
            "following a run's steps took Gradio events"
        shot(page, "04_training_live", full=False)

        # -- reload mid-run: the page re-attaches and progress keeps moving -----------------
        page.reload()
        page.wait_for_selector("text=Registered datasets", timeout=30_000)
        page.get_by_role("tab", name="Train").click()
        reattached = wait_for(lambda: step_of(page), REATTACH_SECONDS,
                              "the page to re-attach to the run")
        wait_for(lambda: step_of(page) > reattached, 30, "progress after the reload")
        assert "running" in page.locator(".ps-detail").inner_text()
        shot(page, "05_reattached", full=False)

        # -- Abort keeps what was trained, and the history says how it ended ----------------
        page.get_by_role("button", name="■ Abort").click()
        wait_for(lambda: "aborted" in page.locator(".ps-detail").inner_text(), 60,
                 "the run to end aborted")
        # The buttons follow from the Gradio event the page starts when the status changed.
        wait_for(lambda: page.get_by_role("button", name="▶ Start").is_enabled(), 15,
                 "Start to be enabled again")
        assert not page.get_by_role("button", name="■ Abort").is_enabled()
        run_name = next(p.name for p in saves.iterdir() if (p / "config.yaml").exists())
        assert (saves / run_name / "adapter" / "adapter_config.json").exists(), \
            sorted(x.name for x in (saves / run_name).iterdir())
        # The history lists the run (its table renders only rows in the viewport, so ask
        # the run picker, which is filled from the same list).
        page.locator("#history-runs input").click()
        page.get_by_role("option", name=run_name).click()
        page.keyboard.press("Escape")
        page.locator("#history-loss img").wait_for(timeout=15_000)
        wait_for(lambda: "aborted" in page.locator("#history-details").inner_text(), 10,
                 "the selected run's details")
        shot(page, "06_done_and_history")

        # -- the saved adapter is offered in Chat without a reload ----------------------------
        page.get_by_role("tab", name="Chat").click()
        wait_for(lambda: page.locator("#chat-run input").input_value() == run_name, 15,
                 "the new run in the Chat tab")
        assert not errors, errors
        browser.close()


def test_the_comparison_panel_follows_its_comparison(app):
    """The Train tab's "Compare methods" panel has no timer: it redraws when the newest
    comparison (or the run it trains) wrote something (webui.live.wake). The comparison here is
    its files, as core.experiments.compare writes them, so the test controls when each event
    comes."""
    import json
    import subprocess
    import time

    from playwright.sync_api import sync_playwright

    from core.experiments import compare
    from core.jobs.process import PROCESS, create_time

    job = app.saves / "comparisons" / "compare-20261201-000000"
    job.mkdir(parents=True)
    (job / compare.SPEC_FILE).write_text("methods: [lora, ia3]\n")
    # The comparison's process, as core.jobs.process records it: alive until the test ends it.
    process = subprocess.Popen(["sleep", "600"])
    (job / PROCESS).write_text(json.dumps(
        {"pid": process.pid, "create_time": create_time(process.pid)}))

    def emit(kind: str, **fields) -> None:
        with open(job / "events.jsonl", "a") as f:
            f.write(json.dumps({"type": kind, "time": time.time(), **fields}) + "\n")

    emit("start")
    emit("progress", done=0, total=2, message="training lora")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(app.url)
            page.get_by_role("tab", name="Train").click()
            page.get_by_text("Compare methods").click()
            line = page.locator("p", has_text=job.name).first
            wait_for(lambda: "training lora (0/2 done)" in line.inner_text(), 60,
                     "the panel to show the comparison")
            emit("progress", done=1, total=2, message="training ia3")
            wait_for(lambda: "training ia3 (1/2 done)" in line.inner_text(), 30,
                     "the panel to follow the comparison's next method")
            emit("end", status="done")
            wait_for(lambda: line.inner_text() == f"{job.name}: done", 30,
                     "the panel to show the end")
            browser.close()
    finally:
        process.kill()
        process.wait()
