"""The Train tab's Queue button and Queue panel in a browser: a run queued while the device
is taken waits (the panel says for whom), and the panel's Cancel takes it out; nothing
trains."""

from __future__ import annotations

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, wait_for

from core.jobs import queue
from core.jobs.device import hold_device

pytestmark = pytest.mark.browser


def test_queue_a_run_and_cancel_it_from_the_page(app):
    from playwright.sync_api import sync_playwright

    device = hold_device("a hand-started job", saves=app.saves)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(app.url)
            page.get_by_role("tab", name="Train").click()
            page.locator("#queue-run").click()
            page.get_by_text("Queued as entry", exact=False).wait_for(timeout=30_000)
            entries = wait_for(lambda: queue.entries(app.saves), 10, "the queue file")
            assert [e["id"] for e in entries] == [1]
            page.get_by_text("Queue", exact=True).first.click()
            table = page.locator("#queue-table")
            wait_for(lambda: "is using the device" in table.inner_text()
                     or "queued" in table.inner_text(), 30, "the entry in the panel")
            page.get_by_label("Entry id").fill("1")
            page.get_by_role("button", name="Cancel entry").click()
            wait_for(lambda: queue.entries(app.saves)[0]["status"] == queue.CANCELLED
                     or queue.entries(app.saves)[0].get("cancel"), 30, "the cancel")
            browser.close()
    finally:
        device.close()
    wait_for(lambda: not queue.pending(app.saves), 60, "the entry to settle")
    assert queue.entries(app.saves)[0]["status"] == queue.CANCELLED
    assert queue.entries(app.saves)[0]["run"] is None  # it never started
    wait_for(lambda: not queue.worker_alive(app.saves), 30, "the worker to exit")
