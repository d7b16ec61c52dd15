"""LLaMA-Factory's own demo files, imported with `peft-studio data import` and trained for
3 steps each on the embedded SmolLM2 through the CLI, as someone moving over would: its
pairs with DPO, its labelled replies with KTO (the labels reaching the trainer), and its
tool-calling conversation with SFT (the tool definitions and calls trained, the results
not). The tiny-model runs of these layouts: tests/test_llamafactory_data.py and
tests/test_tool_calls.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.jobs.events import read_events
from core.paths import ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "llamafactory"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def imported(tmp_path_factory, embedded_dir) -> dict[str, str]:
    """A data/ of its own with LLaMA-Factory's demo folder imported into it."""
    import shutil

    data = tmp_path_factory.mktemp("lf") / "data"
    shutil.copytree(ROOT / "data", data)
    env = {**os.environ, "PEFT_STUDIO_DATA": str(data), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "core.cli", "data", "import", str(FIXTURES)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return env


@pytest.mark.parametrize(("stage", "dataset", "metric"), [
    # KTO's KL term needs two replies in a batch: batch 2 for all
    ("dpo", "dpo_en_demo", "reward_margin"),
    # a KTO batch of two may hold only desirable replies: no margin at that step
    ("kto", "kto_en_demo", "loss"),
    ("sft", "glaive_toolcall_en_demo", "loss"),
])
def test_an_imported_demo_file_trains_on_the_embedded_model(imported, tmp_path, stage,
                                                            dataset, metric):
    saves = tmp_path / "saves"
    env = {**imported, "PEFT_STUDIO_SAVES": str(saves)}
    cmd = [sys.executable, "-m", "core.cli", "train", "--model", "embedded", "--stage", stage,
           "--dataset", dataset, "--max-steps", "3", "--batch-size", "2",
           "--gradient-accumulation-steps", "1", "--cutoff-len", "192", "--logging-steps", "1",
           "--val-size", "0", "--precision", "fp32"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "end: done" in out.stdout, out.stdout + out.stderr
    (run_dir,) = [p for p in saves.iterdir() if (p / "config.yaml").exists()]
    events = read_events(run_dir)[0]
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == 3 and all(metric in e for e in steps), steps
    if stage == "kto":  # both labels reached the trainer
        assert any("reward_chosen" in e for e in steps), steps
        assert any("reward_rejected" in e for e in steps), steps
    start = next(e for e in events if e["type"] == "start")
    assert start["trained_tokens" if stage == "sft" else "train_samples"] > 0, start
    assert json.loads((run_dir / "adapter" / "studio.json").read_text())["settings"][
        "stage"] == stage
