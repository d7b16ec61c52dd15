"""The training subprocess, driven the way the UI and the CLI drive it: through the runner,
reading only the run directory."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import events_of, tiny

from core import precision
from core.jobs import runner
from core.jobs.device import BusyError
from core.jobs.process import PROCESS, process_alive
from core.jobs.runs import list_runs, run_status
from core.schema.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent


def assert_no_process_left(run_dir: Path) -> None:
    pid = json.loads((run_dir / PROCESS).read_text())["pid"]
    deadline = time.time() + 10
    while process_alive(run_dir) and time.time() < deadline:
        time.sleep(0.1)
    assert not process_alive(run_dir)
    state = Path(f"/proc/{pid}/stat")
    assert not state.exists() or state.read_text().split(") ")[1][0] in "ZX"


def test_tiny_run_writes_the_documented_events(tiny_model_dir, saves):
    cfg = tiny(tiny_model_dir, val_size=0.2, eval_steps=2, save_steps=2)
    run_dir = runner.start(cfg)
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
    events = events_of(run_dir)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    start = events[0]
    # auto: bf16 where this processor has bfloat16 matrix units, else fp32; and why.
    auto = precision.for_run(cfg)
    assert start["device"] == "cpu" and start["precision"] == auto.precision
    assert start["precision_reason"] == auto.reason
    assert 0 < start["trainable_params"] < start["total_params"]
    assert start["total_steps"] == 4
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    for e in steps:
        assert math.isfinite(e["loss"]) and e["tokens_per_second"] > 0
        assert {"epoch", "learning_rate", "grad_norm", "elapsed", "eta", "total_steps"} <= set(e)
    assert [e["step"] for e in events if e["type"] == "eval"][:2] == [2, 4]
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2]
    assert (run_dir / "checkpoints" / "step-2" / "studio.json").is_file()
    end = events[-1]
    assert end["status"] == "done" and end["error"] is None
    assert (Path(end["output_dir"]) / "adapter_config.json").is_file()
    assert (run_dir / "loss.png").stat().st_size > 1000
    assert RunConfig.load(run_dir / "config.yaml").max_steps == 4
    info = list_runs()[0]
    assert info.name == run_dir.name and info.status == "done" and info.step == 4
    assert_no_process_left(run_dir)


def test_run_folders_are_never_reused(tiny_model_dir, saves):
    cfg = tiny(tiny_model_dir, run_name="same", max_steps=1)
    first = runner.start(cfg)
    runner.wait(first, timeout=300)
    second = runner.start(cfg)
    runner.wait(second, timeout=300)
    assert first.name == "same" and second.name == "same-2"
    assert run_status(first)[0] == "done"


def test_second_start_is_refused_while_one_trains(tiny_model_dir, saves):
    run_dir = runner.start(tiny(tiny_model_dir, max_steps=200))
    try:
        with pytest.raises(BusyError, match=run_dir.name):
            runner.start(tiny(tiny_model_dir))
    finally:
        runner.abort(run_dir)


def test_abort_mid_run_saves_and_leaves_no_process(tiny_model_dir, saves):
    run_dir = runner.start(tiny(tiny_model_dir, max_steps=2000))
    deadline = time.time() + 120
    while not any(e["type"] == "step" and e["step"] >= 2 for e in events_of(run_dir)):
        assert time.time() < deadline, (run_dir / "log.txt").read_text()
        assert run_status(run_dir)[0] == "running", (run_dir / "log.txt").read_text()
        time.sleep(0.2)
    assert runner.abort(run_dir, timeout=60) == "aborted"
    end = events_of(run_dir)[-1]
    assert end["type"] == "end" and end["status"] == "aborted"
    assert end["steps"] < 2000
    assert (Path(end["output_dir"]) / "adapter_model.safetensors").is_file()
    assert_no_process_left(run_dir)


def test_broken_dataset_fails_with_file_and_row(tiny_model_dir, saves, tmp_path):
    bad = tmp_path / "broken.jsonl"
    rows = [{"instruction": "Say hi", "output": "hi"}] * 3
    lines = [json.dumps(r) for r in rows] + ['{"instruction": "Say hi", "output": ']
    bad.write_text("\n".join(lines) + "\n")
    run_dir = runner.start(tiny(tiny_model_dir, dataset=[str(bad)]))
    assert runner.wait(run_dir, timeout=120) == "failed"
    end = events_of(run_dir)[-1]
    assert "broken.jsonl" in end["error"]
    assert "row 4" in end["error"] or "line 4" in end["error"], end["error"]
    assert "Traceback" in (run_dir / "log.txt").read_text()


def test_empty_answer_fails_with_field(tiny_model_dir, saves, tmp_path):
    bad = tmp_path / "empty.json"
    bad.write_text(json.dumps([{"instruction": "a", "output": "b"},
                               {"instruction": "c", "output": ""}]))
    run_dir = runner.start(tiny(tiny_model_dir, dataset=[str(bad)]))
    assert runner.wait(run_dir, timeout=120) == "failed"
    error = events_of(run_dir)[-1]["error"]
    assert "empty.json" in error and "row 2" in error and "output" in error


def test_qlora_4bit_on_tiny_shapes(tiny_model_dir, saves):
    run_dir = runner.start(tiny(tiny_model_dir, quantization="4bit", max_steps=2,
                                optim="paged_adamw_8bit"))
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
    steps = [e for e in events_of(run_dir) if e["type"] == "step"]
    assert steps and all(math.isfinite(e["loss"]) for e in steps)


def test_pretraining_stage_on_raw_text(tiny_model_dir, saves):
    run_dir = runner.start(tiny(tiny_model_dir, stage="pt", dataset=["corpus"], max_steps=2))
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()


def test_cli_train_with_flags(tiny_model_dir, saves, tmp_path):
    data = tmp_path / "my.json"
    data.write_text(json.dumps([{"instruction": f"Repeat {i}", "output": str(i)}
                                for i in range(8)]))
    env = {**os.environ, "PEFT_STUDIO_SAVES": str(saves)}
    cmd = [sys.executable, "-m", "core.cli", "train", "--model", str(tiny_model_dir),
           "--dataset", str(data), "--method", "lora", "--max-steps", "3",
           "--learning-rate", "2e-4", "--logging-steps", "1", "--cutoff-len", "64"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "run: " + str(saves) in out.stdout
    assert "step 3/3: loss" in out.stdout and "end: done" in out.stdout
    listing = subprocess.run([sys.executable, "-m", "core.cli", "runs"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert "done" in listing.stdout and "my.json" in listing.stdout


def test_cli_reports_bad_flags_without_starting(saves):
    out = subprocess.run(
        [sys.executable, "-m", "core.cli", "train", "--method", "full", "--lora-rank", "4",
         "--batch-size", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PEFT_STUDIO_SAVES": str(saves)})
    assert out.returncode == 2
    assert "lora_rank: applies only to method lora" in out.stderr
    assert "batch_size: must be at least 1" in out.stderr
    assert not any(saves.iterdir())


@pytest.mark.slow
def test_embedded_model_run_changes_the_model(saves, embedded_dir):
    """A real run on SmolLM2: the adapter loads with PeftModel and changes its output."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = RunConfig(dataset=["identity"], max_steps=6, batch_size=4,
                    gradient_accumulation_steps=1, learning_rate=2e-3, cutoff_len=128,
                    logging_steps=1)
    run_dir = runner.start(cfg)
    assert runner.wait(run_dir, timeout=900) == "done", (run_dir / "log.txt").read_text()
    events = events_of(run_dir)
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    adapter = Path(events[-1]["output_dir"])
    tok = AutoTokenizer.from_pretrained(str(embedded_dir))
    base = AutoModelForCausalLM.from_pretrained(str(embedded_dir))
    ids = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.no_grad():
        before = base(**ids).logits
        tuned = PeftModel.from_pretrained(base, str(adapter))
        after = tuned(**ids).logits
    assert (after - before).abs().max() > 1e-3
