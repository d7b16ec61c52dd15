"""Preference tuning in a real browser: upload a pairwise file, see a pair side by side in
the Data tab, start a DPO run on the tiny model and watch the reward-accuracy curve grow,
then a short DPO run that ends done, shown in the run history. Screenshots go to
tests/output/browser/pref-*.png."""

from __future__ import annotations

import json
import re

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, wait_for

pytestmark = pytest.mark.browser

# The watched run cannot end before the curve has grown, however fast the machine: it has
# more steps than the test waits for and is aborted at the end.
STEPS = 100_000
PAIRS = [{"question": f"Can you help me with chore {i}?", "chosen": "Of course, gladly.",
          "rejected": "Do it yourself."} for i in range(16)]


def accuracy_points(page) -> int:
    """Points of the live reward-accuracy curve (SVG drawn in the page by webui.live.panel)."""
    line = page.locator("#run-reward-accuracy polyline")
    return int(line.get_attribute("data-points")) if line.count() else 0


def history_image(page) -> str:
    img = page.locator("#history-reward-accuracy img")
    return img.get_attribute("src") if img.count() else ""


def test_pairwise_upload_pair_view_and_dpo_reward_curve(app, tiny_model_dir, tmp_path,
                                                        output_dir):
    from playwright.sync_api import sync_playwright

    from core.jobs.runs import DONE, run_status

    shots = output_dir / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    upload = tmp_path / "chores.jsonl"
    upload.write_text("\n".join(json.dumps(p) for p in PAIRS) + "\n")

    def shot(page, name: str) -> None:
        page.screenshot(path=str(shots / f"pref-{name}.png"), full_page=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(app.url)
        page.wait_for_selector("text=Registered datasets", timeout=30_000)

        # -- Data tab: upload, detect, register, and see a pair side by side (rendered with
        # the default model's chat template, which the tiny model shares) ----------------
        page.locator("#upload-file input[type=file]").set_input_files(str(upload))
        page.get_by_text(re.compile(r"(Detected|Probably) pairwise")).wait_for(timeout=30_000)
        page.get_by_role("button", name="Validate and register").click()
        page.get_by_text("Registered chores", exact=False).wait_for(timeout=30_000)
        page.locator("#data-browse input").click()
        page.get_by_role("option", name="chores", exact=True).click()
        page.get_by_role("button", name="Show", exact=True).click()
        page.locator("#pair-view").wait_for(state="visible", timeout=90_000)
        chosen, rejected = page.locator("#pair-chosen"), page.locator("#pair-rejected")
        wait_for(lambda: "Of course, gladly." in chosen.inner_text(), 30, "the chosen reply")
        assert "Do it yourself." in rejected.inner_text()
        assert "Do it yourself." not in chosen.inner_text()
        prompt = page.locator("#pair-prompt textarea").input_value()
        assert "chore 0" in prompt and "Of course" not in prompt
        assert not page.locator("#data-seen").is_visible()  # the single-sample view
        shot(page, "01-pair-view")

        # -- Train tab: stage dpo on the uploaded pairs; the reward curve grows --------------
        # The model is changed only now: its parameter count takes the helper process the
        # pair view above needs (the page load's count of the default model is enough).
        model = page.locator("#setting-model input")
        model.fill(str(tiny_model_dir))
        model.press("Enter")
        page.get_by_text("Local folder", exact=False).wait_for(timeout=10_000)
        page.get_by_role("tab", name="Train").click()
        if not page.locator("#setting-stage").is_visible():  # in the closed "Model" group
            page.get_by_role("button", name=re.compile(r"^Model\W*$")).click()
        page.locator("#setting-stage input").click()
        page.get_by_role("option", name="dpo", exact=True).click()
        page.locator("#setting-dataset [title=Clear]").click()
        page.locator("#setting-dataset input").click()
        page.get_by_role("option", name="chores", exact=True).click()
        page.keyboard.press("Escape")
        settings = [("max_steps", str(STEPS)), ("batch_size", "4"), ("cutoff_len", "64"),
                    ("gradient_accumulation_steps", "1")]
        for name, value in settings:
            page.locator(f"#setting-{name} input").fill(value)
        page.get_by_text("Logging, evaluation and checkpoints").click()
        page.locator("#setting-logging_steps input").fill("1")
        page.locator("#setting-logging_steps input").press("Tab")
        assert not page.locator("#run-reward-accuracy").is_visible()
        page.get_by_role("button", name="▶ Start").click()
        page.get_by_text("Started run", exact=False).wait_for(timeout=20_000)
        first = wait_for(lambda: accuracy_points(page), 120, "the reward-accuracy plot")
        wait_for(lambda: accuracy_points(page) > first, 60, "the reward-accuracy plot to grow")
        assert page.locator("#run-rewards polyline").count() == 3  # chosen, rejected, margin
        assert "reward accuracy" in page.get_by_text("rewards: chosen").inner_text()
        shot(page, "02-dpo-live")
        page.get_by_role("button", name="■ Abort").click()
        wait_for(lambda: "aborted" in page.locator(".ps-detail").inner_text(), 60,
                 "the run to end aborted")

        # -- a short run ends done, and the history shows its reward curves -------------------
        page.locator("#setting-max_steps input").fill("3")
        page.locator("#setting-max_steps input").press("Tab")
        page.get_by_role("button", name="▶ Start").click()
        wait_for(lambda: "done" in page.locator(".ps-detail").inner_text(), 120,
                 "the short run to end done")
        wait_for(lambda: accuracy_points(page), 20, "its final reward-accuracy plot")
        runs = sorted(p.name for p in app.saves.iterdir() if (p / "config.yaml").exists())
        done = [n for n in runs if run_status(app.saves / n)[0] == DONE]
        assert len(runs) == 2 and len(done) == 1
        page.locator("#history-runs input").click()
        page.get_by_role("option", name=done[0]).click()
        page.keyboard.press("Escape")
        wait_for(lambda: history_image(page), 15, "the history's reward plot")
        shot(page, "03-history")
        assert not errors, errors
        browser.close()
