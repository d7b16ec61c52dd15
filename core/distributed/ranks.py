"""Inside a rank of a run with several processes: which rank this is, stopping together,
gathering sharded weights for the save, and one stream of events (rank 0's). Imported by the
trainer in each rank; the launch side (arguments, DeepSpeed config) is core.distributed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


LAUNCHED_ENV = "PEFT_STUDIO_LAUNCHED"  # set by core.distributed.launch: it holds the device lock


def under_launcher() -> bool:
    return os.environ.get(LAUNCHED_ENV) == "1"


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the process that started it (torchrun)
    dies, so a killed launcher never leaves a rank holding a GPU."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def agree_to_stop(requested: bool) -> bool:
    """Whether any rank wants to stop: every rank must stop at the same step, or the one
    still training waits for the others for ever."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return requested
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    flag = torch.tensor([1 if requested else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def state_gatherer(trainer: Any, trainable_only: bool) -> Any:
    """For a run whose weights are sharded between the processes (ZeRO-3, FSDP): a function
    that every rank must call together, returning the whole state dict on rank 0 (on the
    CPU; what the other ranks get back is not used). None for DDP and ZeRO-2 (and one
    plain process), where every rank holds every weight and rank 0 saves alone.
    `trainable_only`: gather only the trained weights (an adapter's), not a copy of the
    whole frozen base.

    The gathering is the libraries' own, the one Trainer.save_model does, rather than ours:
    DeepSpeed's consolidated state dict (which gathers each partitioned parameter in turn
    onto rank 0, so no rank ever holds the whole model twice) and torch's full state dict
    for FSDP2 (what accelerate's get_state_dict calls). Trainer.save_model itself is not
    used: it writes its own layout (a whole model for our bottleneck adapter, no manifest),
    and not whole-or-nothing. Resolved at each call: the DeepSpeed engine exists only once
    training has begun."""
    if trainer.is_fsdp_enabled:
        def gather_fsdp() -> dict[str, Any]:
            if not trainer.accelerator.is_fsdp2:
                return trainer.accelerator.get_state_dict(trainer.model)
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            # accelerate's get_state_dict with ignore_frozen_params added: an adapter's
            # save must not gather the base it leaves untouched.
            options = StateDictOptions(full_state_dict=True, cpu_offload=True,
                                       ignore_frozen_params=trainable_only)
            return get_model_state_dict(trainer.model, options=options)

        return gather_fsdp
    if not trainer.is_deepspeed_enabled:
        return None
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return None

    def gather_zero3() -> dict[str, Any]:
        engine = trainer.model_wrapped  # the DeepSpeed engine, once training has begun
        # What Trainer.save_model does for a peft model under ZeRO-3 (and accelerate's
        # get_state_dict without exclude_frozen_parameters, for a whole model).
        return engine._zero3_consolidated_16bit_state_dict(
            exclude_frozen_parameters=trainable_only)

    return gather_zero3


def start_fields(device: str) -> dict[str, Any]:
    """For the start event: how many processes, on how many machines, on what."""
    n = world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", n))
    fields: dict[str, Any] = {"processes": n, "nodes": max(1, n // max(local, 1))}
    if device.startswith("cuda"):
        mask = os.environ.get("CUDA_VISIBLE_DEVICES")
        fields["devices"] = mask.split(",")[:local] if mask else [str(i) for i in range(local)]
    else:
        fields["devices"] = ["cpu"] * local
    return fields


def events_for_rank(run_dir: Path) -> Any:
    """Rank 0's events go to events.jsonl; the other ranks' nowhere (one stream of steps)."""
    from core.jobs.events import EventWriter

    if rank() == 0:
        return EventWriter(run_dir)

    class Silent(EventWriter):
        def emit(self, type: str, **fields: Any) -> dict[str, Any]:
            return {"type": type, **fields}

    return Silent(run_dir)
