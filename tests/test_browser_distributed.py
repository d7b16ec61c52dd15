"""Two processes from the Train tab, in a real browser: the Devices group sets them, the
memory estimate judges the settings before Start, and the run finishes as one."""

from __future__ import annotations

import json
import re
import time

import psutil
import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, wait_for

from core.jobs.events import read_events
from core.jobs.process import PROCESS

pytestmark = pytest.mark.browser


def need_gb(text: str) -> float | None:
    match = re.search(r"needs about ([0-9.]+) GB", text)
    return float(match.group(1)) if match else None


def test_two_processes_from_the_train_tab(app, tiny_model_dir, output_dir):
    from playwright.sync_api import sync_playwright

    shots = output_dir / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(app.url)
        page.get_by_role("tab", name="Train").click()
        count = page.locator("#param-count")
        model = page.locator("#setting-model input")
        model.fill(str(tiny_model_dir))
        model.press("Enter")
        # Two probe processes (the count, then the data's lengths for the estimate), each
        # importing transformers: seconds on a quiet machine, past 120 s on a busy one.
        wait_for(lambda: "3,236,160 parameters" in count.inner_text(), 300,
                 "the tiny model's count")
        page.locator("#setting-dataset [title=Clear]").click()
        page.locator("#setting-dataset input").click()
        page.get_by_role("option", name="identity", exact=True).click()
        page.keyboard.press("Escape")
        for name, value in [("max_steps", "4"), ("batch_size", "1"), ("cutoff_len", "96"),
                            ("gradient_accumulation_steps", "1")]:
            page.locator(f"#setting-{name} input").fill(value)
        page.get_by_text("Logging, evaluation and checkpoints").click()
        page.locator("#setting-logging_steps input").fill("1")
        page.locator("#setting-cutoff_len input").press("Tab")
        one = wait_for(lambda: need_gb(count.inner_text()), 60, "the memory estimate")
        page.get_by_text("Devices: several GPUs and machines").click()
        procs = page.locator("#setting-nproc_per_node input")
        procs.fill("2")
        procs.press("Tab")
        # the estimate follows the process count: on a CPU both share the one RAM
        two = wait_for(lambda: need_gb(count.inner_text()) != one
                       and need_gb(count.inner_text()), 60, "the estimate for 2 processes")
        assert two == pytest.approx(2 * one, abs=0.02)
        assert "fits on CPU (RAM)" in count.inner_text()
        page.screenshot(path=str(shots / "distributed_settings.png"), full_page=True)

        page.get_by_role("button", name="▶ Start").click()
        page.get_by_text("Started run", exact=False).wait_for(timeout=20_000)
        detail = page.locator(".ps-detail")
        wait_for(lambda: ": done" in detail.inner_text() or ": failed" in detail.inner_text(),
                 300, "the run to finish")
        assert ": done" in detail.inner_text(), detail.inner_text()
        wait_for(lambda: page.locator("strong", has_text="2 processes").count(), 10,
                 "the process count in the run's stats")
        page.screenshot(path=str(shots / "distributed_done.png"), full_page=False)
        assert not errors, errors
        browser.close()

    (run_dir,) = [p for p in app.saves.iterdir() if (p / "config.yaml").is_file()]
    events = read_events(run_dir)[0]
    start = next(e for e in events if e["type"] == "start")
    assert start["processes"] == 2
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]
    argv = json.loads((run_dir / PROCESS).read_text())["argv"]
    assert argv[1] == "core.distributed.launch"
    config = str(run_dir / "config.yaml")
    deadline = time.time() + 10
    while time.time() < deadline and any(
            config in (p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
        time.sleep(0.2)
    assert not any(config in (p.info["cmdline"] or [])
                   for p in psutil.process_iter(["cmdline"]))
