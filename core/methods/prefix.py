"""Prefix tuning: trainable key/value vectors put before every layer's attention."""

from __future__ import annotations

from typing import Any

from core.methods import Method, peft_wrap
from core.methods.common import NUM_VIRTUAL_TOKENS
from core.schema.setting import Setting as S


class PrefixTuning(Method):
    def wrap(self, model: Any, cfg: Any) -> Any:
        from peft import PrefixTuningConfig, TaskType

        config = PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=cfg.num_virtual_tokens,
            prefix_projection=cfg.prefix_projection,
            encoder_hidden_size=cfg.prefix_hidden_size,
        )
        return peft_wrap(model, config)


METHOD = PrefixTuning(
    id="prefix",
    label="Prefix tuning (P-tuning v2)",
    label_zh="前缀微调（P-tuning v2）",
    help="Learns virtual key/value vectors that every attention layer sees before the "
    "input; the model itself is untouched. Small and quick to swap; with the projection "
    "off it is P-tuning v2 (deep prompts). Usually below LoRA in quality.",
    help_zh="学习每个注意力层在输入之前看到的虚拟键/值向量；模型本身不变。体积小、切换快；关闭投"
            "影时即 P-tuning v2（深度提示）。效果通常不如 LoRA。",
    not_mergeable_reason="Prefix tuning adds virtual key/value tokens at run time; there is "
    "no weight to merge them into, so the adapter is exported as it is.",
    settings=(
        NUM_VIRTUAL_TOKENS,
        S("prefix_projection", False, "Produce the prefixes with a small MLP (the original "
          "prefix tuning re-parameterisation: steadier training, more parameters while "
          "training). Off: learn them directly (P-tuning v2 deep prompts).", "method",
          label="Prefix projection (MLP)", label_zh="前缀投影（MLP）",
          help_zh="用一个小 MLP 生成前缀（原始前缀微调的重参数化：训练更稳，训练时参数更多）。关"
                  "闭：直接学习前缀（P-tuning v2 深度提示）。"),
        S("prefix_hidden_size", 512, "Hidden size of the prefix projection MLP.", "method",
          label="Projection hidden size", label_zh="投影隐藏层大小", minimum=1,
          maximum=65536, advanced=True,
          help_zh="前缀投影 MLP 的隐藏层大小。"),
    ),
    position=3,
)
