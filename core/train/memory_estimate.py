"""Memory per device before a run starts: weights, gradients, optimizer state, activations.

Plain arithmetic over facts about the model (from the probe: parameter counts and shapes)
and the run's settings, so the UI recomputes it at once when a batch size changes. It is
an estimate for deciding whether to try, not a promise: allocator slack, kernels'
workspaces and fragmentation come on top (hence "tight" well before 100%).

How bytes are counted follows core.methods.base: trainable weights are kept in float32;
the frozen base loads in bfloat16 on a GPU that has it (float32 otherwise, and on a CPU),
or in 8/4 bits when quantized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GB = 1024**3
FITS, TIGHT, DOES_NOT_FIT = "fits", "tight", "does not fit"
TIGHT_FROM = 0.8  # above this share of a device's memory the estimate's error matters
# Optimizer state per trained weight, bytes.
OPTIMIZER_BYTES = {"adamw_torch": 8, "adamw_torch_fused": 8, "paged_adamw_8bit": 2,
                   "adamw_8bit": 2, "adafactor": 4, "sgd": 0}
# What a process holds before any weight: the CUDA context and kernels on a GPU; Python,
# torch and transformers on a CPU.
BASELINE = {"gpu": 0.5 * GB, "cpu": 0.6 * GB}
LOSS_CHUNK = 4096  # core.train.fast_loss computes logits this many positions at a time
PROMPT_LEARNING = ("prefix", "prompt", "ptuning")


@dataclass(frozen=True)
class Estimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    baseline: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.baseline

    def parts(self) -> dict[str, float]:
        return {"weights": self.weights, "gradients": self.gradients,
                "optimizer state": self.optimizer, "activations": self.activations,
                "runtime": self.baseline}


def estimate(model: dict[str, Any], settings: dict[str, Any], on_gpu: bool,
             processes: int = 1, bf16: bool = True,
             lengths: list[int] | None = None, trained_share: float = 1.0) -> Estimate:
    """Bytes per device (per process). `model`: trainable, total, hidden_size,
    num_layers, vocab_size, num_heads (from the probe). `settings`: the run's values.
    `bf16`: the GPU supports bfloat16 (the auto precision). `lengths`: the tokens of each
    sample of the data chosen (before the cut-off); without them every sample is taken
    to fill the cut-off. `trained_share`: the part of those tokens that carry a label (the
    reply's), the only positions whose logits fast_loss computes."""
    trainable, total = int(model["trainable"]), int(model["total"])
    frozen = max(total - trainable, 0)
    quant = settings.get("quantization", "none")
    precision = settings.get("precision", "auto")
    half = on_gpu and (precision == "bf16" or (precision == "auto" and bf16))
    frozen_bytes = {"4bit": 0.5625, "8bit": 1.0}.get(quant, 2.0 if half else 4.0)
    weights = frozen * frozen_bytes + trainable * 4.0
    gradients = trainable * 4.0
    optimizer = trainable * OPTIMIZER_BYTES.get(settings.get("optim", "adamw_torch"), 8)

    strategy = settings.get("distributed", "ddp")
    world = max(processes * int(settings.get("nnodes", 1)), 1)
    if strategy in ("zero2", "zero3", "fsdp"):
        gradients /= world
        optimizer /= world
    if strategy in ("zero3", "fsdp"):
        weights /= world
    if settings.get("offload") and strategy in ("zero2", "zero3"):
        optimizer = 0.0  # in CPU memory
        if strategy == "zero3":
            weights = 0.0

    activations = _activations(model, settings, half or precision == "fp16",
                               peak_tokens(settings, lengths), trained_share)
    return Estimate(weights, gradients, optimizer, activations,
                    BASELINE["gpu" if on_gpu else "cpu"])


def peak_tokens(settings: dict[str, Any], lengths: list[int] | None) -> int:
    """Positions in the largest batch the run will see (b·s of the formula): packed rows
    fill the cut-off; a padding-free batch is its samples laid end to end (the longest
    `batch_size` of them at worst); a padded one is its longest sample times the batch."""
    b = int(settings.get("batch_size", 1))
    cutoff = int(settings.get("cutoff_len", 1024))
    # Prompt tuning and P-tuning put their virtual tokens before every sample: positions
    # of every layer like the sample's own (prefix tuning's are keys and values only).
    virtual = int(settings.get("num_virtual_tokens") or 0) \
        if settings.get("method") in ("prompt", "ptuning") else 0
    if not lengths or settings.get("packing"):
        return b * (cutoff + virtual)
    capped = sorted((min(int(n), cutoff) for n in lengths), reverse=True)
    if settings.get("batching") == "padding_free":
        return sum(capped[:b]) + min(b, len(capped)) * virtual
    return min(b, len(capped)) * (capped[0] + virtual)


def _activations(model: dict[str, Any], settings: dict[str, Any], half: bool,
                 tokens: int, trained_share: float) -> float:
    """Saved activations for the backward pass at the largest batch (`tokens` positions):
    per layer about 34·tokens·h bytes in 16-bit (Korthikanti et al., 2022, without the s²
    attention scores, which SDPA and flash-attention never keep), or only each layer's
    input with gradient checkpointing; plus the float32 logits and their gradient (with
    fast_loss, of the labelled positions only, one chunk at a time)."""
    h = int(model.get("hidden_size") or 0)
    layers = _backward_layers(int(model.get("num_layers") or 0), settings)
    vocab = int(model.get("vocab_size") or 0)
    scale = 1.0 if half else 2.0  # the formula counts 2-byte values
    saved = 2.0 if settings.get("gradient_checkpointing") else 34.0
    logit_positions = tokens
    # Prompt learning goes through peft's own forward, which computes every position's
    # logits (core.train.fast_loss.causal_lm declines it).
    if settings.get("fast_loss", True) and settings.get("method") not in PROMPT_LEARNING:
        logit_positions = min(tokens * min(max(trained_share, 0.0), 1.0), LOSS_CHUNK)
    return layers * saved * tokens * h * scale + 2 * 4.0 * logit_positions * vocab


def _backward_layers(layers: int, settings: dict[str, Any]) -> int:
    """The layers whose activations the backward pass keeps: those it goes through. It
    stops at the lowest layer that trains, so freeze tuning of the last layers keeps only
    theirs (measured on the embedded model: 1.69x over without this); training the first
    layers, extra modules or any other method reaches the bottom of the stack."""
    if settings.get("method") == "freeze" and settings.get("freeze_from", "last") == "last" \
            and not settings.get("freeze_extra_modules"):
        return min(int(settings.get("freeze_trainable_layers") or layers), layers)
    return layers


def verdict(need: float, capacity: float) -> str:
    """fits / tight / does not fit: `need` bytes against `capacity` bytes."""
    if capacity <= 0 or need > capacity:
        return DOES_NOT_FIT
    return FITS if need <= TIGHT_FROM * capacity else TIGHT


def judge(est: Estimate, devices: list[dict[str, Any]], processes: int) -> list[dict]:
    """One line per device: {name, need, capacity, verdict}. On a CPU all processes
    share one memory, so they are judged together."""
    out = []
    for dev in devices:
        need = est.total if dev.get("kind") == "gpu" else est.total * max(processes, 1)
        out.append({"name": dev["name"], "need": need, "capacity": float(dev["memory"]),
                    "verdict": verdict(need, float(dev["memory"]))})
    return out


def markdown(est: Estimate, lines: list[dict]) -> str:
    parts = " + ".join(f"{name} {value / GB:.2f}" for name, value in est.parts().items()
                       if value)
    mark = {FITS: "✓", TIGHT: "⚠", DOES_NOT_FIT: "✗"}
    rows = [f"- {mark[ln['verdict']]} **{ln['verdict']}** on {ln['name']}: needs about "
            f"{ln['need'] / GB:.2f} GB of {ln['capacity'] / GB:.1f} GB" for ln in lines]
    return (f"Memory per process (estimate, GB): {parts} = **{est.total / GB:.2f}**\n"
            + "\n".join(rows))
