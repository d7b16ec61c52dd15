"""Benchmark: Chat's generation speed against plain model.generate of the base model.

A LoRA adapter (its B matrices set to small random values, so it changes the outputs) is
saved as a run result and answered through Chat's engine, with the adapter merged into
the weights (what Chat does) and unmerged (what it did before), and the base model
through plain `generate` without a streamer; and plain `generate` of the base held in
bfloat16 beside it, A B A B (core/precision.py: where bf16 would pay for generation on this
processor). Tokens per second, median of a few prompts, greedy. Usage:
`python bench/generation.py [--tokens N]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = ["Write a short poem about the sea.", "Explain what a neural network is.",
           "List three uses of copper and say why."]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from core import models
    from core.chat.engine import Engine, GenerationSettings
    from core.jobs.runs import Target
    from core.methods.base import apply_method
    from core.methods.result import save_trained
    from core.schema.config import RunConfig

    torch.manual_seed(0)
    tok = models.load_tokenizer("embedded")
    base = models.load_model("embedded").eval()
    base_bf16 = models.load_model("embedded", dtype=torch.bfloat16).eval()
    settings = GenerationSettings(max_new_tokens=args.tokens, do_sample=False)

    def plain(prompt: str, base: object = base) -> float:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        inputs = tok(text, return_tensors="pt", add_special_tokens=False)
        t0 = time.time()
        with torch.inference_mode():
            out = base.generate(**inputs, **settings.generate_kwargs(),
                                pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return (out.shape[1] - inputs["input_ids"].shape[1]) / (time.time() - t0)

    rates: dict[str, list[float]] = {"plain generate (base)": [],
                                     "plain generate (base, bf16)": []}
    for i, prompt in enumerate(PROMPTS):  # A B, then B A
        pair = [("plain generate (base)", base), ("plain generate (base, bf16)", base_bf16)]
        for label, model in pair[::-1] if i % 2 else pair:
            rates[label].append(plain(prompt, model))
    results = {label: statistics.median(r) for label, r in rates.items()}
    del base_bf16

    cfg = RunConfig(model="embedded", method="lora")
    lora = apply_method(models.load_model("embedded"), cfg)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    out = Path(tempfile.mkdtemp(prefix="peft-studio-genbench-")) / "adapter"
    save_trained(lora, out, cfg, tok)
    del lora

    engine = Engine()
    target = Target("embedded", str(out), "bench")
    for label, merge in (("chat, LoRA unmerged", False), ("chat, LoRA merged", True)):
        engine.load(target)
        entry = engine.entry(target)
        if not merge and entry.merge:
            entry.merge = False
            if any(getattr(m, "merged", False) for m in entry.model.modules()):
                entry.model.unmerge_adapter()
        entry.merge = merge
        rates = []
        for prompt in PROMPTS:
            from core.chat.engine import Reply

            reply = Reply()
            for _ in engine.stream(target, [{"role": "user", "content": prompt}], settings,
                                   reply=reply):
                pass
            rates.append(reply.tokens / reply.seconds)
        results[label] = statistics.median(rates)
    for label, rate in results.items():
        print(f"{label:28} {rate:8.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
