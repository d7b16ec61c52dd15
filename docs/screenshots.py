"""Take the README tour's screenshots from a real session on the embedded model.

The browser tests train a tiny random model to stay fast, which makes poor pictures (a loss
near 10, random replies). This drives the same app through the journey a person would take
on the bundled SmolLM2-135M-Instruct and the `sentiment` set: look at the data, train a
short LoRA, evaluate it on `sentiment_test` against the base model, and chat with both.
About five minutes on 2 CPU cores. Usage: `make screenshots` (writes docs/*.png).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "tests"))

from browser_support import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    serve_app,
    wait_for,
)

STEPS = 16
# From sentiment_test (held out): the base model calls it positive, the tuned one negative.
REVIEW = ("Classify the sentiment of this review. Answer with exactly one word: positive or "
          "negative.\n\nThe rain jacket looks beautifully designed in the photos and the "
          "price was great, but it cracked the first time I used it.")
TRAIN_SETTINGS = {  # the slow test's recipe (tests/test_evaluate.py), logged every step
    "max_steps": str(STEPS), "learning_rate": "1e-3", "batch_size": "4",
    "gradient_accumulation_steps": "1", "cutoff_len": "128", "warmup_steps": "2",
}


def main() -> int:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="peft-studio-shots-") as tmp, \
            serve_app(Path(tmp)) as app, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)

        def shot(name: str, full: bool = True) -> None:
            page.wait_for_timeout(800)  # progress bars animate their width
            page.screenshot(path=str(DOCS / f"{name}.png"), full_page=full)
            print("wrote", DOCS / f"{name}.png", flush=True)

        page.goto(app.url)
        page.wait_for_selector("text=Registered datasets", timeout=30_000)

        # -- Data: what the model sees of a sentiment sample ----------------------------------
        page.locator("#data-browse input").click()
        page.get_by_role("option", name="sentiment", exact=True).click()
        page.locator("#preview-cutoff_len input").fill("128")
        page.get_by_role("button", name="Show", exact=True).click()
        page.get_by_text("Sample 1 of 300", exact=False).wait_for(timeout=120_000)
        page.locator(".ps-plot img").first.wait_for(timeout=20_000)
        shot("data-tab")

        # -- Train: a short LoRA on sentiment, watched live -----------------------------------
        page.get_by_role("tab", name="Train").click()
        page.get_by_role("button", name="Count parameters").click()
        wait_for(lambda: "parameters trainable" in page.locator("#param-count").inner_text(),
                 120, "the trainable-parameter count")
        page.locator("#setting-dataset [title=Clear]").click()
        page.locator("#setting-dataset input").click()
        page.get_by_role("option", name="sentiment", exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_text("Optimizer and schedule").click()
        page.get_by_text("Logging, evaluation and checkpoints").click()
        for name, value in {**TRAIN_SETTINGS, "logging_steps": "1"}.items():
            page.locator(f"#setting-{name} input").fill(value)
            page.locator(f"#setting-{name} input").press("Tab")
        page.get_by_role("button", name="▶ Start").click()
        page.get_by_text("Started run", exact=False).wait_for(timeout=20_000)
        wait_for(lambda: f"step {STEPS - 4} /" in page.locator(".ps-detail").inner_text()
                 or "Done" in page.locator(".ps-detail").inner_text(), 600, "most steps")
        page.locator("#run-loss").scroll_into_view_if_needed()
        page.evaluate("window.scrollTo(0, 0)")
        shot("train-live", full=False)
        page.get_by_text("Done", exact=False).first.wait_for(timeout=300_000)

        # -- Evaluate on the held-out split, base against fine-tuned ---------------------------
        page.get_by_role("tab", name="Evaluate").click()
        page.get_by_role("button", name="Refresh").first.click()
        page.wait_for_timeout(1500)
        for name, value in (("max-samples", "30"), ("max-new-tokens", "4"),
                            ("batch-size", "10")):
            page.locator(f"#eval-{name} input").fill(value)
            page.locator(f"#eval-{name} input").press("Tab")
        page.locator("#eval-start").click()
        wait_for(lambda: "Exact match" in page.locator("#eval-metrics").inner_text(), 600,
                 "the evaluation")
        shot("evaluate")

        # -- Chat: the same review answered by both -------------------------------------------
        page.get_by_role("tab", name="Chat").click()
        page.locator("#chat-load").click()
        status = page.locator("#chat-status")
        wait_for(lambda: "Loaded:" in status.inner_text(), 120, "the model to load")
        page.locator("#chat-compare input").check()
        page.locator("#chat-pane-0").wait_for(state="visible", timeout=10_000)
        page.get_by_text("Generation settings").click()
        page.locator("#chat-greedy input").check()
        page.locator("#chat-max-new-tokens input[type=number]").fill("60")
        page.locator("#chat-max-new-tokens input[type=number]").press("Tab")
        page.locator("#chat-message textarea").fill(REVIEW)
        page.locator("#chat-send").click()
        wait_for(lambda: "tokens/s" in status.inner_text(), 180, "both replies")
        shot("chat-compare")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
