"""The Chat and Export tabs' handlers, called directly (no browser) on the code-word run:
which panes show what, refreshing the run lists, streaming a message to the base and the
tuned model side by side, unloading; planning, starting and following an export."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support import ANSWER, PROMPT

from core.jobs import runner
from webui.tabs.chat import handlers as chatting
from webui.tabs.export import handlers as exporting


@pytest.fixture(scope="module")
def run_name(code_run, tmp_path_factory) -> str:
    """A copy of the code-word run in this module's own saves/, so the jobs it starts
    (exports) stay out of the shared run's folder."""
    saves = tmp_path_factory.mktemp("tabs") / "saves"
    shutil.copytree(code_run, saves / code_run.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFT_STUDIO_SAVES", str(saves))
        yield code_run.name


# -- Chat --------------------------------------------------------------------------------
def test_panes_follow_the_choice_of_run_and_compare(run_name):
    assert chatting.run_choices() == [run_name]
    assert chatting.checkpoints_of(run_name)["choices"] == ["final", "step-15"]
    alone = chatting.targets("embedded", chatting.BASE_ONLY, "final", False, chatting.NONE)
    assert [t and t.label for t in alone] == ["base: embedded", None, None]
    base, tuned, second = chatting.targets(None, run_name, "step-15", True, run_name)
    assert tuned.label == f"{run_name} @ step-15" and base.model == tuned.model
    assert second.label == run_name
    updates = chatting.show_panes(None, run_name, "final", False, chatting.NONE, "en")
    assert [u["visible"] for u in updates[:3]] == [False, True, False]
    error = chatting.show_panes(None, run_name, "step-99", False, chatting.NONE, "en")[-1]
    assert "has no result 'step-99'" in error


def test_refresh_selects_a_new_run_but_keeps_a_choice(run_name):
    run, second, known = chatting.refresh(chatting.BASE_ONLY, chatting.NONE, [])
    assert run["value"] == run_name and known == [run_name]  # it just finished: pick it
    run, second, _ = chatting.refresh(chatting.BASE_ONLY, "gone", [run_name])
    assert run["value"] == chatting.BASE_ONLY and second["value"] == chatting.NONE


def test_send_refuses_empty_text_and_bad_settings(run_name):
    settings = (256, False, 0.7, 0.9, 50, 1.1)
    *_, status = next(chatting.send("  ", None, run_name, "final", False, chatting.NONE, "",
                                    *settings, "en", [], [], []))
    assert status == chatting.T_EMPTY("en")
    bad = (256, False, -1.0, 0.9, 50, 1.1)
    *_, status = next(chatting.send("hi", None, run_name, "final", False, chatting.NONE, "",
                                    *bad, "en", [], [], []))
    assert status.startswith("Error:") and "temperature" in status


def test_send_streams_to_base_and_tuned_then_unload_frees_the_worker(run_name):
    greedy = (16, True, 0.7, 0.9, 50, 1.0)
    try:
        updates = list(chatting.send(PROMPT, None, run_name, "final", True, chatting.NONE,
                                     "", *greedy, "en", [], [], []))
        box, base, tuned, second, status = updates[-1]
        assert box == "" and second == []
        assert tuned == [{"role": "user", "content": PROMPT},
                         {"role": "assistant", "content": ANSWER}]
        assert base[-1]["role"] == "assistant" and base[-1]["content"] != ANSWER
        assert any(u[-1].startswith("Loading") for u in updates)
        assert "tokens/s" in status and "Loaded:" in status
        # Done is said once, when the last pane has answered, never between the panes.
        assert [u[-1] for u in updates].count(status) == 1
        assert not any("tokens/s" in u[-1] for u in updates[:-1])
        assert set(chatting.CLIENT.loaded) == {t.key for t in chatting.targets(
            None, run_name, "final", True, chatting.NONE) if t}
    finally:
        pid = chatting.CLIENT.pid
        message = chatting.unload("en")
    assert pid is not None and str(pid) in message and not chatting.CLIENT.alive
    assert chatting.unload("en") == chatting.T_NOTHING("en")


# -- Export ------------------------------------------------------------------------------
def test_export_plan_and_name_follow_the_choices(run_name):
    assert exporting.plan_text(None, "final", False, "en") == exporting.T_PICK_RUN("en")
    assert "**Merge**" in exporting.plan_text(run_name, "final", False, "en")
    assert "**Adapter only**" in exporting.plan_text(run_name, "final", True, "en")
    checkpoint, plan, name, history = exporting.run_changed(run_name, False, "en")
    assert checkpoint["choices"] == ["final", "step-15"] and name == f"{run_name}-merged"
    _, renamed = exporting.adapter_only_changed(run_name, "final", True, name, "en")
    assert renamed == f"{run_name}-adapter"  # the default name follows the choice
    _, kept = exporting.adapter_only_changed(run_name, "final", True, "mine", "en")
    assert kept == {"__type__": "update"}  # a name the user typed stays
    bar, note, job = exporting.start(None, "final", "x", "2GB", False, False,
                                            "safetensors", "q8_0", "en")
    assert job == "" and note == exporting.T_PICK_RUN("en")


def test_export_started_from_the_tab_is_followed_to_its_checked_result(run_name):
    bar, note, job = exporting.start(run_name, "final", "tab-adapter", "2GB", True,
                                            False, "safetensors", "q8_0", "en")
    assert note == exporting.T_STARTED("en") and Path(job).is_dir(), note
    assert runner.wait(Path(job), timeout=600) == "done", (Path(job) / "log.txt").read_text()
    bar, text, history = exporting.tick(job, run_name, "en")
    assert text.startswith("Exported to `") and "largest logit difference" in text, text
    assert "tab-adapter" in history and "ps-done" in bar
