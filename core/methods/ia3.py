"""IA3: learned vectors that rescale the keys, values and feed-forward activations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.methods import MethodSpec, _peft
from core.settings import Setting as S

SPEC = MethodSpec(
    id="ia3",
    label="IA3",
    label_zh="IA3（激活缩放）",
    help="Learns one scaling vector per chosen layer (keys, values and the feed-forward "
    "input), so it trains far fewer parameters than LoRA. Pick it for the smallest "
    "adapters or very little data; it merges back into the model.",
    mergeable=True,
    settings=(
        S("ia3_target", ["k_proj", "v_proj", "down_proj"], "Linear layers whose activations "
          "are rescaled (names of linear layers; Llama-style: k_proj, v_proj, down_proj).",
          "method", label="Target modules", label_zh="目标模块", item_type=str),
        S("ia3_feedforward", ["down_proj"], "Which of the target layers are feed-forward "
          "layers: their input is rescaled rather than their output. Must be among the "
          "target modules.", "method", label="Feed-forward modules", label_zh="前馈模块",
          item_type=str, advanced=True),
    ),
)


def wrap(model: Any, cfg: Any) -> Any:
    from peft import IA3Config, TaskType

    target = _peft.target_modules(cfg.ia3_target)
    feedforward = list(cfg.ia3_feedforward)
    if isinstance(target, list):
        outside = [m for m in feedforward if m not in target]
        if outside:
            raise ValueError(
                f"ia3_feedforward: {', '.join(outside)} must also be in ia3_target "
                f"({', '.join(target)})"
            )
    config = IA3Config(
        task_type=TaskType.CAUSAL_LM,
        target_modules=target,
        feedforward_modules=feedforward,
    )
    try:
        return _peft.wrap_with(model, config)
    except ValueError as exc:
        if "not found in the base model" not in str(exc):
            raise
        from core.methods.common import target_candidates

        raise ValueError(
            f"ia3_target: {', '.join(target)} not found in this model; its linear layers "
            f"are: {', '.join(target_candidates(model))}"
        ) from exc


def save(model: Any, out_dir: Path, cfg: Any = None) -> None:
    _peft.save(model, out_dir, cfg)


load = _peft.load
merge = _peft.merge
