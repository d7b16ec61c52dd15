"""IA3: learned vectors that rescale the keys, values and feed-forward activations."""

from __future__ import annotations

from typing import Any

from core.methods import Method, peft_targets, peft_wrap
from core.schema.setting import Setting as S


class IA3(Method):
    def wrap(self, model: Any, cfg: Any) -> Any:
        from peft import IA3Config, TaskType

        from core.methods.common import target_candidates

        target = peft_targets(cfg.ia3_target)
        feedforward = list(cfg.ia3_feedforward)
        notes = []
        if isinstance(target, list):
            layers = target_candidates(model)
            found = [m for m in target if m in layers]
            if found and len(found) < len(target):
                # Defaults name Llama's layers; a model with fused ones (Phi-3's qkv_proj,
                # an MoE's experts) has only some: train those, and say which were not.
                missing = [m for m in target if m not in found]
                notes.append(f"ia3_target: {', '.join(missing)} not in this model (its "
                             f"linear layers: {', '.join(layers)}); only {', '.join(found)} "
                             "are rescaled")
                target, feedforward = found, [m for m in feedforward if m in found]
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
            wrapped = peft_wrap(model, config)
        except ValueError as exc:
            if "not found in the base model" not in str(exc):
                raise
            raise ValueError(
                f"ia3_target: {', '.join(target)} not found in this model; its linear layers "
                f"are: {', '.join(target_candidates(model))}"
            ) from exc
        wrapped.studio_notes = notes  # said in the run's start event (core.train.trainer)
        return wrapped


METHOD = IA3(
    id="ia3",
    label="IA3",
    label_zh="IA3（激活缩放）",
    help="Learns one scaling vector per chosen layer (keys, values and the feed-forward "
    "input), so it trains far fewer parameters than LoRA. Pick it for the smallest "
    "adapters or very little data; it merges back into the model.",
    help_zh="为每个选定的层（键、值和前馈输入）学习一个缩放向量，训练的参数比 LoRA 少得多。适合追"
            "求最小的适配器或数据很少的情况；可以合并回模型。",
    mergeable=True,
    settings=(
        S("ia3_target", ["k_proj", "v_proj", "down_proj"], "Linear layers whose activations "
          "are rescaled (names of linear layers; Llama-style: k_proj, v_proj, down_proj).",
          "method", label="Target modules", label_zh="目标模块", item_type=str,
          help_zh="激活被缩放的线性层（线性层名称；Llama 类模型：k_proj、v_proj、down_proj）。"),
        S("ia3_feedforward", ["down_proj"], "Which of the target layers are feed-forward "
          "layers: their input is rescaled rather than their output. Must be among the "
          "target modules.", "method", label="Feed-forward modules", label_zh="前馈模块",
          item_type=str, advanced=True,
          help_zh="目标层中哪些是前馈层：缩放它们的输入而不是输出。必须包含在目标模块中。"),
    ),
    position=2,
)
