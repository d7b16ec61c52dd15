"""Preference accuracy on held-out pairs: does the model rank the chosen reply above the
rejected one?

    python -m core.evaluate.preference saves/<run> [--dataset sentiment_pref_test] [--max-samples N]

For each pair the score of a reply is its summed log-likelihood given the prompt (rendered
with the model's chat template, as in training). Reported for the base and the tuned
model: accuracy (share of pairs with chosen > rejected) and the mean margin
(log p(chosen) - log p(rejected)); for the tuned model also DPO's implicit-reward
accuracy, the share of pairs where the tuned model raised chosen more than rejected
relative to the base.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def reply_logps(model: Any, tokenizer: Any, conversations: list[list[dict]],
                cutoff_len: int = 1024, batch_size: int = 8,
                tick: Callable[[int], None] | None = None) -> list[float]:
    """Summed log-probability of the last (assistant) message of each conversation."""
    import torch

    from core.data.encode import IGNORE_INDEX, encode_messages

    encoded = [encode_messages(tokenizer, c, cutoff_len) for c in conversations]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(encoded), batch_size):
        batch = encoded[i:i + batch_size]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in batch])
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids))
                             for e in batch])
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels))
                               for e in batch])
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = labels[:, 1:].to(device)
        keep = target != IGNORE_INDEX
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out += (picked * keep).sum(-1).tolist()
        if tick is not None:
            tick(len(batch))
    return out


def pair_scores(model: Any, tokenizer: Any, pairs: list[dict], cutoff_len: int = 1024,
                batch_size: int = 8, tick: Callable[[int], None] | None = None,
                ) -> tuple[list[float], list[float]]:
    """(chosen, rejected) summed log-likelihoods; `tick(n)` after each batch of replies."""
    chosen = reply_logps(model, tokenizer, [p["prompt"] + p["chosen"] for p in pairs],
                         cutoff_len, batch_size, tick)
    rejected = reply_logps(model, tokenizer, [p["prompt"] + p["rejected"] for p in pairs],
                           cutoff_len, batch_size, tick)
    return chosen, rejected


def implicit_accuracy(tuned: tuple[list[float], list[float]],
                      base: tuple[list[float], list[float]]) -> float:
    """Share of pairs where tuning raised the chosen reply's log-likelihood more than the
    rejected one's: DPO's implicit reward ranks them right."""
    right = [(tc - bc) > (tr - br) for tc, tr, bc, br in zip(*tuned, *base, strict=True)]
    return sum(right) / len(right)


def summary(chosen: list[float], rejected: list[float]) -> dict[str, float]:
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {"accuracy": sum(m > 0 for m in margins) / len(margins),
            "mean_margin": sum(margins) / len(margins)}


def evaluate_run(result_dir: str | Path, dataset: str, max_samples: int = 0) -> dict[str, Any]:
    """Base vs tuned preference accuracy of a finished run on a pairwise dataset."""
    from core import models
    from core.data.formats import DataError
    from core.data.loader import load_one
    from core.data.registry import resolve
    from core.methods.result import load_trained
    from core.stages.preference import run_folder

    if resolve(dataset).format != "pairwise":
        raise DataError(f"dataset {dataset!r} is not pairwise data; preference accuracy "
                        "needs pairs of a chosen and a rejected reply")
    out = run_folder(str(result_dir), "run")
    pairs = load_one(dataset, argparse.Namespace(max_samples=max_samples, identity_name="",
                                                 identity_author=""))
    model, tokenizer = load_trained(out)
    model.eval()
    cutoff = getattr(model.config, "max_position_embeddings", 1024) or 1024
    tuned = pair_scores(model, tokenizer, pairs, cutoff)
    if hasattr(model, "disable_adapter"):
        base_ctx: Any = model.disable_adapter()
        base_model = model
    else:
        from core.methods.result import read_manifest
        from core.schema.config import RunConfig

        cfg = RunConfig(**read_manifest(out)["settings"])
        base_model = models.load_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
        base_model.eval()
        base_ctx = contextlib.nullcontext()
    with base_ctx:
        base = pair_scores(base_model, tokenizer, pairs, cutoff)
    return {
        "dataset": dataset, "pairs": len(pairs),
        "base": summary(*base),
        "tuned": {**summary(*tuned),
                  "implicit_reward_accuracy": implicit_accuracy(tuned, base)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.evaluate.preference",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run folder (saves/<run>)")
    parser.add_argument("--dataset", default="sentiment_pref_test")
    parser.add_argument("--max-samples", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        result = evaluate_run(args.run, args.dataset, args.max_samples)
    except Exception as exc:  # a message, never a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
