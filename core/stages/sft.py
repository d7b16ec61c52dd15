"""The recipe of the sft and pt stages (see core.stages): transformers' Trainer on our own
encoding, with the speed levers of core.train.

Why Trainer and not TRL's SFTTrainer: our encoder (core.data.encode) already renders with
the model's chat template and masks everything but the assistant replies, for any
template; SFTTrainer's assistant-only loss needs templates that carry {% generation %}
markers, which most (SmolLM2's included) do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.schema.config import RunConfig
from core.train.hooks import Plan


def data(cfg: RunConfig, tokenizer: Any) -> tuple[list[dict], list[dict], dict[str, Any]]:
    from core.data.encode import build_datasets

    train_items, eval_items, stats = build_datasets(cfg, tokenizer)
    return train_items, eval_items or [], stats


def model(cfg: RunConfig) -> Any:
    from core.methods.base import apply_method, load_base_for_training

    return apply_method(load_base_for_training(cfg), cfg)


def plan(cfg: RunConfig, model: Any, tokenizer: Any, run_dir: Path, device: str,
         precision: str, has_eval: bool) -> Plan:
    from core.train import batching, fast_loss
    from core.train.trainer_args import training_arguments

    levers = _speed_levers(cfg, model, device)
    flash = "flash-attention 2" in levers["kernels"]
    args = training_arguments(
        cfg, run_dir, device, precision, has_eval,
        remove_unused_columns=False,  # every column goes to our collator
        train_sampling_strategy="group_by_length" if levers["batching"] == "grouped"
        else "random",
    )
    collator = batching.collator(levers["batching"], tokenizer, flash)
    trainer_class = fast_loss.trainer_class(levers["fast_loss"], levers["shared_prefix"])

    def build(model: Any, train_set: Any, eval_set: Any, callback: Any, optimizer: Any) -> Any:
        return trainer_class(model=model, args=args, train_dataset=train_set,
                             eval_dataset=eval_set, data_collator=collator,
                             callbacks=[callback], optimizers=(optimizer, None))

    return Plan(args, build, levers)


def _speed_levers(cfg: RunConfig, model: Any, device: str) -> dict[str, Any]:
    """Which of the speed levers this run takes (start-event fields), said in the log."""
    import torch

    from core.train import accel, batching, fast_loss, shared_prefix

    threads = accel.cpu_threads() if device == "cpu" else None
    kernels = accel.enable_gpu_kernels(model, batching.prompt_learning(model))
    batch_mode = batching.choose(cfg, model, "flash-attention 2" in kernels)
    labelled_only = bool(cfg.fast_loss and not accel.liger_loss(kernels)
                         and fast_loss.causal_lm(model) is not None)
    share_prefix = bool(labelled_only and cfg.shared_prefix and not cfg.gradient_checkpointing
                        and shared_prefix.usable(fast_loss.causal_lm(model)))
    print(f"batching: {batch_mode}, loss on labelled tokens only: {labelled_only}, "
          f"shared prefix once per batch: {share_prefix}, "
          f"kernels: {kernels or 'none'}, threads: {threads or torch.get_num_threads()}",
          flush=True)
    return {"batching": batch_mode, "fast_loss": labelled_only, "shared_prefix": share_prefix,
            "kernels": kernels, "threads": threads}
