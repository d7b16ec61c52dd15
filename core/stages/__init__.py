"""The training stages as a registry: what each stage declares (the data formats it trains
on, the methods it refuses and why, the metrics it logs live beyond the loss) and the module
that trains it; plus the settings the preference stages add to the one schema.

Adding a stage is one recipe module and one Stage entry below. A recipe module (named by
`Stage.recipe`, imported only inside the training process, so that this registry stays
free of torch for the UI and the data checks) gives three functions, which the one
training skeleton, core.train.trainer.train, calls in order:

    data(cfg, tokenizer) -> (train examples, eval examples, stats for the start event)
    model(cfg) -> the model to train, with the method applied
    plan(cfg, model, tokenizer, run_dir, device, precision, has_eval) -> core.train.hooks.Plan
        (the trainer's arguments, start-event fields, how to build the trainer)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core.schema.setting import Setting

S = Setting

_NOT_WITH_A_REFERENCE: dict[str, str] = {
    "prefix": "peft's prompt-learning methods put virtual tokens or cached key/values in "
              "front of every sequence, so TRL's per-token log-probabilities of the chosen "
              "and rejected replies no longer line up with its masks",
    "prompt": "peft's prompt-learning methods put virtual tokens in front of every sequence, "
              "so TRL's per-token log-probabilities no longer line up with its masks",
    "ptuning": "peft's prompt-learning methods put virtual tokens in front of every "
               "sequence, so TRL's per-token log-probabilities no longer line up with its "
               "masks",
    "adapter": "the bottleneck adapter is ours, not a peft adapter: TRL cannot switch it off "
               "to get the reference model, nor load it back for a reference run",
}

# TRL's logged reward metrics -> their names in our step events (drawn live as the rewards
# and reward-accuracy charts).
_REWARDS = {
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
}


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    help_zh: str
    formats: tuple[str, ...]  # the data formats it trains on; any other is refused
    recipe: str  # the module that trains it (see above)
    preference: bool = False  # learns from preferences (TRL): one process per copy (ddp)
    refused_methods: Mapping[str, str] = field(default_factory=dict)  # method -> why
    metrics: Mapping[str, str] = field(default_factory=dict)  # logged key -> event field


_PAIRS = ("pairwise",)
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("sft", "learn to answer prompts (chat/instruction data).",
          "学习回答提示（对话/指令数据）。", ("alpaca", "messages", "sharegpt"),
          "core.stages.sft"),
    Stage("pt", "continue pre-training on raw text.", "在纯文本上继续预训练。",
          ("alpaca", "messages", "sharegpt", "text"), "core.stages.sft"),
    Stage("dpo", "learn to prefer the chosen reply over the rejected one (pairwise data).",
          "学习偏好被选回复而非被拒回复（成对数据）。", _PAIRS, "core.stages.dpo",
          preference=True, refused_methods=_NOT_WITH_A_REFERENCE, metrics=_REWARDS),
    Stage("orpo", "like dpo, with no reference model (pairwise data).",
          "类似 dpo，无需参考模型（成对数据）。", _PAIRS, "core.stages.orpo",
          preference=True, refused_methods=_NOT_WITH_A_REFERENCE, metrics=_REWARDS),
    Stage("kto", "learn from replies marked desirable or not.",
          "从标为期望或不期望的回复中学习。", ("kto",), "core.stages.kto",
          preference=True, refused_methods=_NOT_WITH_A_REFERENCE, metrics=_REWARDS),
)}
PREFERENCE_STAGES = tuple(n for n, s in STAGES.items() if s.preference)
# Every live metric any stage logs, for the trainer's event callback.
LIVE_METRICS: dict[str, str] = {k: v for s in STAGES.values() for k, v in s.metrics.items()}


def stage_help(zh: bool = False) -> str:
    """The Stage setting's help: each stage's own words."""
    return (" " if not zh else "").join(
        f"{s.name}{'：' if zh else ': '}{s.help_zh if zh else s.help}" for s in STAGES.values())


_BOTH = ("dpo", "kto")
SETTINGS: tuple[Setting, ...] = (
    S("pref_beta", 0.1, "How far the model may move from the reference model: higher "
      "keeps it closer (DPO's and KTO's beta).", "preference", label="Beta",
      label_zh="Beta 系数", minimum=0.001, maximum=10.0, stages=_BOTH,
      help_zh="模型可以偏离参考模型多远：越大越接近参考模型（DPO 与 KTO 的 beta）。"),
    S("dpo_loss", "sigmoid", "DPO's loss: sigmoid is the paper's; hinge (SLiC), ipo "
      "(bounded, resists overfitting), robust (tolerates some flipped labels).",
      "preference", label="DPO loss", label_zh="DPO 损失类型",
      choices=("sigmoid", "hinge", "ipo", "robust"), stages=("dpo",),
      help_zh="DPO 的损失：sigmoid 为原论文形式；hinge（SLiC）；ipo（有界，抗过拟合）；robust"
              "（容忍部分标反的样本）。"),
    S("orpo_lambda", 0.1, "Weight of ORPO's odds-ratio term against the plain SFT loss on "
      "the chosen reply.", "preference", label="ORPO lambda", label_zh="ORPO lambda",
      minimum=0.0, maximum=10.0, stages=("orpo",),
      help_zh="ORPO 的几率比项相对于被选回复上普通 SFT 损失的权重。"),
    S("kto_desirable_weight", 1.0, "Weight of the loss on desirable replies; raise it when "
      "they are fewer than the undesirable ones.", "preference",
      label="Desirable weight", label_zh="正样本权重", minimum=0.0, maximum=100.0,
      stages=("kto",),
      help_zh="期望回复上损失的权重；期望回复比不期望回复少时调高它。"),
    S("kto_undesirable_weight", 1.0, "Weight of the loss on undesirable replies.",
      "preference", label="Undesirable weight", label_zh="负样本权重", minimum=0.0,
      maximum=100.0, stages=("kto",),
      help_zh="不期望回复上损失的权重。"),
    S("init_from_run", "", "Start from a finished run of the same method (a folder under "
      "saves/, usually an SFT run): its adapter or model is trained further, and is also "
      "the reference unless a reference run is given. Empty: start from the base model.",
      "preference", label="Start from run", label_zh="从已有运行继续",
      stages=PREFERENCE_STAGES,
      help_zh="从同一方法的已完成运行（saves/ 下的文件夹，通常是 SFT 运行）开始：继续训练它的适配器"
              "或模型，未指定参考运行时它也是参考模型。留空：从基础模型开始。"),
    S("ref_run", "", "A finished run whose model is the reference the rewards are measured "
      "against. Empty: the starting model itself (the base, or the start-from run).",
      "preference", label="Reference run", label_zh="参考运行", stages=_BOTH,
      help_zh="一个已完成的运行，其模型作为计算奖励的参考模型。留空：起点模型本身（基础模型或"
              "“从已有运行继续”的运行）。"),
)


def stage_problems(stage: str, method: str) -> list[str]:
    """Config cross-checks for a run's stage and method."""
    refused = STAGES[stage].refused_methods if stage in STAGES else {}
    if method in refused:
        return [f"method: {method} cannot run the {stage} stage: {refused[method]}; "
                "choose lora (QLoRA too), ia3, freeze or full"]
    return []


def format_problem(stage: str, dataset: str, fmt: str) -> str | None:
    """Why `dataset`, in format `fmt`, cannot train the stage; None when it can. Nothing is
    converted silently: a pairwise file in an SFT run, or an SFT file in a DPO run, is
    refused before the model loads."""
    wanted = STAGES[stage].formats
    if fmt in wanted:
        return None
    fits = ", ".join(s.name for s in STAGES.values() if fmt in s.formats) or "none"
    kind = {"pairwise": " (preference data: pairs of replies)",
            "kto": " (preference data: replies labelled desirable or not)"}.get(fmt, "")
    what = ("raw text (the text format: no replies to learn)" if fmt == "text"
            else f"in the {fmt} format{kind}")
    return (f"dataset {dataset!r} is {what}, which the {stage} stage cannot train on; it "
            f"needs {' or '.join(wanted)} data (choose such a dataset, or the stage that "
            f"fits: {fits})")
