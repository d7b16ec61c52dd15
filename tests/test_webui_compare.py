"""The Train tab's comparison panel, through its handlers."""

from __future__ import annotations

from pathlib import Path

from core.jobs import runner
from core.schema.config import SETTINGS
from webui.tabs.train import compare as compare_panel


def values(**changes):
    base = {name: s.default for name, s in SETTINGS.items()}
    return {**base, **changes}


def test_refuses_bad_settings_with_every_problem(saves):
    message, job = compare_panel.start(values(batch_size=0, max_steps=-1), ["lora"], "", 5)
    assert job is None
    assert "batch_size" in message and "max_steps" in message
    message, job = compare_panel.start(values(), [], "", 5)
    assert job is None and "at least one method" in message


def test_runs_and_shows_one_row_per_method(tiny_model_dir, saves):
    message, job = compare_panel.start(
        values(model=str(tiny_model_dir), max_steps=1, batch_size=2, cutoff_len=64,
               gradient_accumulation_steps=1, logging_steps=1), ["lora", "prompt"], "", 5)
    assert job, message
    assert runner.wait(Path(job), timeout=300) == "done"
    line, table, plot = compare_panel.view(job)
    assert "done" in line
    assert list(table["Method"]) == ["lora", "prompt"]
    assert list(table["Status"]) == ["done", "done"]
    assert plot is not None
    assert compare_panel.latest() == job
