"""P-tuning: virtual token embeddings produced by a small MLP or LSTM encoder."""

from __future__ import annotations

from typing import Any

from core.methods import Method, peft_wrap
from core.methods.common import NUM_VIRTUAL_TOKENS
from core.schema.setting import Setting as S


class PTuning(Method):
    def wrap(self, model: Any, cfg: Any) -> Any:
        from peft import PromptEncoderConfig, TaskType

        config = PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=cfg.num_virtual_tokens,
            encoder_reparameterization_type=cfg.ptuning_encoder.upper(),
            encoder_hidden_size=cfg.ptuning_hidden_size,
        )
        return peft_wrap(model, config)


METHOD = PTuning(
    id="ptuning",
    label="P-tuning",
    label_zh="P-tuning",
    help="Like prompt tuning, but the virtual tokens come out of a small MLP or LSTM "
    "encoder, which trains more steadily. Only the final tokens are saved, so the result "
    "is as tiny as a soft prompt. For deep prompts on every layer, use prefix tuning.",
    help_zh="类似提示微调，但虚拟 token 由一个小的 MLP 或 LSTM 编码器生成，训练更稳定。只保存最终"
            "的 token，结果和软提示一样小。需要每层都有深度提示时，请用前缀微调。",
    not_mergeable_reason="P-tuning adds virtual input tokens, not a change to the weights, "
    "so there is nothing to merge; the adapter is exported as it is.",
    settings=(
        NUM_VIRTUAL_TOKENS,
        S("ptuning_encoder", "mlp", "The encoder that produces the virtual tokens: mlp "
          "(fast) or lstm (the original P-tuning).", "method", label="Encoder",
          label_zh="编码器", choices=("mlp", "lstm"),
          help_zh="生成虚拟 token 的编码器：mlp（快）或 lstm（原始 P-tuning）。"),
        S("ptuning_hidden_size", 256, "Hidden size of the encoder.", "method",
          label="Encoder hidden size", label_zh="编码器隐藏层大小", minimum=1,
          maximum=65536, advanced=True,
          help_zh="编码器的隐藏层大小。"),
    ),
    position=5,
)
