"""Training stages: which data format each takes, which methods can run it, and the
settings the preference stages add to the one schema.

Import-light (no torch): the config and the web UI read it at start-up. The trainers
themselves are in core.stages.preference.
"""

from __future__ import annotations

from core.schema.setting import Setting

S = Setting
STAGES = ("sft", "pt", "dpo", "orpo", "kto")
PREFERENCE_STAGES = ("dpo", "orpo", "kto")

# The data formats a stage trains on. Nothing is converted silently: a pairwise file in
# an SFT run, or an SFT file in a DPO run, is refused before the model loads.
STAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "sft": ("alpaca", "messages", "sharegpt"),
    "pt": ("alpaca", "messages", "sharegpt", "text"),
    "dpo": ("pairwise",),
    "orpo": ("pairwise",),
    "kto": ("kto",),
}

# Methods that cannot take a preference stage, and why (shown as the refusal).
PREFERENCE_REFUSED: dict[str, str] = {
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

# TRL's logged reward metrics -> their names in our step events.
REWARD_METRICS = {
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
}

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
    if stage in PREFERENCE_STAGES and method in PREFERENCE_REFUSED:
        return [f"method: {method} cannot run the {stage} stage: {PREFERENCE_REFUSED[method]}; "
                "choose lora (QLoRA too), ia3, freeze or full"]
    return []
