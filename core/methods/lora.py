"""LoRA and its variants: DoRA, rsLoRA, PiSSA initialisation, LoRA+; QLoRA when the base
is quantized (see `quantization` in core.schema.config)."""

from __future__ import annotations

from typing import Any

from core.methods import Method, peft_targets, peft_wrap
from core.schema.setting import Setting as S


def fused_experts(model: Any) -> list[str]:
    """The modules of a mixture-of-experts model that hold every expert's weights as one 3-D
    parameter (Qwen3-MoE, Mixtral in transformers 5): peft trains them through
    lora.ParamWrapper, which takes neither dropout nor DoRA."""
    return sorted({name.rsplit(".", 1)[0] for name, p in model.named_parameters()
                   if p.ndim == 3})


class Lora(Method):
    def wrap(self, model: Any, cfg: Any) -> Any:
        from peft import LoraConfig, TaskType

        init: Any = {"default": True, "gaussian": "gaussian", "pissa": "pissa"}[cfg.lora_init]
        experts = fused_experts(model)
        dropout, notes = cfg.lora_dropout, []
        if experts and cfg.use_dora:
            raise ValueError(
                f"use_dora: this model keeps its experts' weights fused ({experts[0]}, ...), "
                "and peft cannot apply DoRA to them; turn DoRA off (plain LoRA trains them)")
        if experts and dropout:
            dropout = 0.0
            notes.append(f"lora_dropout {cfg.lora_dropout:g} -> 0: this model keeps its "
                         f"experts' weights fused ({experts[0]}, ...), and peft's LoRA on "
                         "them takes no dropout")
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=dropout,
            target_modules=peft_targets(cfg.lora_target),
            bias=cfg.lora_bias,
            use_dora=cfg.use_dora,
            use_rslora=cfg.use_rslora,
            init_lora_weights=init,
        )
        wrapped = peft_wrap(model, config)
        wrapped.studio_notes = notes  # said in the run's start event (core.train.trainer)
        return wrapped

    def create_optimizer(self, model: Any, cfg: Any, args: Any) -> Any:
        if not cfg.use_loraplus:
            return None
        from peft.optimizers import create_loraplus_optimizer
        from transformers import Trainer

        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        return create_loraplus_optimizer(
            model,
            optimizer_cls,
            lr=cfg.learning_rate,
            loraplus_lr_ratio=cfg.loraplus_lr_ratio,
            weight_decay=cfg.weight_decay,
            **{k: v for k, v in optimizer_kwargs.items() if k != "lr"},
        )


METHOD = Lora(
    id="lora",
    label="LoRA (DoRA, rsLoRA, PiSSA, LoRA+, QLoRA)",
    label_zh="LoRA（含 DoRA、rsLoRA、PiSSA、LoRA+、QLoRA）",
    help="Learns a small low-rank update beside each chosen weight matrix; the base stays "
    "frozen. The default choice: cheap, good quality, and it merges back into the model. "
    "Turn on 4-bit quantization for QLoRA when memory is short.",
    help_zh="在每个选定的权重矩阵旁学习一个小的低秩更新；基础模型保持冻结。默认选择：开销小、效果"
            "好，还能合并回模型。显存不够时开启 4 比特量化即为 QLoRA。",
    mergeable=True,
    quantizable=True,
    settings=(
        S("lora_rank", 8, "Rank of the update: higher learns more and costs more.",
          "method", label="LoRA rank", label_zh="LoRA 秩", minimum=1, maximum=1024,
          help_zh="更新矩阵的秩：越大学得越多，开销也越大。"),
        S("lora_alpha", 16, "Scale of the update (the update is multiplied by alpha/rank; "
          "about twice the rank is usual).", "method", label="LoRA alpha",
          label_zh="LoRA 缩放系数", minimum=1, maximum=4096,
          help_zh="更新的缩放系数（更新乘以 alpha/rank；通常取秩的两倍左右）。"),
        S("lora_dropout", 0.05, "Dropout on the LoRA input.", "method", label="LoRA dropout",
          label_zh="LoRA 随机丢弃", minimum=0.0, maximum=0.9,
          help_zh="LoRA 输入上的 dropout。"),
        S("lora_target", ["all-linear"], "Layers that get an update: 'all-linear' or the "
          "names of linear layers (q_proj, v_proj, ...).", "method", label="Target modules",
          label_zh="目标模块", item_type=str,
          help_zh="接受更新的层：'all-linear' 或线性层的名称（q_proj、v_proj 等）。"),
        S("lora_bias", "none", "Also train biases: none, all, or only those of LoRA layers.",
          "method", label="Bias", label_zh="偏置", choices=("none", "all", "lora_only"),
          advanced=True,
          help_zh="是否也训练偏置：none、all，或只训练 LoRA 层的偏置。"),
        S("use_dora", False, "DoRA: split each weight into magnitude and direction and "
          "adapt both; often better at low rank, somewhat slower.", "method",
          label="DoRA", label_zh="使用 DoRA",
          help_zh="DoRA：把每个权重分解为幅度和方向并同时调整；低秩时通常更好，稍慢。"),
        S("use_rslora", False, "rsLoRA: scale by alpha/sqrt(rank), which keeps high "
          "ranks stable.", "method", label="rsLoRA", label_zh="使用 rsLoRA",
          help_zh="rsLoRA：按 alpha/sqrt(rank) 缩放，使高秩训练保持稳定。"),
        S("lora_init", "default", "How the update starts: default (zero update), gaussian, "
          "or pissa (from the principal singular vectors of the weight: converges faster).",
          "method", label="Initialisation", label_zh="初始化方式",
          choices=("default", "gaussian", "pissa"), advanced=True,
          help_zh="更新的初始方式：default（零更新）、gaussian，或 pissa（取权重的主奇异向量：收"
                  "敛更快）。"),
        S("use_loraplus", False, "LoRA+: give the B matrices a higher learning rate than "
          "A; often learns faster at the same cost.", "method", label="LoRA+",
          label_zh="使用 LoRA+",
          help_zh="LoRA+：给 B 矩阵比 A 更高的学习率；开销不变，常常学得更快。"),
        S("loraplus_lr_ratio", 16.0, "With LoRA+: how many times A's learning rate the B "
          "matrices get (16 is the paper's choice).", "method", label="LoRA+ LR ratio",
          label_zh="LoRA+ 学习率比例", minimum=1.0, maximum=1024.0,
          help_zh="开启 LoRA+ 时，B 矩阵的学习率是 A 的多少倍（论文取 16）。"),
    ),
    position=1,
)
