"""Benchmark: the served endpoint (`peft-studio serve`) against plain model.generate.

Serves the embedded model (a LoRA run of it with --run) as a job on a free port, in a
saves/ folder of its own, and measures greedy generation of N tokens: plain `generate` in
this process (the floor), one client at a time through the OpenAI client (what a
request's HTTP and streaming cost), and 8 clients at once (total tokens/s), served in
batches (--max-batch 8, the default) and one at a time (--max-batch 1); the 8 replies of
both must be the same. Median of a few prompts; plain `generate` is measured before and
after the served ones (A B B A), so the drift of a busy machine shows.
Usage: `python bench/serving.py [--tokens N] [--run RUN_DIR]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = ["Write a short poem about the sea.", "Explain what a neural network is.",
           "List three uses of copper and say why."]


def plain_rate(tokens: int, loaded: dict) -> float:
    import torch

    from core import models
    from core.chat.engine import GenerationSettings

    if not loaded:
        loaded.update(tok=models.load_tokenizer("embedded"),
                      model=models.load_model("embedded").eval())
    tok, model = loaded["tok"], loaded["model"]
    settings = GenerationSettings(max_new_tokens=tokens, do_sample=False)
    rates = []
    for prompt in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        inputs = tok(text, return_tensors="pt", add_special_tokens=False)
        t0 = time.time()
        with torch.inference_mode():
            out = model.generate(**inputs, **settings.generate_kwargs(),
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        rates.append((out.shape[1] - inputs["input_ids"].shape[1]) / (time.time() - t0))
    return statistics.median(rates)


def serve(run: str | None, max_batch: int) -> tuple[Path, str, str]:
    from core.serve import job as serving

    spec = serving.ServeSpec(runs=[run] if run else [], model="embedded", port=0,
                             max_batch=max_batch)
    job = serving.start(spec)
    while (ready := serving.ready_event(job)) is None:
        time.sleep(0.5)
    return job, ready["url"], ready["models"][0]


def served(run: str | None, max_batch: int, tokens: int, single: bool
           ) -> tuple[dict[str, float], list[str]]:
    """Rates through one server: one client at a time (when `single`), then 8 at once;
    the 8 replies, to compare with those asked alone."""
    import openai

    from core.serve import job as serving

    job, url, model = serve(run, max_batch)
    rates = {}
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=900)

        def ask(prompt: str) -> tuple[int, float, str]:
            t0 = time.time()
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], temperature=0,
                max_tokens=tokens)
            return (reply.usage.completion_tokens, time.time() - t0,
                    reply.choices[0].message.content)

        ask(PROMPTS[0])  # warm-up
        if single:
            rates["served, one client"] = statistics.median(
                n / s for n, s, _ in map(ask, PROMPTS))
        t0 = time.time()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, [PROMPTS[i % len(PROMPTS)] for i in range(8)]))
        label = f"served, 8 clients (total), max-batch {max_batch}"
        rates[label] = sum(n for n, _, _ in answers) / (time.time() - t0)
    finally:
        serving.stop(job)
    return rates, [text for _, _, text in answers]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--run", help="a finished run of the embedded model to serve")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.run:  # a device lock of its own: the bench never waits for a real job
        os.environ["PEFT_STUDIO_SAVES"] = tempfile.mkdtemp(prefix="peft-studio-servebench-")
    loaded: dict = {}
    before = plain_rate(args.tokens, loaded)
    batched, together = served(args.run, 8, args.tokens, single=True)
    one_by_one, alone = served(args.run, 1, args.tokens, single=False)
    # Before and after the served ones (A B B A): a busy machine's drift shows as their gap.
    after = plain_rate(args.tokens, loaded)
    results = {"plain generate, before": before, **batched, **one_by_one,
               "plain generate, after": after}
    for label, rate in results.items():
        print(f"{label:44} {rate:8.1f} tokens/s")
    same = sum(a == b for a, b in zip(together, alone, strict=True))
    print(f"replies in batches of 8 equal to those answered one at a time: {same}/8")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0 if same == 8 else 1


if __name__ == "__main__":
    sys.exit(main())
