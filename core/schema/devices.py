"""The device settings of a run (processes, GPUs, how several processes share the model,
several machines) and the combinations of them that cannot work on any machine. Part of
the one schema (core.schema.config takes them in); core.distributed launches what they ask
for."""

from __future__ import annotations

from typing import Any

from core.schema.setting import Setting
from core.stages import PREFERENCE_STAGES

S = Setting
STRATEGIES = ("ddp", "zero2", "zero3", "fsdp")
# Methods whose trained part is virtual-token embeddings that peft keeps outside every
# transformer layer: FSDP and ZeRO-3 shard weights layer by layer and cannot shard them.
VIRTUAL_TOKEN_METHODS = ("prefix", "prompt", "ptuning")

SETTINGS: tuple[Setting, ...] = (
    S("nproc_per_node", 0, "Training processes on this machine, one per device (0 = auto: "
      "every visible GPU, or 1 on a CPU). Above 1, the run starts under torchrun and each "
      "process trains on its share of every batch.", "devices", label="Processes per machine",
      label_zh="每台机器的进程数", minimum=0, maximum=256,
      help_zh="本机的训练进程数，每个设备一个（0 = 自动：所有可见 GPU，CPU 上为 1）。大于 1 时由 "
              "torchrun 启动，每个进程训练每批数据的一部分。"),
    S("devices", "", "Which GPUs to train on, e.g. '0,1' (empty = every visible GPU); sets "
      "CUDA_VISIBLE_DEVICES for the run.", "devices", label="GPUs", label_zh="使用的 GPU",
      help_zh="在哪些 GPU 上训练，例如 '0,1'（留空 = 所有可见 GPU）；为本次运行设置 "
              "CUDA_VISIBLE_DEVICES。"),
    S("distributed", "ddp", "How several processes share the model. ddp: each holds a whole "
      "copy and gradients are averaged. zero2: DeepSpeed ZeRO-2 also splits optimizer state "
      "and gradients between them. zero3: ZeRO-3 splits the weights too (largest models). "
      "fsdp: PyTorch FSDP splits weights, gradients and optimizer state (GPUs only).",
      "devices", label="Distribution", label_zh="分布式方式", choices=STRATEGIES,
      help_zh="多个进程如何分担模型。ddp：每个进程持有完整副本，梯度取平均。zero2：DeepSpeed "
              "ZeRO-2 还把优化器状态和梯度分到各进程。zero3：ZeRO-3 连权重也拆分（最大的模型）。"
              "fsdp：PyTorch FSDP 拆分权重、梯度和优化器状态（仅 GPU）。"),
    S("offload", False, "With ZeRO: keep the optimizer state (and with zero3 the weights) in "
      "CPU memory; slower, but frees GPU memory.", "devices", label="Offload to CPU",
      label_zh="卸载到 CPU", advanced=True,
      help_zh="使用 ZeRO 时：把优化器状态（zero3 时还有权重）放在 CPU 内存中；更慢，但省显存。"),
    S("nnodes", 1, "Machines taking part. Each other machine runs the command the Train tab "
      "shows for it, with the same config.", "devices", label="Machines", label_zh="机器数",
      minimum=1, maximum=1024, advanced=True,
      help_zh="参与训练的机器数。其他每台机器用同一份配置运行训练页给出的命令。"),
    S("node_rank", 0, "This machine's number, 0 to machines - 1; machine 0 writes the "
      "results.", "devices", label="Machine number", label_zh="本机编号", minimum=0,
      maximum=1023, advanced=True,
      help_zh="本机编号，0 到机器数 - 1；0 号机器保存结果。"),
    S("master_addr", "", "Address of machine 0 that every machine can reach (needed with "
      "more than one machine).", "devices", label="Machine 0 address",
      label_zh="0 号机器地址", advanced=True,
      help_zh="0 号机器的地址，所有机器都能访问（多台机器时必填）。"),
    S("master_port", 29500, "Port on machine 0 where the machines meet (more than one "
      "machine; a single machine picks a free port itself).", "devices",
      label="Machine 0 port", label_zh="0 号机器端口", minimum=1, maximum=65535,
      advanced=True,
      help_zh="各机器在 0 号机器上会合的端口（多台机器时使用；单机自动选空闲端口）。"),
    S("ddp_timeout", 30, "Minutes a process waits for the others before the run fails: a "
      "hung or dead process ends the run instead of blocking it for ever.", "devices",
      label="Timeout (minutes)", label_zh="超时（分钟）", minimum=1, maximum=1440,
      advanced=True,
      help_zh="一个进程等待其他进程的分钟数，超时则运行失败：卡住或死掉的进程不会让运行永远挂起。"),
)


def device_list(text: str) -> list[int] | None:
    """'0,1' -> [0, 1]; None when the text is not a list of GPU numbers."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not all(t.isdigit() for t in items):
        return None
    return [int(t) for t in items]


def schema_problems(v: dict[str, Any]) -> list[str]:
    """Combinations that cannot work on any machine (part of config validation)."""
    problems = []
    strategy = v["distributed"]
    quant = v.get("quantization", "none")
    if strategy == "zero3" and quant != "none":
        problems.append(f"distributed: ZeRO-3 splits the weights between processes, and "
                        f"bitsandbytes' {quant} weights cannot be split; use zero2 or ddp, "
                        "or no quantization")
    if strategy == "fsdp" and quant != "none":
        problems.append(f"distributed: FSDP cannot shard bitsandbytes' {quant} weights here; "
                        "use ddp or zero2, or no quantization")
    if strategy in ("zero3", "fsdp") and v["method"] in VIRTUAL_TOKEN_METHODS:
        problems.append(f"distributed: {strategy} shards weights layer by layer, and peft "
                        f"keeps {v['method']}'s virtual tokens outside every layer, so it "
                        "cannot shard them; use ddp or zero2")
    if v["offload"] and strategy not in ("zero2", "zero3"):
        problems.append("offload: applies to DeepSpeed ZeRO only; choose zero2 or zero3, or "
                        "turn offload off")
    if v["devices"] and device_list(v["devices"]) is None:
        problems.append(f"devices: {v['devices']!r} is not a list of GPU numbers; write them "
                        "like 0,1 or leave it empty for every GPU")
    chosen = device_list(v["devices"]) or []
    if chosen and v["nproc_per_node"] > len(chosen):
        problems.append(f"nproc_per_node: {v['nproc_per_node']} processes on "
                        f"{len(chosen)} chosen GPU(s) ({v['devices']}); use at most "
                        f"{len(chosen)}, one per GPU")
    if v["nnodes"] > 1 and not v["master_addr"].strip():
        problems.append("master_addr: with more than one machine, give the address of "
                        "machine 0 that every machine can reach (e.g. 10.0.0.1)")
    if v["node_rank"] >= v["nnodes"]:
        problems.append(f"node_rank: {v['node_rank']} with {v['nnodes']} machine(s); number "
                        f"the machines 0 to {v['nnodes'] - 1}")
    if v["stage"] in PREFERENCE_STAGES and strategy != "ddp":
        # The reference model (the base with the adapter off, or a second copy) is not
        # sharded by our configs: measured only with ddp so far.
        problems.append(f"stage: {v['stage']} runs with ddp (one whole copy per process); "
                        f"{strategy} is not supported for preference stages yet")
    return problems
