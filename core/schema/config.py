"""RunConfig: every setting of a run, and everything derived from the one schema.

The schema is `SETTINGS`: the common settings below plus each method's own settings from
the registry. From it come YAML load/save, CLI flags, validation with every bad field
listed in one error, and (in `webui/`) the widgets.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from core.fsutil import atomic_write_text
from core.methods import METHODS
from core.schema.devices import SETTINGS as DEVICE_SETTINGS
from core.schema.devices import schema_problems as distributed_problems
from core.schema.setting import Setting
from core.stages import SETTINGS as STAGE_SETTINGS
from core.stages import STAGES, stage_help, stage_problems
from core.train.trackers import CHOICES as TRACKER_CHOICES

S = Setting
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "paged_adamw_8bit",
    "adamw_8bit",
    "adafactor",
    "sgd",
)
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
# Upper bounds of counts of steps: far beyond any run, short of what overflows a counter.
STEPS_MAX = 10_000_000
QUANTIZABLE = tuple(m for m, spec in METHODS.items() if spec.quantizable)

COMMON: tuple[Setting, ...] = (
    # -- model ---------------------------------------------------------------------------
    S("model", "embedded", "Which model to fine-tune: 'embedded' (SmolLM2-135M-Instruct, "
      "works offline), a local Hugging Face folder, a local .gguf file, or a hub id such "
      "as 'Qwen/Qwen2.5-0.5B-Instruct' (needs internet).", "model",
      label="Model", label_zh="模型", allow_custom=True, choices=("embedded",),
      help_zh="要微调的模型：'embedded'（内置 SmolLM2-135M-Instruct，可离线使用）、本地 Hugging "
              "Face 模型文件夹、本地 .gguf 文件，或 Hub 上的模型 ID，如 "
              "'Qwen/Qwen2.5-0.5B-Instruct'（需要联网）。"),
    S("method", "lora", "The fine-tuning method; each has its own settings below.", "model",
      label="Method", label_zh="微调方法", choices=tuple(METHODS),
      help_zh="微调方法；每种方法的参数显示在下方。"),
    S("stage", "sft", stage_help(), "model", label="Stage", label_zh="训练阶段",
      choices=tuple(STAGES), help_zh=stage_help(zh=True)),
    S("trust_remote_code", False, "Run Python code shipped with a hub model. Only for "
      "models you trust.", "model", label_zh="信任远程代码", advanced=True,
      help_zh="运行 Hub 模型自带的 Python 代码。只对你信任的模型开启。"),
    # -- quantization (QLoRA) --------------------------------------------------------------
    S("quantization", "none", "Load the frozen base in 8 or 4 bits with bitsandbytes to "
      "save memory (4-bit + LoRA is QLoRA).", "quantization", label_zh="量化位数",
      choices=("none", "8bit", "4bit"), methods=QUANTIZABLE,
      help_zh="用 bitsandbytes 以 8 或 4 比特加载冻结的基础模型以节省显存（4 比特 + LoRA 即 "
              "QLoRA）。"),
    S("quant_type", "nf4", "4-bit number format: nf4 suits normally distributed weights; "
      "fp4 is the plain float format.", "quantization", label="4-bit type",
      label_zh="4 比特类型", choices=("nf4", "fp4"), methods=QUANTIZABLE,
      help_zh="4 比特数值格式：nf4 适合正态分布的权重；fp4 是普通浮点格式。"),
    S("double_quant", True, "Also quantize the quantization constants (saves about "
      "0.4 bits per weight).", "quantization", label="Double quantization",
      label_zh="双重量化", methods=QUANTIZABLE,
      help_zh="对量化常数再做一次量化（每个权重约省 0.4 比特）。"),
    S("compute_dtype", "auto", "The dtype 4/8-bit layers compute in; auto picks bfloat16 "
      "on a GPU that supports it, else float32.", "quantization", label_zh="计算精度",
      choices=("auto", "bfloat16", "float16", "float32"), methods=QUANTIZABLE,
      help_zh="4/8 比特层的计算精度；auto 在支持的 GPU 上用 bfloat16，否则用 float32。"),
    # -- data ----------------------------------------------------------------------------
    S("dataset", ["identity"], "Registered dataset names (see the Data tab) or paths to "
      "json/jsonl/csv/parquet files; several are concatenated.", "data",
      label_zh="数据集", item_type=str,
      help_zh="已注册的数据集名称（见“数据”页）或 json/jsonl/csv/parquet 文件路径；多个数据集会"
              "拼接在一起。"),
    S("dataset_weights", [], "How often each dataset is drawn, in the order of Dataset "
      "(e.g. 0.7, 0.3 to mix general data back in against forgetting): the datasets are "
      "interleaved at these proportions, reproducibly (the seed), until one runs out; "
      "nothing is repeated. The counts drawn are in the start event. Empty: concatenated "
      "whole.", "data", label="Dataset mix", label_zh="数据集混合比例", item_type=float,
      advanced=True,
      help_zh="每个数据集被抽取的比例，按“数据集”的顺序（如 0.7, 0.3，用于混入通用数据以防遗忘）："
              "按该比例交错抽样（随机种子可复现），直到某个数据集用完；不重复样本。抽取数量写在开始事件中。"
              "留空：整体拼接。"),
    S("cutoff_len", 1024, "Longest sequence in tokens; longer samples are cut and the "
      "number cut is reported.", "data", label="Cut-off length", label_zh="截断长度",
      minimum=8, maximum=131072,
      help_zh="序列的最大 token 数；更长的样本会被截断，并报告截断的数量。"),
    S("max_samples", 0, "Use at most this many samples from each dataset (0 = all).",
      "data", label_zh="最大样本数", minimum=0, maximum=100_000_000,
      help_zh="每个数据集最多使用这么多样本（0 = 全部）。"),
    S("val_size", 0.0, "Fraction of the data held out to compute an evaluation loss "
      "during training (0 = none).", "data", label="Validation fraction",
      label_zh="验证集比例", minimum=0.0, maximum=0.5,
      help_zh="留出一部分数据，在训练中计算验证损失（0 = 不留）。"),
    S("packing", False, "Pack several short samples into each sequence for speed.",
      "data", label_zh="序列打包", advanced=True,
      help_zh="把多个短样本打包进同一序列以提高速度。"),
    S("batching", "auto", "How samples are put into batches. padded: pad each batch to its "
      "longest sample. grouped: batch samples of similar length (shuffled within large "
      "random groups) so there is less padding. padding_free: each batch as one row with "
      "positions restarting per sample (fast on a GPU with flash-attention). auto: "
      "padding_free where flash-attention is installed, else padded (grouping changes which "
      "samples share a batch, which can change the loss of short runs); methods with "
      "virtual tokens always pad.", "data", label_zh="批次组织", advanced=True,
      choices=("auto", "padded", "grouped", "padding_free"),
      help_zh="样本如何组成批次。padded：补齐到批内最长样本。grouped：把长度相近的样本放进同一批"
              "（在较大的随机分组内打乱），减少补齐。padding_free：整批拼成一行、每个样本的位置"
              "重新计数（在装有 flash-attention 的 GPU 上最快）。auto：装有 flash-attention 时用 "
              "padding_free，否则用 padded（分组会改变哪些样本同批，可能影响短训练的损失）；带虚拟 "
              "token 的方法总是补齐。"),
    S("fast_loss", True, "Compute the output layer and the loss only at the tokens that are "
      "trained (the replies), not at every position: same loss, less work.", "train",
      label="Loss on trained tokens only", label_zh="只在训练 token 上算损失", advanced=True,
      help_zh="只在参与训练的 token（回复）上计算输出层和损失，而不是每个位置：损失相同，"
              "计算更少。"),
    S("shared_prefix", True, "Run the tokens every sample of a batch starts with (the system "
      "prompt, a repeated instruction) once per batch instead of once per sample: same loss, "
      "less work. Needs the loss on trained tokens only, and no gradient checkpointing.",
      "train", label="Shared prompt start once per batch", label_zh="批内共同开头只算一次",
      advanced=True,
      help_zh="批内每个样本都以相同 token 开头（系统提示词、重复的指令）时，这一段每批只计算一次，"
              "而不是每个样本各算一次：损失相同，计算更少。需要开启“只在训练 token 上算损失”，"
              "且不用梯度检查点。"),
    S("train_on_prompt", False, "Also compute the loss on the prompt tokens, not only "
      "on the assistant's replies.", "data", label_zh="在提示词上计算损失", advanced=True,
      help_zh="在提示词 token 上也计算损失，而不只是在助手的回复上。"),
    S("system_prompt", "default", "The system prompt of samples that have none of their "
      "own (rows with one keep it). default: what the model's chat template writes (SmolLM2 "
      "writes 'You are a helpful AI assistant named SmolLM, trained by Hugging Face' into "
      "every such sample); none: no system block at all; or your own text. Chat and "
      "serving a run use its choice. The Data tab's preview says which a dataset gets.",
      "data", label_zh="系统提示词", choices=("default", "none"), allow_custom=True,
      stages=("sft",),
      help_zh="没有自带系统消息的样本所用的系统提示词（自带的保持不变）。default：模型对话模板"
              "自己写入的（SmolLM2 会在每个这样的样本里写入 'You are a helpful AI assistant "
              "named SmolLM, trained by Hugging Face'）；none：完全没有系统段；或你自己的文字。"
              "对话与服务该运行时沿用它的选择。“数据”页的预览会说明数据集得到的是哪一个。"),
    S("identity_name", "Studio Assistant", "Fills {{name}} in the identity dataset.",
      "data", label="Assistant name", label_zh="助手名称", advanced=True,
      help_zh="填入 identity 数据集中的 {{name}}。"),
    S("identity_author", "the PEFT Studio team", "Fills {{author}} in the identity "
      "dataset.", "data", label="Assistant author", label_zh="助手作者", advanced=True,
      help_zh="填入 identity 数据集中的 {{author}}。"),
    # -- training ------------------------------------------------------------------------
    S("learning_rate", 2e-4, "Step size of the optimizer. LoRA-family methods like "
      "1e-4 to 1e-3; full tuning wants about 1e-5.", "train", label_zh="学习率",
      minimum=1e-9, maximum=1.0,
      help_zh="优化器的步长。LoRA 类方法常用 1e-4 到 1e-3；全参数微调约 1e-5。"),
    S("num_train_epochs", 3.0, "Passes over the data (ignored when max steps is set).",
      "train", label="Epochs", label_zh="训练轮数", minimum=0.01, maximum=1000,
      help_zh="遍历数据的轮数（设置了最大步数时忽略）。"),
    S("max_steps", 0, "Stop after this many optimizer steps (0 = use epochs).", "train",
      label_zh="最大步数", minimum=0, maximum=STEPS_MAX,
      help_zh="训练这么多优化步后停止（0 = 按轮数）。"),
    S("batch_size", 2, "Samples per device per forward pass.", "train",
      label_zh="批大小", minimum=1, maximum=4096,
      help_zh="每个设备每次前向传播的样本数。"),
    S("gradient_accumulation_steps", 4, "Forward passes summed into each optimizer step; "
      "the effective batch is batch size times this.", "train", label="Gradient accumulation",
      label_zh="梯度累积", minimum=1, maximum=4096,
      help_zh="每个优化步累积的前向次数；有效批大小 = 批大小 × 该值。"),
    S("precision", "auto", "auto: bf16 on a GPU that supports it, fp16 on other GPUs; on a "
      "CPU bf16 where it has AMX bfloat16 matrix units, for LoRA, IA3 and adapters in "
      "sft/pt, else fp32. The start event says which and why; fp32 turns it off.",
      "train", label_zh="计算精度", choices=("auto", "bf16", "fp16", "fp32"),
      help_zh="auto：支持的 GPU 上用 bf16，其他 GPU 用 fp16；CPU 有 AMX bfloat16 矩阵单元"
              "时，LoRA、IA3 和 adapter 的 sft/pt 用 bf16，否则 fp32。开始事件会"
              "说明选择及原因；设为 fp32 即关闭。"),
    S("gradient_checkpointing", False, "Recompute activations in the backward pass: "
      "less memory, about 30% slower.", "train", label_zh="梯度检查点", advanced=True,
      help_zh="反向传播时重新计算激活：更省显存，约慢 30%。"),
    S("seed", 42, "Random seed for initialisation, shuffling and dropout.", "train",
      label_zh="随机种子", advanced=True, minimum=0, maximum=2**32 - 1,
      help_zh="初始化、打乱数据和 dropout 使用的随机种子。"),
    # -- optimizer and schedule ----------------------------------------------------------
    S("optim", "adamw_torch", "Optimizer. paged_adamw_8bit (bitsandbytes) keeps its state "
      "in 8 bits and pages it out under memory pressure: the usual QLoRA choice.",
      "schedule", label="Optimizer", label_zh="优化器", choices=OPTIMIZERS,
      help_zh="优化器。paged_adamw_8bit（bitsandbytes）以 8 比特保存状态，显存紧张时换出：QLoRA "
              "的常用选择。"),
    S("lr_scheduler_type", "cosine", "How the learning rate changes over the run.",
      "schedule", label="LR scheduler", label_zh="学习率调度", choices=SCHEDULERS,
      help_zh="学习率在训练过程中的变化方式。"),
    S("warmup_steps", 0, "Steps over which the learning rate ramps up from 0.",
      "schedule", label_zh="预热步数", minimum=0, maximum=STEPS_MAX,
      help_zh="学习率从 0 逐步升高所用的步数。"),
    S("weight_decay", 0.0, "Decoupled weight decay.", "schedule", label_zh="权重衰减",
      minimum=0.0, maximum=1.0, advanced=True,
      help_zh="解耦的权重衰减。"),
    S("max_grad_norm", 1.0, "Clip the gradient norm to this value (0 = no clipping).",
      "schedule", label="Max gradient norm", label_zh="梯度裁剪", minimum=0.0, maximum=1e6,
      advanced=True,
      help_zh="把梯度范数裁剪到该值（0 = 不裁剪）。"),
    S("neftune_noise_alpha", 0.0, "Noise added to the input embeddings while training "
      "(NEFTune; 5 is the paper's usual value, 0 = off): it often helps instruction "
      "following on small datasets. Evaluation and chat see no noise.", "schedule",
      label="NEFTune noise", label_zh="NEFTune 噪声", minimum=0.0, maximum=100.0,
      advanced=True,
      help_zh="训练时给输入词向量加噪声（NEFTune；论文常用 5，0 = 关闭）："
              "小数据集上常能改善指令遵循。评估和对话时不加噪声。"),
    # -- logging -------------------------------------------------------------------------
    S("report_to", "none", "Also report the run's metrics to an experiment tracker "
      "(TensorBoard, Weights & Biases, MLflow, Trackio), written inside the run folder "
      "unless its own settings say otherwise; W&B without an API key runs offline.",
      "logging", label="Report to", label_zh="上报到", choices=TRACKER_CHOICES,
      help_zh="同时把训练指标上报到实验跟踪工具（TensorBoard、Weights & Biases、MLflow、"
              "Trackio），默认写在运行文件夹内；没有 API key 时 W&B 以离线模式运行。"),
    S("logging_steps", 5, "Log loss, learning rate and speed every N steps.", "logging",
      label_zh="日志间隔", minimum=1, maximum=STEPS_MAX,
      help_zh="每 N 步记录一次损失、学习率和速度。"),
    S("eval_steps", 50, "Compute the validation loss every N steps (needs a validation "
      "fraction above 0).", "logging", label_zh="评估间隔", minimum=1, maximum=STEPS_MAX,
      help_zh="每 N 步计算一次验证损失（需要验证集比例大于 0）。"),
    S("early_stopping_patience", 0, "Stop the run when the validation loss has not improved "
      "for this many evaluations in a row (0 = never); the result is the model at that step. "
      "Needs a validation fraction above 0.", "logging", label="Early stopping patience",
      label_zh="早停耐心值", minimum=0, maximum=10000,
      help_zh="验证损失连续这么多次评估没有改善时停止训练（0 = 不早停）；结果为该步的模型。"
              "需要验证集比例大于 0。"),
    S("early_stopping_threshold", 0.0, "How much lower the validation loss must be than its "
      "best so far to count as an improvement.", "logging",
      label="Early stopping threshold", label_zh="早停阈值", minimum=0.0, maximum=100.0,
      advanced=True, help_zh="验证损失需比此前最好值低多少才算改善。"),
    S("early_stopping_load_best", False, "With early stopping: make the result the model of "
      "the evaluation with the best validation loss (kept in checkpoints/best as the run "
      "goes) instead of the model at the step it stopped.", "logging",
      label="Load the best at the end", label_zh="结束时载入最佳", advanced=True,
      help_zh="早停时：以验证损失最好的那次评估的模型（训练中保存在 checkpoints/best）作为结果，"
              "而不是停止那一步的模型。"),
    S("save_steps", 200, "Save a checkpoint every N steps (0 = only the final result): a "
      "result Chat and Export can open, and a point the run can be resumed from if it stops "
      "(the optimizer's state too, removed once the run is done).",
      "logging", label_zh="保存间隔", minimum=0, maximum=STEPS_MAX,
      help_zh="每 N 步保存一个检查点（0 = 只保存最终结果）：可在对话和导出中打开的结果，"
              "也是运行中断后可以继续训练的断点（含优化器状态，运行完成后删除）。"),
    S("save_total_limit", 2, "Keep only the newest N checkpoints (0 = keep all); the final "
      "result is always kept.", "logging", label="Checkpoints kept", label_zh="保留检查点数",
      minimum=0, maximum=10000, advanced=True,
      help_zh="只保留最新的 N 个检查点（0 = 全部保留）；最终结果总会保留。"),
    # -- output --------------------------------------------------------------------------
    S("run_name", "", "Name of the run folder under saves/ (empty = method and time). "
      "An existing run is never overwritten: a suffix is added.", "output",
      label_zh="运行名称",
      help_zh="saves/ 下运行文件夹的名称（留空 = 方法名加时间）。不会覆盖已有运行：会自动加后缀"
              "。"),
)


def _merge_settings(settings: Iterable[Setting]) -> dict[str, Setting]:
    """Index settings by name; a setting declared by several methods must be identical
    apart from its methods, which are joined."""
    merged: dict[str, Setting] = {}
    for s in settings:
        if s.name in merged:
            old = merged[s.name]
            if {**old.__dict__, "methods": None} != {**s.__dict__, "methods": None}:
                raise RuntimeError(f"setting {s.name!r} is declared twice, differently")
            methods = tuple(dict.fromkeys((old.methods or ()) + (s.methods or ())))
            merged[s.name] = Setting(**{**old.__dict__, "methods": methods})
        else:
            merged[s.name] = s
    return merged


SETTINGS: dict[str, Setting] = _merge_settings(
    [*COMMON, *STAGE_SETTINGS, *DEVICE_SETTINGS,
     *(s for spec in METHODS.values() for s in spec.settings)]
)


class ConfigError(ValueError):
    """Every problem found in a run configuration, one per line."""

    def __init__(self, problems: list[str], source: str = ""):
        self.problems = problems
        where = f" in {source}" if source else ""
        super().__init__(
            f"{len(problems)} problem(s){where}:\n" + "\n".join(f"  - {p}" for p in problems)
        )


class RunConfig:
    """The settings of one run. Attribute access by setting name; always valid once built."""

    def __init__(self, **values: Any):
        self.__dict__["_values"] = _validated(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("RunConfig is immutable; use .replace(**changes)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunConfig) and self._values == other._values

    def __repr__(self) -> str:
        return f"RunConfig({self.to_dict()})"

    def replace(self, **changes: Any) -> RunConfig:
        return RunConfig(**{**self.to_dict(), **changes})

    def all_values(self) -> dict[str, Any]:
        """Every setting, applicable to this run's method and stage or not."""
        return dict(self._values)

    def to_dict(self) -> dict[str, Any]:
        """The settings that apply to this run's method, in schema order."""
        return {
            name: self._values[name]
            for name, s in SETTINGS.items()
            if s.applies_to(self._values["method"]) and s.applies_to_stage(self._values["stage"])
        }

    # -- YAML ------------------------------------------------------------------------------
    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_yaml())

    @classmethod
    def from_yaml(cls, text: str, source: str = "") -> RunConfig:
        data = load_yaml_text(text, source)
        if not isinstance(data, Mapping):
            raise ConfigError(["expected a mapping of setting: value"], source)
        keys = [k for k in data if not isinstance(k, str)]
        if keys:
            raise ConfigError([f"{k!r}: a setting name must be text, e.g. learning_rate"
                               for k in keys], source)
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(exc.problems, source) from None

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            if path.stat().st_size > MAX_YAML_BYTES:
                raise ConfigError([f"larger than {MAX_YAML_BYTES // 1000} KB: not a run "
                                   "config"], str(path))
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise ConfigError([f"cannot read the file: {exc.strerror}"], str(path)) from None
        except UnicodeDecodeError as exc:
            raise ConfigError([f"not UTF-8 text (byte {exc.start + 1}); save it as UTF-8"],
                              str(path)) from None
        return cls.from_yaml(text, str(path))

    # -- CLI -------------------------------------------------------------------------------
    def to_cli(self, prog: str = "peft-studio train") -> str:
        """The equivalent command line: only the settings that differ from the default."""
        parts = [prog]
        for name, value in self.to_dict().items():
            s = SETTINGS[name]
            if value == s.default:
                continue
            if s.kind is bool:
                parts.append(s.flag if value else "--no-" + s.flag[2:])
            elif s.kind is list:
                parts.append(s.flag + " " + " ".join(_quote(str(v)) for v in value))
            else:
                parts.append(f"{s.flag} {_quote(_fmt(value))}")
        return " ".join(parts)


MAX_YAML_BYTES = 1_000_000
RUN_NAME_MAX = 100
# Folders under saves/ that hold something other than a run.
RESERVED_RUN_NAMES = ("presets", "exports", "comparisons", "evals", "queue", "sweeps")


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without aliases: a run config never needs them, and refusing them
    before composing is what stops a "billion laughs" document from expanding."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError([f"line {mark.line + 1}: YAML aliases (*name) are not allowed "
                               "in a run config; write the value out"])
        return super().compose_node(parent, index)


def load_yaml_text(text: str, source: str = "") -> Any:
    """Parse YAML for a run config: no aliases, and YAML errors as one short line."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError([f"larger than {MAX_YAML_BYTES // 1000} KB: not a run config"],
                          source)
    try:
        return yaml.load(text, Loader=_NoAliasLoader) or {}
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"not valid YAML: {where}{what}"], source) from None


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _validated(values: Mapping[str, Any]) -> dict[str, Any]:
    problems: list[str] = []
    unknown = [k for k in values if k not in SETTINGS]
    for k in unknown:
        problems.append(f"{k}: unknown setting{_suggest(k)}")
    method = values.get("method", SETTINGS["method"].default)
    if not isinstance(method, str) or method not in METHODS:
        # reported by the method setting's own check below; judge the rest by the default
        method = SETTINGS["method"].default
    out: dict[str, Any] = {}
    for name, s in SETTINGS.items():
        if name not in values:
            out[name] = list(s.default) if isinstance(s.default, list) else s.default
            continue
        value, error = s.check(values[name])
        if error:
            problems.append(f"{name}: {error}")
        elif not s.applies_to(method) and value != s.default:
            owners = ", ".join(s.methods or ())
            problems.append(
                f"{name}: applies only to method {owners}, not {method}; "
                f"remove it or choose that method"
            )
        elif not s.applies_to_stage(values.get("stage", "sft")) and value != s.default:
            problems.append(f"{name}: applies only to stage {', '.join(s.stages or ())}, "
                            f"not {values.get('stage', 'sft')}; remove it or choose that stage")
        out[name] = value
    if not problems:
        problems += _cross_checks(out)
    if problems:
        raise ConfigError(problems)
    return out


def _mix_problem(v: dict[str, Any]) -> str | None:
    weights, datasets = v["dataset_weights"], v["dataset"]
    if not weights:
        return None
    if len(weights) != len(datasets):
        return (f"dataset_weights: {len(weights)} weight(s) for {len(datasets)} dataset(s); "
                "give one per dataset, in the same order (or none to concatenate)")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        return "dataset_weights: every weight must be a number above 0"
    return None


def _cross_checks(v: dict[str, Any]) -> list[str]:
    problems = []
    if not v["dataset"]:
        problems.append("dataset: choose at least one dataset")
    if mix := _mix_problem(v):
        problems.append(mix)
    if v["stage"] == "kto" and v["batch_size"] < 2:
        # TRL's KTO pairs each reply with another of its batch for the KL term
        problems.append("batch_size: KTO needs at least 2 (its KL term compares each reply "
                        "with another one of the same batch); set 2 or more")
    if not v["system_prompt"].strip():
        problems.append("system_prompt: empty; write default (the chat template's own), "
                        "none (no system prompt) or your text")
    if v["quantization"] != "none" and v["precision"] == "fp16":
        problems.append("precision: fp16 with a quantized base is unstable; use auto or bf16")
    if v["method"] == "prefix" and v["gradient_checkpointing"]:
        # peft's prefix tuning feeds cached key/values that activation recomputation breaks
        problems.append("gradient_checkpointing: does not work with prefix tuning; turn it "
                        "off or choose another method")
    problems += stage_problems(v["stage"], v["method"])
    problems += distributed_problems(v)
    if v["early_stopping_patience"] and v["val_size"] <= 0:
        problems.append("early_stopping_patience: needs a validation loss to watch; set "
                        "val_size above 0 (e.g. 0.1), or patience 0")
    name = v["run_name"]
    if any(c in name for c in "/\\\0") or name in (".", ".."):
        problems.append("run_name: must be a plain folder name, without '/'")
    elif len(name) > RUN_NAME_MAX:
        problems.append(f"run_name: {len(name)} characters; use at most {RUN_NAME_MAX}")
    elif name.lower() in RESERVED_RUN_NAMES:
        problems.append(f"run_name: {name!r} is a folder PEFT Studio keeps in saves/ for "
                        f"itself ({', '.join(RESERVED_RUN_NAMES)}); choose another name")
    return problems


def _suggest(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, SETTINGS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- argparse ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, named after it; defaults are suppressed so that only the
    flags a user typed reach `config_from_args`."""
    parser.add_argument("--config", help="YAML file with settings; flags override it")
    for group_name, group in _groups().items():
        arg_group = parser.add_argument_group(group_name)
        for s in group:
            kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _flag_help(s)}
            if s.kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif s.kind is list:
                kwargs["nargs"] = "+"
            else:
                kwargs["metavar"] = s.name.upper() if s.choices is None else None
                if s.choices and not s.allow_custom:
                    kwargs["choices"] = s.choices
                kwargs["type"] = s.kind
            arg_group.add_argument(s.flag, dest=s.name, **kwargs)


def _groups() -> dict[str, list[Setting]]:
    from core.schema.setting import GROUPS

    out: dict[str, list[Setting]] = {}
    for s in SETTINGS.values():
        out.setdefault(GROUPS[s.group][0], []).append(s)
    return out


def _flag_help(s: Setting) -> str:
    text = s.help.replace("%", "%%")
    if s.methods is not None:
        text += f" [{', '.join(s.methods)}]"
    return f"{text} (default: {s.default})"


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (the others are absent from `args`)."""
    return {k: v for k, v in vars(args).items() if k in SETTINGS}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    base: dict[str, Any] = {}
    if getattr(args, "config", None):
        base = RunConfig.load(args.config).to_dict()
    given = given_settings(args)
    if "method" in given and "method" in base and given["method"] != base["method"]:
        # Settings of the YAML's method do not carry over to another method.
        base = {k: v for k, v in base.items() if SETTINGS[k].applies_to(given["method"])}
    return RunConfig(**{**base, **given})
