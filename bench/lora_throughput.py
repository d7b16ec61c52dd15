"""Benchmark: a fixed LoRA job on the embedded model.

Prints training throughput (non-padding tokens per second), the time from pressing
Start to the first loss event, and the trainer's peak memory. Not a test: numbers depend
on the machine. Usage: `make bench` or `python bench/lora_throughput.py [--steps N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.jobs import runner
from core.jobs.events import read_events  # noqa: E402
from core.schema.config import RunConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--method", default="lora")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    cfg = RunConfig(model=args.model, method=args.method, dataset=["sentiment"],
                    max_steps=args.steps, batch_size=8, gradient_accumulation_steps=1,
                    cutoff_len=256, logging_steps=1, learning_rate=5e-4)
    saves = Path(tempfile.mkdtemp(prefix="peft-studio-bench-"))
    t0 = time.time()
    run_dir = runner.start(cfg, saves)
    first_loss_at = None
    while True:
        events, _ = read_events(run_dir)
        if first_loss_at is None and any(e["type"] == "step" for e in events):
            first_loss_at = time.time() - t0
        if any(e["type"] == "end" for e in events):
            break
        time.sleep(0.1)
    end = events[-1]
    if end["status"] != "done":
        print(f"run {end['status']}: {end.get('error')}", file=sys.stderr)
        return 1
    steps = [e for e in events if e["type"] == "step"]
    start = next(e for e in events if e["type"] == "start")
    # Throughput from the first logged step on, so model loading is not counted in it.
    tokens = steps[-1]["tokens_seen"] - steps[0]["tokens_seen"]
    seconds = steps[-1]["elapsed"] - steps[0]["elapsed"]
    result = {
        "model": args.model,
        "method": args.method,
        "device": start["device"],
        "steps": len(steps),
        "batch_size": cfg.batch_size,
        "tokens_per_second": round(tokens / seconds, 1),
        "seconds_per_step": round(seconds / (len(steps) - 1), 3),
        "start_to_first_loss_s": round(first_loss_at, 2),
        "peak_memory_mb": end["peak_memory_mb"],
        "trainable_params": start["trainable_params"],
        "final_loss": end["final_loss"],
    }
    out = Path(__file__).resolve().parent / "output"
    out.mkdir(exist_ok=True)
    (out / "lora_throughput.json").write_text(json.dumps(result, indent=2))
    for k, v in result.items():
        print(f"{k:24} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
