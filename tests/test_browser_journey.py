"""The Chat, Evaluate and Export tabs in a real browser, on a finished tiny run made
beforehand through the runner: load the run, see replies stream in side by side with the
base model, evaluate, export. Screenshots go to tests/output/browser/journey-*.png."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, serve_app, wait_for
from support import ANSWER, PROMPT

pytestmark = pytest.mark.browser


@pytest.fixture()
def app(tmp_path, code_run):
    """The app on the saves/ that holds the finished tiny run."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    with serve_app(tmp_path, saves=code_run.parent) as served:
        yield served.url, served.saves, code_run


def test_chat_evaluate_and_export_journey(app, output_dir):
    from playwright.sync_api import sync_playwright

    url, saves, run_dir = app
    shots = output_dir / "browser"
    shots.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str, full: bool = False) -> None:
        page.screenshot(path=str(shots / f"journey-{name}.png"), full_page=full)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.get_by_role("tab", name="Chat").click()

        # -- load the run's adapter (the newest finished run is preselected) ----------------
        page.locator("#chat-load").click()
        status = page.locator("#chat-status")
        wait_for(lambda: "Loaded:" in status.inner_text(), 60, "the model to load")
        assert run_dir.name in status.inner_text()
        pid = int(status.inner_text().split("Worker process ")[1].split(",")[0])
        assert Path(f"/proc/{pid}").exists()

        # -- compare mode, greedy: the fine-tuned answer and the base's, side by side -------
        page.locator("#chat-compare input").check()
        page.locator("#chat-pane-0").wait_for(state="visible", timeout=10_000)
        page.get_by_text("Generation settings").click()
        page.locator("#chat-greedy input").check()
        tokens = page.locator("#chat-max-new-tokens input[type=number]")
        tokens.fill("120")
        tokens.press("Tab")
        page.locator("#chat-message textarea").fill(PROMPT)
        page.locator("#chat-send").click()
        tuned, base = page.locator("#chat-pane-1"), page.locator("#chat-pane-0")
        wait_for(lambda: "tokens/s" in status.inner_text(), 90, "both replies")
        assert ANSWER in tuned.inner_text() and "pineapple" not in base.inner_text()
        page.locator("#chat-message textarea").scroll_into_view_if_needed()
        shot(page, "01-chat-compare", full=True)

        # -- a longer sampled reply: watch it stream in, token by token ---------------------
        page.locator("#chat-greedy input").uncheck()
        page.locator("#chat-message textarea").fill("Tell me a story.")
        # Every length the base pane shows, recorded by the page itself on each change:
        # polling from here could miss the steps of a reply that streams fast.
        page.evaluate("""() => {
            const pane = document.querySelector('#chat-pane-0');
            window.psLengths = new Set([pane.innerText.length]);
            new MutationObserver(() => window.psLengths.add(pane.innerText.length))
                .observe(pane, {subtree: true, childList: true, characterData: true});
        }""")
        page.locator("#chat-send").click()

        def lengths() -> list[int]:
            return sorted(page.evaluate("[...window.psLengths]"))

        wait_for(lambda: "tokens/s" in status.inner_text() and len(lengths()) > 2, 90,
                 "the sampled reply")
        assert len(lengths()) >= 4, f"the reply did not stream: {lengths()}"

        # -- unload: the worker process ends -----------------------------------------------
        page.locator("#chat-unload").click()
        wait_for(lambda: "Unloaded" in status.inner_text(), 20, "the unload")
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, "the worker to end")

        # -- evaluate (the run has no held-out split: its own one-row data is offered) ------
        page.get_by_role("tab", name="Evaluate").click()
        page.locator("#eval-start").click()
        metrics = page.locator("#eval-metrics")
        wait_for(lambda: "Exact match" in metrics.inner_text(), 120, "the evaluation")
        assert "100" in metrics.inner_text()
        assert ANSWER in page.locator("#eval-predictions").inner_text()
        page.wait_for_timeout(800)  # the progress bar's width transition
        shot(page, "02-evaluate", full=True)

        # -- export: merged model, path reported --------------------------------------------
        page.get_by_role("tab", name="Export").click()
        assert "Merge" in page.locator("#export-plan").inner_text()
        name = page.locator("#export-name textarea")
        assert name.input_value() == f"{run_dir.name}-merged"
        page.locator("#export-start").click()
        result = page.locator("#export-result")
        wait_for(lambda: "Exported to" in result.inner_text(), 120, "the export")
        out = saves / "exports" / f"{run_dir.name}-merged"
        assert str(out) in result.inner_text()
        assert (out / "config.json").is_file() and (out / "README.md").is_file()
        page.wait_for_timeout(800)
        shot(page, "03-export", full=True)
        # The same name again is refused, and nothing is overwritten.
        page.locator("#export-start").click()
        wait_for(lambda: "already exists" in result.inner_text(), 20, "the refusal")
        assert not errors, errors
        browser.close()
