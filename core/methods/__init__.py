"""The method registry and the one shape every method has.

A fine-tuning method is one module in this package that declares `METHOD`, an instance
of a `Method` subclass: its id, texts and settings (what the UI, the CLI and validation
read), and how it wraps, saves, loads and merges a model (what the trainer, chat,
evaluation and export call). `Method` holds the defaults, which are peft's; a method
overrides only what is its own. Adding a method is adding a module: the registry finds
it. torch and peft are imported inside the methods, never at module level: the web UI
reads the declarations at start-up.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.schema.setting import Setting


@dataclass(frozen=True)
class Method:
    id: str
    label: str
    label_zh: str
    help: str
    help_zh: str = ""
    settings: tuple[Setting, ...] = ()
    # Merge into the base weights on export (LoRA family) or export the adapter alone.
    mergeable: bool = False
    # Accepts a bitsandbytes 8/4-bit base (QLoRA and friends).
    quantizable: bool = False
    # Saves a whole model rather than an adapter (full and freeze tuning).
    saves_full_model: bool = False
    not_mergeable_reason: str = ""
    position: int = 100  # where the method picker lists it: lower first

    def wrap(self, model: Any, cfg: Any) -> Any:
        """The model with only this method's parameters trainable."""
        raise NotImplementedError(f"{self.id} does not say how to wrap a model")

    def save(self, model: Any, out_dir: Path, cfg: Any = None,
             state_dict: dict[str, Any] | None = None) -> None:
        """Write the trained weights (a peft adapter folder by default). `state_dict`, when
        given, holds the weights gathered from a sharded run (ZeRO-3, FSDP), whose `model`
        holds only this process's shards: the weights are taken from it, by name."""
        if state_dict is None:
            model.save_pretrained(str(out_dir))
        else:  # peft picks the adapter's entries out of the whole state dict
            model.save_pretrained(str(out_dir), state_dict=state_dict)

    def load(self, base_model: Any, out_dir: Path, cfg: Any = None) -> Any:
        """`base_model` with the weights saved in `out_dir` (a peft adapter by default)."""
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(out_dir))

    def merge(self, model: Any) -> Any:
        """The model with the method folded into its weights (peft's merge by default)."""
        if not self.mergeable:
            raise ValueError(self.not_mergeable_reason or f"{self.id} cannot be merged")
        return model.merge_and_unload()

    def create_optimizer(self, model: Any, cfg: Any, args: Any) -> Any | None:
        """A custom optimizer (LoRA+), or None for the Trainer's usual one."""
        return None


def peft_wrap(model: Any, peft_config: Any) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, peft_config)


def peft_targets(value: list[str]) -> Any:
    """peft's spelling of a target list: the special 'all-linear' is a bare string."""
    if value == ["all-linear"] or value == ["all"]:
        return "all-linear"
    return list(value)


def _discover() -> dict[str, Method]:
    found = []
    for module in pkgutil.iter_modules(__path__):
        method = getattr(importlib.import_module(f"{__name__}.{module.name}"), "METHOD", None)
        if isinstance(method, Method):
            # A method's own settings apply to it alone unless it says otherwise.
            own = tuple(s if s.methods is not None else
                        Setting(**{**s.__dict__, "methods": (method.id,)})
                        for s in method.settings)
            found.append(dataclasses.replace(method, settings=own))
    return {m.id: m for m in sorted(found, key=lambda m: m.position)}


METHODS: dict[str, Method] = _discover()


def implementation(method: str) -> Method:
    """The method called `method`; KeyError naming the choices if there is none."""
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[method]
