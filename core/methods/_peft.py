"""Save/load shared by every method that peft implements (LoRA, IA3, prefix, prompt,
P-tuning): peft already writes a self-describing adapter folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def wrap_with(model: Any, peft_config: Any) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, peft_config)


def save(model: Any, out_dir: Path, cfg: Any = None) -> None:
    model.save_pretrained(str(out_dir))


def load(base_model: Any, out_dir: Path, cfg: Any = None) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(out_dir))


def merge(model: Any) -> Any:
    return model.merge_and_unload()


def target_modules(value: list[str]) -> Any:
    """peft's spelling of a target list: the special 'all-linear' is a bare string."""
    if value == ["all-linear"] or value == ["all"]:
        return "all-linear"
    return list(value)
