"""The settings of the jobs that are not training runs: generation (Chat, the chat CLI,
serving), evaluation and export. Described as Settings like a run's, so that each job's
CLI flags (core.schema.setting.add_flags), its UI widgets (webui.widgets), its bounds
(check_fields in the job's spec) and its defaults come from here alone."""

from __future__ import annotations

from core.schema.setting import Setting, by_name

S = Setting
TOKENS = 32768  # the longest generation any job may ask for

GENERATION: dict[str, Setting] = by_name(
    S("max_new_tokens", 256, "Longest reply, in tokens.", "generation", label="Max new tokens",
      label_zh="最大生成词元数", minimum=1, maximum=TOKENS, help_zh="回复的最大词元数。"),
    S("temperature", 0.7, "Sampling temperature; 0 answers greedily.", "generation",
      label="Temperature", label_zh="温度", minimum=0.0, maximum=10.0,
      help_zh="采样温度；0 表示贪心解码。"),
    S("top_p", 0.9, "Sample from the smallest set of tokens whose probabilities add up to "
      "this.", "generation", label="Top-p", label_zh="Top-p", minimum=0.0, maximum=1.0,
      help_zh="从概率之和达到该值的最小词元集合中采样。"),
    S("top_k", 50, "Sample from the k likeliest tokens (0 = no limit).", "generation",
      label="Top-k (0 = off)", label_zh="Top-k（0 表示不限）", minimum=0, maximum=100000,
      help_zh="从概率最高的 k 个词元中采样（0 表示不限）。"),
    S("repetition_penalty", 1.1, "Above 1 discourages repeating tokens.", "generation",
      label="Repetition penalty", label_zh="重复惩罚", minimum=0.01, maximum=10.0,
      help_zh="大于 1 时抑制重复词元。"),
)

EVALUATION: dict[str, Setting] = by_name(
    S("max_samples", 50, "Score at most this many samples (0 = all).", "evaluation",
      label="Max samples", label_zh="最大样本数", minimum=0,
      help_zh="最多评估的样本数（0 表示全部）。"),
    S("max_new_tokens", 64, "Longest answer, in tokens (scored answers are short: less than "
      "a chat reply's default).", "evaluation", label="Max new tokens",
      label_zh="最大生成词元数", minimum=1, maximum=TOKENS,
      help_zh="回答的最大词元数（评分的回答较短）。"),
    S("batch_size", 8, "Samples scored at once.", "evaluation", label="Batch size",
      label_zh="批大小", minimum=1, maximum=4096, help_zh="一次评估的样本数。"),
    S("cutoff_len", 1024, "Longest prompt plus reference, in tokens.", "evaluation",
      label="Cut-off length", label_zh="截断长度", minimum=8, maximum=131072,
      help_zh="提示加参考答案的最大词元数。"),
)

# GGUF tensor types the studio writes itself (core.export.gguf); others need llama.cpp.
GGUF_TYPES = ("f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
EXPORT: dict[str, Setting] = by_name(
    S("max_shard_size", "2GB", "Largest safetensors file of the export, e.g. 200MB or 2GB.",
      "export", label="Max shard size", label_zh="最大分片大小",
      choices=("200MB", "500MB", "1GB", "2GB", "5GB"), allow_custom=True,
      help_zh="导出的单个 safetensors 文件的最大大小，例如 200MB 或 2GB。"),
    S("gguf_type", "q8_0", "f16/bf16 keep the weights; q8_0 is close and half the size; "
      "q5_*/q4_* are smaller and lossier (checked against bounds per type). For Q4_K_M and "
      "other k-quants, export f16 and run llama.cpp's llama-quantize on it.", "export",
      label="GGUF type", label_zh="GGUF 类型", choices=GGUF_TYPES,
      help_zh="f16/bf16 保留权重；q8_0 接近原模型、体积减半；q5_*/q4_* 更小、损失更大"
              "（按类型设定容差校验）。Q4_K_M 等 k-quant 类型：导出 f16 后用 llama.cpp 的 "
              "llama-quantize 转换"),
)

# Serving (core/serve/): the OpenAI-compatible endpoint's bounds. Generation defaults are
# GENERATION's, so a served model answers as the Chat tab does.
SERVING: dict[str, Setting] = by_name(
    S("queue_size", 16, "Requests that may wait while one is answered; more get 429 (busy, "
      "retry later).", "serving", label="Queue size", label_zh="队列长度", minimum=0,
      maximum=1024,
      help_zh="正在回答一个请求时最多等待的请求数；超出的返回 429（繁忙，请稍后重试）。"),
    S("max_batch", 8, "Requests for one model answered together, as one batch (1: one at "
      "a time).", "serving", label="Batch size", label_zh="批大小", minimum=1, maximum=256,
      help_zh="同一模型的请求最多合并成一批一起回答的数量（1：逐个回答）。"),
    S("max_request_mb", 4.0, "Largest request body, in MB; larger ones get 413.", "serving",
      label="Max request size (MB)", label_zh="最大请求大小（MB）", minimum=0.01,
      maximum=1024.0, help_zh="请求体的最大大小（MB）；超出的返回 413。"),
)
