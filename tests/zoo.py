"""Chat-template families for tests: each family's genuine chat template (tests/fixtures/
templates/, see its README for where each comes from) on SmolLM2's tokenizer, with the
family's turn markers added as single special tokens, as the family's own tokenizer has
them; and, for the model zoo, a tiny config of an architecture that ships that template."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"


@dataclass(frozen=True)
class Family:
    name: str
    template: str | None  # file under TEMPLATES; None: no template (our fallback)
    end_of_turn: str  # the token that ends a reply and is trained with it
    specials: tuple[str, ...] = ()
    bos: str | None = None
    eos: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


FAMILIES = {
    "chatml": Family("chatml", "qwen2_5.jinja", "<|im_end|>"),
    "gemma": Family("gemma", "gemma.jinja", "<end_of_turn>",
                    ("<bos>", "<start_of_turn>", "<end_of_turn>"), bos="<bos>"),
    "gemma3": Family("gemma3", "gemma3.jinja", "<end_of_turn>",
                     ("<bos>", "<start_of_turn>", "<end_of_turn>"), bos="<bos>"),
    "llama3": Family("llama3", "llama3.jinja", "<|eot_id|>",
                     ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>"), bos="<|begin_of_text|>", eos="<|eot_id|>"),
    "phi3": Family("phi3", "phi3.jinja", "<|end|>",
                   ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
                   eos="<|endoftext|>"),
    "qwen3": Family("qwen3", "qwen3.jinja", "<|im_end|>", ("<think>", "</think>")),
    "none": Family("none", None, "<|im_end|>"),  # the fallback's end of reply is eos
}


_loaded: dict[str, Any] = {}


def family_tokenizer(base_dir: Path, family: Family) -> Any:
    """SmolLM2's tokenizer dressed as `family`'s: its template and special tokens (a copy
    of one loaded tokenizer: loading takes a second or more on a busy machine)."""
    import copy

    from transformers import AutoTokenizer

    if str(base_dir) not in _loaded:
        _loaded[str(base_dir)] = AutoTokenizer.from_pretrained(str(base_dir))
    tok = copy.deepcopy(_loaded[str(base_dir)])
    if family.specials:
        tok.add_special_tokens({"additional_special_tokens": list(family.specials)})
    if family.bos:
        tok.bos_token = family.bos
    if family.eos:
        tok.eos_token = family.eos
    tok.chat_template = (TEMPLATES / family.template).read_text() if family.template else None
    return tok


def trained_runs(tokenizer: Any, encoded: list[Any]) -> list[str]:
    """The trained tokens of each sample, decoded run by run (consecutive labelled tokens)."""
    runs: list[str] = []
    for e in encoded:
        current: list[int] | None = None
        for token, label in zip(e.input_ids, e.labels, strict=True):
            if label == -100:
                if current:
                    runs.append(tokenizer.decode(current))
                current = None
            else:
                assert label == token
                current = (current or []) + [token]
        if current:
            runs.append(tokenizer.decode(current))
    return runs
