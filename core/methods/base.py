"""The base model as a run trains it: its dtype (core.precision decides), its quantization
(QLoRA: bitsandbytes, prepared for k-bit training), and the run's method applied so that
only the method's parameters train."""

from __future__ import annotations

import os
from typing import Any


def training_dtype(cfg: Any) -> Any:
    """The dtype the base weights are loaded in (core.precision.base_dtype): bfloat16 when
    the run computes in bf16 (on a CPU only for methods whose base stays frozen), else
    float32. fp16 runs keep float32 weights: mixed precision computes in fp16 but needs
    float32 weights to update."""
    import torch

    from core import precision

    on_gpu = torch.cuda.is_available()
    return precision.base_dtype(cfg, precision.for_run(cfg).precision, on_gpu)


def quantization_config(cfg: Any) -> Any:
    """The BitsAndBytesConfig for the run's quantization, or None when it has none."""
    if getattr(cfg, "quantization", "none") == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if cfg.compute_dtype == "auto":
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        compute = torch.bfloat16 if gpu_bf16 else torch.float32
    else:
        compute = getattr(torch, cfg.compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def load_base_for_training(cfg: Any) -> Any:
    """The base model as the run trains it, in `training_dtype`; with quantization, loaded
    in 8 or 4 bits by bitsandbytes (this works on CPU too, slowly) and prepared for k-bit
    training (frozen, norms in float32, and gradient checkpointing when the run asks for it)."""
    import torch

    from core import models

    quant = quantization_config(cfg)
    device_map = None
    if quant is not None and torch.cuda.is_available():
        # bitsandbytes places the weights as it quantizes them: one GPU per process
        # (LOCAL_RANK under torchrun).
        device_map = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = models.load_model(
        cfg.model,
        dtype=training_dtype(cfg),
        quantization_config=quant,
        trust_remote_code=cfg.trust_remote_code,
        device_map=device_map,
    )
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing
        )
    return model


def apply_method(model: Any, cfg: Any) -> Any:
    """Wrap `model` with the run's method so that only the method's parameters train.
    Trainable half-precision weights are kept in float32 (mixed precision wants float32
    weights to update; the frozen rest stays in the loading dtype)."""
    import torch

    from core.methods import implementation

    model = implementation(cfg.method).wrap(model, cfg)
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
    return model


def load_quantized(cfg: Any) -> Any:
    """The run's base quantized as it was in training (a QLoRA adapter then gives exactly
    its training-time outputs), on the GPU when there is one."""
    import torch

    from core import models

    return models.load_model(
        cfg.model, dtype=training_dtype(cfg), quantization_config=quantization_config(cfg),
        trust_remote_code=cfg.trust_remote_code,
        device_map={"": 0} if torch.cuda.is_available() else None,
    )
