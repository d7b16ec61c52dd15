"""Which number format a run computes in, and why: `precision: auto` made concrete.

On a GPU: bf16 where it has it, fp16 on older ones. On a CPU: bf16 where the processor
has AMX bfloat16 matrix units, asked through torch's own capability check
(`torch.cpu.get_capabilities`), fp32 elsewhere, AVX-512 BF16 without AMX included.
Measured on an AMD EPYC with AVX-512 BF16 and no AMX (docs/performance.md): a 512x576x1536
matrix product 2.5x faster in bf16, a whole LoRA run 1.14x samples/s but its held-out loss
20% higher on `sentiment` (so auto keeps fp32 there), greedy generation 0.27x: so Chat,
Evaluate and serving load their models in fp32 whatever the processor has. A bf16 run on a
CPU holds its frozen base in bf16 and computes under torch's autocast; the trainable
weights, the optimizer state and the loss stay fp32.

What stays fp32 under `auto` on a CPU, and why (`Choice.reason` says it in the start event):
methods that train the base's own weights (full, freeze: bf16 weights would lose small
updates), methods that put trainable vectors before the input (prefix, prompt, P-tuning:
not measured in bf16), a quantized base (bitsandbytes computes in its own dtype) and the
preference stages (their loss is a small difference between two forward passes: not
measured in bf16). An explicit `bf16` is taken as asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The methods whose frozen base may be held in bf16 on a CPU (the LoRA family, IA3, the
# bottleneck adapter): only small added weights train, and those stay fp32.
BF16_BASE_METHODS = ("lora", "ia3", "adapter")
BF16_STAGES = ("sft", "pt")


@dataclass(frozen=True)
class Choice:
    precision: str  # bf16, fp16 or fp32
    reason: str


def cpu_capabilities() -> dict[str, Any]:
    """torch's view of this processor (instruction sets, its name); {} when torch is too
    old to say."""
    import torch

    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    return dict(get()) if get else {}


def cpu_bf16(caps: dict[str, Any] | None = None) -> Choice:
    """bf16 where this CPU has bfloat16 matrix instructions, else fp32; the reason names
    the processor and what it has."""
    caps = cpu_capabilities() if caps is None else caps
    name = caps.get("cpu_name") or "this CPU"
    if caps.get("amx_bf16") and caps.get("amx_tile"):
        return Choice("bf16", f"{name} has AMX bfloat16 matrix units")
    if caps.get("avx512_bf16"):
        # Measured on an AMD EPYC (docs/performance.md): 1.14x samples/s, but the held-out
        # loss of `sentiment` 20% higher after 12 steps: a changed result, not noise.
        return Choice("fp32", f"{name} has AVX-512 BF16 but no AMX: bf16 measured only 1.14x "
                      "faster there, with a 20% higher held-out loss; set bf16 to use it")
    return Choice("fp32", f"{name} has no bfloat16 matrix instructions (AMX or AVX-512 BF16)")


def for_run(cfg: Any, on_gpu: bool | None = None, gpu_bf16: bool | None = None,
            caps: dict[str, Any] | None = None) -> Choice:
    """The precision a run computes in: `cfg.precision` unless it is `auto`; for `auto`
    the device's best one where the run's method, stage and base allow it."""
    if cfg.precision != "auto":
        return Choice(cfg.precision, "set by the run")
    if on_gpu is None or gpu_bf16 is None:
        import torch

        on_gpu = torch.cuda.is_available()
        gpu_bf16 = on_gpu and torch.cuda.is_bf16_supported()
    if on_gpu:
        return Choice("bf16", "the GPU supports bf16") if gpu_bf16 else \
            Choice("fp16", "the GPU has no bf16")
    cpu = cpu_bf16(caps)
    if cpu.precision == "fp32":
        return cpu
    kept = _kept_fp32(cfg)
    return Choice("fp32", f"{cpu.reason}, but {kept}") if kept else cpu


def _kept_fp32(cfg: Any) -> str:
    """Why a run keeps fp32 on a CPU with bf16 units, or "" when nothing keeps it."""
    if cfg.method not in BF16_BASE_METHODS:
        return (f"{cfg.method} keeps fp32 (only {', '.join(BF16_BASE_METHODS)} hold the base "
                "in bf16)")
    if getattr(cfg, "quantization", "none") != "none":
        return "a quantized base keeps fp32"
    if cfg.stage not in BF16_STAGES:
        return f"the {cfg.stage} stage keeps fp32 (not measured in bf16)"
    return ""


def base_dtype(cfg: Any, precision: str, on_gpu: bool) -> Any:
    """The dtype a run loads its base in: bf16 on a GPU computing in bf16, and on a CPU
    computing in bf16 for the methods whose base stays frozen; float32 otherwise (fp16
    mixed precision needs float32 weights to update)."""
    import torch

    if precision != "bf16":
        return torch.float32
    if on_gpu or (cfg.method in BF16_BASE_METHODS
                  and getattr(cfg, "quantization", "none") == "none"):
        return torch.bfloat16
    return torch.float32
