"""The method registry.

Each fine-tuning method is one small module in this package that declares a `SPEC`
(its id, help text and settings) and implements, with torch/peft imported lazily:

    wrap(model, cfg) -> model            make only the method's parameters trainable
    save(model, out_dir, cfg) -> None    write the trained weights (adapter or model)
    load(base_model, out_dir, cfg) -> model
    merge(model) -> model                only when SPEC.mergeable
    create_optimizer(model, cfg, args)   optional: a custom optimizer (LoRA+), or None

The trainer, chat, evaluation and export look methods up here and never branch on a
method's name, so adding a method is adding a module and one line to `_MODULES`.
Declarations must stay import-light: the web UI reads them at start-up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from core.settings import Setting


@dataclass(frozen=True)
class MethodSpec:
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


_MODULES = ("lora", "ia3", "prefix", "prompt", "ptuning", "adapter", "freeze", "full")


def _load_specs() -> dict[str, MethodSpec]:
    specs = {}
    for name in _MODULES:
        spec: MethodSpec = importlib.import_module(f"core.methods.{name}").SPEC
        # A method's own settings apply to it alone unless it says otherwise.
        fixed = tuple(
            s if s.methods is not None else _with_methods(s, (spec.id,)) for s in spec.settings
        )
        specs[spec.id] = MethodSpec(**{**spec.__dict__, "settings": fixed})
    return specs


def _with_methods(setting: Setting, methods: tuple[str, ...]) -> Setting:
    return Setting(**{**setting.__dict__, "methods": methods})


METHODS: dict[str, MethodSpec] = _load_specs()


def implementation(method: str) -> ModuleType:
    """The module that implements `method` (imported on first use: it pulls in torch)."""
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return importlib.import_module(f"core.methods.{method}")
