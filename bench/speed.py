"""Benchmark: PEFT Studio's trainer against the plain transformers recipe.

The plain recipe is transformers' Trainer with DataCollatorForSeq2Seq padding each batch
to its longest sample and the model's own loss (logits at every position), fed by the
project's own encoding: a run with `batching: padded` and `fast_loss: false`. PEFT
Studio's trainer is a run with the default settings. Both train the same LoRA job on the
embedded model, as separate processes started by the runner (so peak memory is each
process's own), interleaved A B A B so a busy machine slows both alike; medians are
reported.

Printed per dataset: samples/s, non-padding tokens/s, final evaluation loss (on the
same held-out 10%: a training-step loss would compare different batches), peak RSS, and
the ratio studio / plain. `--variants fp32 auto` compares instead the studio's trainer in
fp32 with `precision: auto` (bf16 on a CPU with bfloat16 matrix units, core/precision.py),
naming the processor. Usage: `make bench` or `python bench/speed.py [--steps N]
[--repeats N] [--datasets sentiment identity] [--variants plain studio | fp32 auto]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.jobs import runner
from core.jobs.events import read_events  # noqa: E402
from core.schema.config import RunConfig  # noqa: E402

VARIANTS = {
    "plain": {"batching": "padded", "fast_loss": False, "precision": "fp32"},
    "studio": {"precision": "fp32"},
    "fp32": {"precision": "fp32"},
    "auto": {"precision": "auto"},
}
METRICS = ("samples_per_s", "tokens_per_s", "final_loss", "peak_rss_mb")


def run_once(dataset: str, variant: str, steps: int, saves: Path) -> dict:
    cfg = RunConfig(model="embedded", method="lora", dataset=[dataset], max_steps=steps,
                    batch_size=8, gradient_accumulation_steps=1, cutoff_len=256,
                    logging_steps=1, learning_rate=5e-4, val_size=0.1,
                    eval_steps=10 * steps, **VARIANTS[variant])
    run_dir = runner.start(cfg, saves)
    while not any(e["type"] == "end" for e in read_events(run_dir)[0]):
        time.sleep(0.2)
    events = read_events(run_dir)[0]
    end = events[-1]
    if end["status"] != "done":
        raise SystemExit(f"{variant} run on {dataset} {end['status']}: {end.get('error')}")
    start = next(e for e in events if e["type"] == "start")
    logged = [e for e in events if e["type"] == "step"]
    # From the first logged step on, so model loading and the first step's warm-up
    # are not counted.
    seconds = logged[-1]["elapsed"] - logged[0]["elapsed"]
    done_steps = logged[-1]["step"] - logged[0]["step"]
    return {
        "samples_per_s": done_steps * cfg.batch_size / seconds,
        "tokens_per_s": (logged[-1]["tokens_seen"] - logged[0]["tokens_seen"]) / seconds,
        "final_loss": end["final_eval_loss"],
        "peak_rss_mb": end["peak_memory_mb"],
        "batching": start.get("batching"),
        "fast_loss": start.get("fast_loss"),
        "device": start["device"],
        "precision": f"{start.get('precision')} ({start.get('precision_reason')})",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--datasets", nargs="+", default=["sentiment", "identity"])
    parser.add_argument("--variants", nargs=2, default=["plain", "studio"],
                        choices=list(VARIANTS), help="A and B, the ratio is B / A")
    args = parser.parse_args()
    a, b = args.variants
    import torch

    caps = torch.cpu.get_capabilities()
    print(f"processor: {caps.get('cpu_name')}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; bf16 units: amx_bf16={caps.get('amx_bf16')} "
          f"avx512_bf16={caps.get('avx512_bf16')}", flush=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    saves = Path(tempfile.mkdtemp(prefix="peft-studio-bench-"))
    report: dict[str, dict] = {}
    for dataset in args.datasets:
        runs: dict[str, list[dict]] = {v: [] for v in (a, b)}
        for _ in range(args.repeats):
            for variant in (a, b):  # A B A B
                runs[variant].append(run_once(dataset, variant, args.steps, saves))
                print(f"  {dataset} {variant}: {json.dumps(runs[variant][-1])}", flush=True)
        medians = {v: {m: statistics.median(r[m] for r in rs) for m in METRICS}
                   for v, rs in runs.items()}
        ratio = {m: medians[b][m] / medians[a][m] for m in METRICS}
        report[dataset] = {**medians, "ratio": ratio, "runs": runs}
        print(f"\n{dataset} (median of {args.repeats}, {args.steps} steps, batch 8, "
              f"{runs[b][0]['device']}; {b} batching: {runs[b][0]['batching']}, "
              f"precision {runs[b][0]['precision']})")
        print(f"{'':10}" + "".join(f"{m:>16}" for m in METRICS))
        for row in (a, b, "ratio"):
            values = medians.get(row) or ratio
            print(f"{row:10}" + "".join(f"{values[m]:>16.3f}" for m in METRICS))
    out = Path(__file__).resolve().parent / "output"
    out.mkdir(exist_ok=True)
    (out / f"speed-{a}-{b}.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
