"""On the embedded SmolLM2: a short run of LoRA, prefix tuning and the bottleneck adapter
each ends done, lowers the loss, and changes the model's answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.jobs import runner
from core.jobs.events import read_events
from core.methods.result import generate_extras
from core.schema.config import RunConfig

QUESTION = [{"role": "user", "content": "Who are you? Tell me your name."}]
# Learning rates in each method's usual range: soft prompts want far larger steps.
RATES = {"lora": 2e-3, "prefix": 2e-2, "adapter": 2e-3}


def greedy(model, tokenizer, max_new_tokens: int = 16) -> str:
    import torch

    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             **generate_extras(model))
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def base_answer(embedded_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_dir))
    return greedy(AutoModelForCausalLM.from_pretrained(str(embedded_dir)), tok)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(RATES))
def test_short_run_changes_the_answers(method, saves, base_answer):
    from core.methods.result import load_trained

    cfg = RunConfig(method=method, dataset=["identity"], identity_name="Quillby",
                    max_steps=10, batch_size=4, gradient_accumulation_steps=1,
                    learning_rate=RATES[method], cutoff_len=128, logging_steps=1,
                    lr_scheduler_type="constant")
    run_dir = runner.start(cfg)
    assert runner.wait(run_dir, timeout=900) == "done", (run_dir / "log.txt").read_text()
    events, _ = read_events(run_dir)
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    model, tokenizer = load_trained(Path(events[-1]["output_dir"]))
    answer = greedy(model, tokenizer)
    assert answer != base_answer, f"{method} did not change the answer: {answer!r}"
