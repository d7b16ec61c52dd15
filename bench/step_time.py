"""Benchmark, in one process: seconds per forward+backward of a LoRA batch on the embedded
model, plain loss (logits everywhere) against loss at labelled positions only, on random
batches and on length-grouped ones, and with each batch's shared start run once
(core.train.shared_prefix). One process and interleaved variants make this
usable on a busy machine, where whole runs (bench/speed.py) are too noisy.
Usage: `python bench/step_time.py [--rounds N] [--datasets ...]`.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--datasets", nargs="+", default=["sentiment", "identity"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import DataCollatorForSeq2Seq
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from core import models
    from core.data.encode import build_datasets
    from core.methods.base import apply_method
    from core.schema.config import RunConfig
    from core.train import fast_loss

    tok = models.load_tokenizer("embedded")
    cfg = RunConfig(model="embedded", method="lora", cutoff_len=256)
    model = apply_method(models.load_model("embedded"), cfg).train()
    lm = fast_loss.causal_lm(model)
    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)

    def step(batch: dict, fast: bool, share: bool) -> float:
        # CPU seconds of this process (all its threads), not wall time: on a machine shared
        # with other jobs, wall time mostly measures the others.
        t0 = time.process_time()
        if fast:
            loss = fast_loss.labelled_loss(lm, batch, share_prefix=share)
        else:
            loss = model(**batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.process_time() - t0

    for name in args.datasets:
        items, _, _ = build_datasets(cfg.replace(dataset=[name]), tok)
        rng = random.Random(0)
        order = list(range(len(items)))
        rng.shuffle(order)
        grouped = get_length_grouped_indices([len(i["input_ids"]) for i in items], args.batch,
                                             generator=torch.Generator().manual_seed(0))
        times: dict[str, list[float]] = {"plain": [], "labelled": [], "labelled+grouped": [],
                                         "labelled+shared": []}
        tokens: dict[str, list[int]] = {k: [] for k in times}
        for r in range(args.rounds):
            rand = [items[i] for i in order[r * args.batch:(r + 1) * args.batch]]
            group = [items[i] for i in grouped[r * args.batch:(r + 1) * args.batch]]
            variants = [("plain", rand, False, False), ("labelled", rand, True, False),
                        ("labelled+grouped", group, True, False),
                        ("labelled+shared", rand, True, True)]
            # A B C D, then D C B A: a machine getting busier or quieter favours none.
            for label, batch_items, fast, share in variants[::-1] if r % 2 else variants:
                batch = collate(batch_items)
                times[label].append(step(batch, fast, share))
                tokens[label].append(batch["input_ids"].numel())
        print(f"\n{name}: CPU seconds per batch of {args.batch} (median of {args.rounds}), "
              f"torch threads {torch.get_num_threads()}")
        base = statistics.median(times["plain"])
        for label, ts in times.items():
            t = statistics.median(ts)
            print(f"  {label:18} {t:7.3f} s  x{base / t:5.2f}  "
                  f"padded tokens/batch {statistics.mean(tokens[label]):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
