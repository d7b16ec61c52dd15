"""Requests for one model answered together: one padded `generate()` call for all of them.

Rows are padded on the left with an attention mask, so every row's next token comes from
its own last position; generate() derives each row's position ids from that mask, so a
row's tokens sit at the positions they have alone. generate() itself runs greedy: a
logits processor (`PerRow`) applies each row's own settings, its repetition penalty
(to its own tokens only: a penalty over the padding would penalize the pad token, which
is often the EOS) and, for a row that samples, its temperature, top-k and top-p with
transformers' own warpers in generate's order, drawing its token from a generator of its
own when it has a seed, so a seeded reply in a batch is the one it gets alone. Each row
streams its own text (a TextStreamer of its own, as the Chat tab's engine streams), ends
at its own max_tokens, EOS, stop string or disconnect, and from then on only pads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.chat.engine import GenerationSettings

# Warpers a model's generation config may switch on by itself; a sampling row is answered
# alone on such a model rather than sampled without them.
_OTHER_WARPERS = ("min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff")


@dataclass
class Row:
    """One request in a batch. `on_text` gets its text as it streams and says whether the
    row is done (a stop string was hit)."""

    ids: list[int]
    settings: GenerationSettings  # max_new_tokens already fitted to the context
    seed: int | None
    on_text: Callable[[str], bool]
    cancel: threading.Event = field(default_factory=threading.Event)
    tokens: int = 0
    done: bool = False
    pad: int = 0


def samples(settings: GenerationSettings) -> bool:
    return bool(settings.do_sample and settings.temperature > 0)


def batchable(module: Any, settings: GenerationSettings) -> bool:
    """Whether a request can share a batch on this model: not a prompt-learning adapter
    (its virtual tokens are placed by peft's own generate), and a sampling request only
    where the model's generation config adds no warper of its own."""
    config = getattr(module, "peft_config", None)
    if config:
        active = config.get(getattr(module, "active_adapter", "default"))
        if getattr(active, "is_prompt_learning", False):
            return False
    if not samples(settings):
        return True
    defaults = getattr(module, "generation_config", None)
    return not any(_switched_on(name, getattr(defaults, name, None)) for name in _OTHER_WARPERS)


def _switched_on(name: str, value: Any) -> bool:
    if value is None:
        return False
    return value < 1.0 if name == "typical_p" else (name == "min_p" or 0.0 < value < 1.0)


def _logits_processor(rows: list[Row], device: Any) -> Any:
    import torch
    from transformers import (
        LogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    def steps(s: GenerationSettings) -> list[Any]:
        out = [RepetitionPenaltyLogitsProcessor(float(s.repetition_penalty))] \
            if s.repetition_penalty != 1.0 else []
        if samples(s):  # generate's order and conditions (GenerationMixin._get_logits_processor)
            out += [TemperatureLogitsWarper(float(s.temperature))] if s.temperature != 1.0 else []
            out += [TopKLogitsWarper(int(s.top_k), min_tokens_to_keep=1)] if s.top_k else []
            out += [TopPLogitsWarper(float(s.top_p), min_tokens_to_keep=1)] if s.top_p < 1.0 else []
        return out

    chains = [steps(r.settings) for r in rows]
    generators = [torch.Generator(device=device).manual_seed(r.seed)
                  if samples(r.settings) and r.seed is not None else None for r in rows]

    class PerRow(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            for i, row in enumerate(rows):
                if row.done:
                    continue
                own, logits = input_ids[i:i + 1, row.pad:], scores[i:i + 1]
                for step in chains[i]:
                    logits = step(own, logits)
                if samples(row.settings):  # drawn here; generate's argmax then takes it
                    probs = torch.nn.functional.softmax(logits, dim=-1)
                    token = torch.multinomial(probs, num_samples=1, generator=generators[i])
                    logits = torch.full_like(logits, float("-inf")).scatter(1, token, 0.0)
                scores[i:i + 1] = logits
            return scores

    return PerRow()


def _streamer(rows: list[Row], tokenizer: Any, eos: set[int]) -> Any:
    from transformers import TextStreamer
    from transformers.generation.streamers import BaseStreamer

    class RowText(TextStreamer):
        def __init__(self, row: Row) -> None:
            super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
            self.row = row

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text and self.row.on_text(text):
                self.row.done = True

    class Rows(BaseStreamer):
        def __init__(self) -> None:
            self.texts, self.prompt = [RowText(r) for r in rows], True

        def put(self, value: Any) -> None:
            if self.prompt:  # generate() hands over the prompts first
                self.prompt = False
                return
            for row, text, token in zip(rows, self.texts, value.tolist(), strict=True):
                if row.done or row.cancel.is_set():
                    row.done = True
                    continue
                row.tokens += 1
                text.put(value.new_tensor([token]))
                if token in eos or row.tokens >= row.settings.max_new_tokens:
                    row.done = True

        def end(self) -> None:
            for text in self.texts:
                text.end()

    return Rows()


def _eos(module: Any, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(module, "generation_config", None), "eos_token_id", None)
    ids = tokenizer.eos_token_id if ids is None else ids
    return set(ids if isinstance(ids, list) else [] if ids is None else [ids])


def generate(entry: Any, rows: list[Row]) -> float:
    """Answer `rows` on the loaded model `entry` (core.chat.engine's) in one batch; each
    row's `tokens` is then its reply's length. Returns the seconds it took."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    from core.chat.limits import Stopped, stoppable
    from core.methods.result import generate_extras

    tok, model = entry.tokenizer, entry.model
    pad_id = tok.pad_token_id or tok.eos_token_id  # as the Chat tab's engine pads
    width = max(len(r.ids) for r in rows)
    for r in rows:
        r.pad = width - len(r.ids)
    ids = torch.tensor([[pad_id] * r.pad + r.ids for r in rows], device=model.device)
    mask = torch.tensor([[0] * r.pad + [1] * len(r.ids) for r in rows], device=model.device)
    decoding = threading.Event()

    class Ended(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
            decoding.set()
            made = input_ids.shape[1] - width
            return torch.tensor([r.done or r.cancel.is_set() or made >= r.settings.max_new_tokens
                                 for r in rows], dtype=torch.bool, device=input_ids.device)

    t0 = time.time()
    with entry.active() as module, torch.inference_mode(), stoppable(
            module, lambda: all(r.cancel.is_set() for r in rows) and not decoding.is_set()):
        kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, temperature=None,
                      top_p=None, top_k=None, repetition_penalty=1.0,
                      max_new_tokens=max(int(r.settings.max_new_tokens) for r in rows),
                      logits_processor=LogitsProcessorList([_logits_processor(rows, model.device)]),
                      stopping_criteria=StoppingCriteriaList([Ended()]),
                      streamer=_streamer(rows, tok, _eos(module, tok)), pad_token_id=pad_id)
        try:
            module.generate(**kwargs, **generate_extras(module))
        except Stopped:  # every client went away during the prefill
            pass
    return time.time() - t0
