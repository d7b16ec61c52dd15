"""What every export format shares: the shape of a format (ExportFormat), the error it
refuses with, the probe prompt, and the logit comparison that proves an export
reproduces the model it came from."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROBE = "Write one sentence about the sea."
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)\s*", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


class ExportError(ValueError):
    """An export that must not start (or could not finish), and what to do about it."""


def probe_logits(model: Any, tokenizer: Any) -> Any:
    import torch

    from core.data.encode import chat_template

    text = tokenizer.apply_chat_template([{"role": "user", "content": PROBE}], tokenize=False,
                                         add_generation_prompt=True,
                                         chat_template=chat_template(tokenizer))
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        return model(**ids).logits.float().cpu()


def compare_logits(reference: Any, exported: Any, dtype: Any) -> tuple[float, float]:
    """(max abs difference, tolerance). Merging reorders float sums, so the logits of a
    merged model differ by rounding: about 1e-5 relative in fp32, 1e-2 in 16 bits."""
    import torch

    diff = float((reference - exported).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    tolerance = (1e-4 if dtype == torch.float32 else 2e-2) * scale
    return diff, tolerance


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    from core.data.encode import chat_template

    # A model trained without a template of its own was trained on our fallback one;
    # saving it makes the export render prompts exactly as training did.
    tokenizer.chat_template = chat_template(tokenizer)
    tokenizer.save_pretrained(str(folder))


def parse_size(text: str) -> int:
    """Bytes in '200MB', '2GB', '500KB' (decimal units, as Hugging Face uses them)."""
    m = _SIZE_RE.fullmatch(str(text))
    if not m:
        raise ExportError(f"max shard size {text!r}: write a number and a unit, e.g. 200MB "
                          "or 2GB")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size < 1000:
        raise ExportError(f"max shard size {text!r} is too small (at least 1KB)")
    return size


@dataclass(frozen=True)
class ExportFormat:
    name: str
    help: str  # a few words for the CLI's --format
    # (spec, trained folder, base model, plan, why) -> None; raises ExportError before
    # anything is written
    refusal: Callable[[Any, Path, str, str, str], None]
    # (trained, tmp folder, plan, spec, export name, step(message), events) -> the check's
    # figures, at least max_abs_diff, tolerance, dtype and check (what was compared)
    write: Callable[..., dict[str, Any]]
    card: Callable[[str, Path, Path, dict[str, Any], Any], str]  # README.md of the export
    files: Callable[[Path, dict[str, Any]], list[str]]  # the model files written
    summary: Callable[[dict[str, Any]], str]  # the CLI's last line, from the end event
