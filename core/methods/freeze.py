"""Freeze tuning: train only some decoder layers (and chosen extra modules) in full."""

from __future__ import annotations

from typing import Any

from core.methods.full import Full
from core.schema.setting import Setting as S


def decoder_layers(model: Any) -> tuple[str, Any]:
    """(name, ModuleList) of the model's stack of decoder layers: its longest ModuleList."""
    from torch import nn

    stacks = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not stacks:
        raise ValueError("freeze: cannot find the decoder layers of this model")
    return max(stacks, key=lambda item: len(item[1]))


class Freeze(Full):
    """The result is a whole model, saved, loaded and "merged" exactly as full tuning's."""

    def wrap(self, model: Any, cfg: Any) -> Any:
        for p in model.parameters():
            p.requires_grad_(False)
        _, layers = decoder_layers(model)
        n = min(cfg.freeze_trainable_layers, len(layers))
        chosen = list(layers)[-n:] if cfg.freeze_from == "last" else list(layers)[:n]
        for layer in chosen:
            layer.requires_grad_(True)
        modules = dict(model.named_modules())
        for extra in cfg.freeze_extra_modules:
            found = [m for name, m in modules.items()
                     if name == extra or name.endswith("." + extra)]
            if not found:
                raise ValueError(f"freeze_extra_modules: no module named {extra!r} in this model")
            for m in found:
                m.requires_grad_(True)
        return model


METHOD = Freeze(
    id="freeze",
    label="Freeze tuning (last layers)",
    label_zh="冻结微调（只训练部分层）",
    help="Trains the last (or first) few decoder layers in full and keeps the rest frozen. "
    "Between LoRA and full tuning in memory and capacity; the result is a whole model. "
    "Training the last layers suits adapting the output style.",
    help_zh="完整训练最后（或最前）几个解码层，其余保持冻结。显存和能力介于 LoRA 与全参数微调之间"
            "；结果是完整模型。训练最后几层适合调整输出风格。",
    saves_full_model=True,
    settings=(
        S("freeze_trainable_layers", 2, "How many decoder layers train (all of them when "
          "the model has fewer).", "method", label="Trainable layers",
          label_zh="可训练层数", minimum=1, maximum=1024,
          help_zh="训练多少个解码层（模型层数更少时训练全部）。"),
        S("freeze_from", "last", "Train the layers nearest the output (last) or the "
          "input (first).", "method", label="Which layers", label_zh="训练哪一端的层",
          choices=("last", "first"),
          help_zh="训练靠近输出（last）或靠近输入（first）的层。"),
        S("freeze_extra_modules", [], "Also train these modules in full, by name: for "
          "example embed_tokens (the input embeddings; tied models share them with the "
          "output head), norm (the final norm) or lm_head.", "method",
          label="Extra trainable modules", label_zh="额外可训练模块", item_type=str,
          choices=("embed_tokens", "norm", "lm_head"), allow_custom=True, advanced=True,
          help_zh="按名称额外完整训练这些模块：例如 embed_tokens（输入嵌入；权重共享的模型与输出"
                  "头共用）、norm（最后的归一化层）或 lm_head。"),
    ),
    position=7,
)
