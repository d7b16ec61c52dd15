"""Full fine-tuning: every weight trains; the result is a whole model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.methods import Method


class Full(Method):
    """Also the base of freeze tuning: a whole model is saved, loaded and "merged" alike."""

    def wrap(self, model: Any, cfg: Any) -> Any:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model: Any, out_dir: Path, cfg: Any = None,
             state_dict: dict[str, Any] | None = None) -> None:
        if state_dict is None:
            model.save_pretrained(str(out_dir), safe_serialization=True)
        else:
            model.save_pretrained(str(out_dir), safe_serialization=True, state_dict=state_dict)

    def load(self, base_model: Any, out_dir: Path, cfg: Any = None) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=base_model.dtype)

    def merge(self, model: Any) -> Any:
        return model


METHOD = Full(
    id="full",
    label="Full fine-tuning",
    label_zh="全参数微调",
    help="Trains every weight of the model. The most capable and by far the most "
    "memory-hungry (weights, gradients and optimizer state for all parameters); use a "
    "small learning rate such as 1e-5.",
    help_zh="训练模型的全部权重。能力最强，也最耗显存（所有参数的权重、梯度和优化器状态）；请使用"
            "较小的学习率，如 1e-5。",
    saves_full_model=True,
    position=8,
)
