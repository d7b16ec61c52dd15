"""Bottleneck adapters (Houlsby): our own, in core/methods/bottleneck.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.methods import MethodSpec
from core.settings import Setting as S

SPEC = MethodSpec(
    id="adapter",
    label="Bottleneck adapter (Houlsby)",
    label_zh="瓶颈适配器（Houlsby Adapter）",
    help="Adds a small bottleneck network (down-projection, activation, up-projection, "
    "residual) after each layer's attention and/or feed-forward output; the base stays "
    "frozen and the model starts out unchanged. The classic adapter; LoRA is usually as "
    "good and merges, adapters add a little inference time.",
    not_mergeable_reason="An adapter has a non-linearity (its activation) between its two "
    "projections, so it cannot be folded into the base weights; it is exported as an "
    "adapter folder.",
    settings=(
        S("adapter_size", 64, "Width of the bottleneck: larger learns more and costs more.",
          "method", label="Bottleneck size", label_zh="瓶颈维度", minimum=1, maximum=16384),
        S("adapter_placement", "both", "Where adapters go in each decoder layer: after the "
          "attention output, after the feed-forward output, or both (the paper's choice).",
          "method", label="Placement", label_zh="插入位置",
          choices=("attention", "ffn", "both")),
        S("adapter_activation", "gelu", "The non-linearity inside the bottleneck.",
          "method", label="Activation", label_zh="激活函数",
          choices=("relu", "gelu", "silu"), advanced=True),
    ),
)


def wrap(model: Any, cfg: Any) -> Any:
    from core.methods import bottleneck

    bottleneck.insert(model, cfg.adapter_size, cfg.adapter_placement, cfg.adapter_activation)
    bottleneck.mark_trainable(model)
    return model


def save(model: Any, out_dir: Path, cfg: Any = None) -> None:
    from core.methods import bottleneck

    bottleneck.save(model, Path(out_dir))


def load(base_model: Any, out_dir: Path, cfg: Any = None) -> Any:
    from core.methods import bottleneck

    model = bottleneck.load(base_model, Path(out_dir))
    for p in model.parameters():  # loaded for use, like a peft adapter
        p.requires_grad_(False)
    return model
