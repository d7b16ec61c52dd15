"""Prompt tuning: trainable embeddings put before the input tokens."""

from __future__ import annotations

from typing import Any

from core.methods import Method, peft_wrap
from core.methods.common import NUM_VIRTUAL_TOKENS
from core.schema.setting import Setting as S


class PromptTuning(Method):
    def wrap(self, model: Any, cfg: Any) -> Any:
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        from core import models

        text = cfg.prompt_init_text.strip()
        extra: dict[str, Any] = {"prompt_tuning_init": PromptTuningInit.RANDOM}
        if text:
            extra = {
                "prompt_tuning_init": PromptTuningInit.TEXT,
                "prompt_tuning_init_text": text,
                "tokenizer_name_or_path": models.local_folder(cfg.model),
            }
        config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens, **extra
        )
        return peft_wrap(model, config)


METHOD = PromptTuning(
    id="prompt",
    label="Prompt tuning",
    label_zh="提示词微调（Prompt Tuning）",
    help="Learns a few virtual token embeddings put before every input (a 'soft prompt'); "
    "the model is untouched and the result is tiny. Works best on large models and for a "
    "single task; on small models LoRA learns much more.",
    help_zh="学习放在每个输入前的几个虚拟 token 嵌入（“软提示”）；模型不变，结果极小。在大模型和"
            "单一任务上效果最好；小模型上 LoRA 学到的多得多。",
    not_mergeable_reason="A soft prompt is extra input, not a change to the weights, so "
    "there is nothing to merge; the adapter is exported as it is.",
    settings=(
        NUM_VIRTUAL_TOKENS,
        S("prompt_init_text", "", "Start the soft prompt from the embeddings of this text "
          "(for example a description of the task); empty starts from random values.",
          "method", label="Initial prompt text", label_zh="初始提示词文本",
          help_zh="用这段文本的嵌入初始化软提示（例如对任务的描述）；留空则随机初始化。"),
    ),
    position=4,
)
