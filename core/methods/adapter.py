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
    help_zh="在每层的注意力和/或前馈输出之后加入一个小的瓶颈网络（降维、激活、升维、残差）；基础"
            "模型冻结，训练开始时模型完全不变。经典的适配器方法；LoRA 通常同样好且可合并，适配器"
            "会略增推理时间。",
    not_mergeable_reason="An adapter has a non-linearity (its activation) between its two "
    "projections, so it cannot be folded into the base weights; it is exported as an "
    "adapter folder.",
    settings=(
        S("adapter_size", 64, "Width of the bottleneck: larger learns more and costs more.",
          "method", label="Bottleneck size", label_zh="瓶颈维度", minimum=1, maximum=16384,
          help_zh="瓶颈的宽度：越大学得越多，开销也越大。"),
        S("adapter_placement", "both", "Where adapters go in each decoder layer: after the "
          "attention output, after the feed-forward output, or both (the paper's choice).",
          "method", label="Placement", label_zh="插入位置",
          choices=("attention", "ffn", "both"),
          help_zh="适配器在每个解码层中的位置：注意力输出之后、前馈输出之后，或两处都放（论文的"
                  "做法）。"),
        S("adapter_activation", "gelu", "The non-linearity inside the bottleneck.",
          "method", label="Activation", label_zh="激活函数",
          choices=("relu", "gelu", "silu"), advanced=True,
          help_zh="瓶颈内部的非线性激活函数。"),
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
