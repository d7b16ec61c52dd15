"""Machine-specific speed-ups for a training run: CPU threads, and on CUDA the optional
kernels of the `gpu` extra. Each is on only when it applies, and named in the start event.

CPU: one intra-op thread per physical core. Hyper-threads share a core's vector units,
so more threads than cores only adds contention; an explicit OMP_NUM_THREADS wins.

CUDA (unmeasured: no GPU where this was written): flash-attention 2 when the
`flash_attn` package imports, and Liger's Triton kernels (RMSNorm, SwiGLU, RoPE and the
fused linear cross-entropy, which never materialises the logits) when `liger_kernel`
imports and supports the architecture. With Liger's fused loss the model's own forward
computes the loss, so core.train.fast_loss stands aside.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any


def cpu_threads() -> int | None:
    """Set torch's thread count to the physical cores available to us; the count set,
    or None when the user chose one through OMP_NUM_THREADS."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import psutil
    import torch

    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
    threads = max(1, min(physical, usable))
    torch.set_num_threads(threads)
    return threads


def flash_attention_available() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def enable_gpu_kernels(model: Any, prompt_learning: bool) -> list[str]:
    """Switch on the importable CUDA kernels for `model`; the names of those switched on."""
    import torch

    if not torch.cuda.is_available():
        return []
    on: list[str] = []
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if flash_attention_available() and not prompt_learning:
        try:
            inner.set_attn_implementation("flash_attention_2")
            on.append("flash-attention 2")
        except (ValueError, ImportError, AttributeError) as exc:
            print(f"flash-attention not used: {exc}", flush=True)
    if importlib.util.find_spec("liger_kernel") is not None:
        try:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(model=inner, fused_linear_cross_entropy=True,
                                            cross_entropy=False, rms_norm=True, swiglu=True,
                                            rope=True)
            on.append("liger fused linear cross-entropy, RMSNorm, SwiGLU, RoPE")
        except Exception as exc:  # unsupported architecture or version: train without
            print(f"liger kernels not used: {exc}", flush=True)
    return on


def liger_loss(kernels: list[str]) -> bool:
    return any(name.startswith("liger fused linear") for name in kernels)
