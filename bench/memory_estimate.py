"""Benchmark: the Train tab's memory estimate against each method's measured peak.

For every method (and the bundled datasets given), one short run on the embedded model at
batch 8, started by the runner as the Start button does; its measured peak (the trainer
process's own VmHWM on a CPU, torch's peak on a GPU) beside the estimate the Train tab
shows for the same settings, computed by the same handler from the probe's answer. Not a
test: a run on the embedded model per method takes minutes on 2 cores; the tiny-model
check of the estimate is tests/test_memory_estimate.py.
Usage: `python bench/memory_estimate.py [--methods lora full ...] [--datasets identity ...]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.jobs import runner  # noqa: E402
from core.jobs.events import read_events  # noqa: E402
from core.methods import METHODS  # noqa: E402
from core.schema.config import RunConfig  # noqa: E402
from core.train import memory_estimate as me  # noqa: E402
from webui.tabs.train import handlers as training  # noqa: E402


def measure(method: str, dataset: str, steps: int, saves: Path) -> dict:
    values = {"model": "embedded", "method": method, "dataset": [dataset], "batch_size": 8,
              "gradient_accumulation_steps": 1, "save_steps": 0, "logging_steps": 1,
              "max_steps": steps, "val_size": 0.0}
    run = runner.start(RunConfig(**values), saves)
    status = runner.wait(run, timeout=3600)
    end = next((e for e in read_events(run)[0] if e["type"] == "end"), {})
    settings = RunConfig(**values).to_dict()
    lengths, share, _ = training.data_lengths(settings)
    result = training.count_parameters(values)
    est = me.estimate(result, settings, on_gpu=False, bf16=False, lengths=lengths,
                      trained_share=share)
    measured = end.get("peak_memory_mb")
    return {"method": method, "dataset": dataset, "status": status,
            "measured_mb": measured, "estimated_mb": round(est.total / 2**20),
            "ratio": round(est.total / 2**20 / measured, 2) if measured else None,
            "parts_mb": {k: round(v / 2**20) for k, v in est.parts().items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--datasets", nargs="+", default=["identity", "sentiment"])
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    saves = Path(tempfile.mkdtemp(prefix="peft-studio-bench-"))
    rows = []
    print(f"{'method':8} {'dataset':10} {'measured MB':>11} {'estimate MB':>11} {'ratio':>6}")
    for dataset in args.datasets:
        for method in args.methods:
            row = measure(method, dataset, args.steps, saves)
            rows.append(row)
            print(f"{method:8} {dataset:10} {row['measured_mb'] or '-':>11} "
                  f"{row['estimated_mb']:>11} {row['ratio'] or '-':>6}  {row['status']}  "
                  f"{row['parts_mb']}", flush=True)
    out = Path(__file__).resolve().parent / "output"
    out.mkdir(exist_ok=True)
    (out / "memory_estimate.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
