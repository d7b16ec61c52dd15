"""The Trainer arguments every stage shares, built in one place.

SFT/PT pass them to transformers' TrainingArguments, the preference stages to TRL's
DPOConfig, KTOConfig or ORPOConfig (subclasses of it), each adding only its own. So a
setting that matters to every run (the NaN filter that core.train.health needs off, the
checkpoint and logging policy, the distributed settings) cannot drift between stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import distributed
from core.distributed import ranks
from core.train import trackers

if TYPE_CHECKING:
    from core.schema.config import RunConfig


def writes_resume_points(cfg: RunConfig) -> bool:
    """Whether the Trainer writes its own checkpoints (core.jobs.resume's resume points):
    with save_steps, and not for runs over several processes: resuming them is not
    supported, and their optimizer state is sharded (DeepSpeed, FSDP)."""
    return bool(cfg.save_steps) and ranks.world_size() == 1


def shared_kwargs(cfg: RunConfig, run_dir: Path, device: str, precision: str,
                  has_eval: bool) -> dict[str, Any]:
    """Keyword arguments for TrainingArguments or any TRL config derived from it."""
    return dict(
        output_dir=str(run_dir / "trainer"),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        neftune_noise_alpha=cfg.neftune_noise_alpha or None,
        optim=cfg.optim,
        # Set explicitly: TRL's configs default to bf16 and gradient checkpointing.
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        gradient_checkpointing=cfg.gradient_checkpointing,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps,
        # Trainer's own checkpoints are the resume points (core.jobs.resume); the results
        # Chat and Export open are the studio's, saved beside them (core.train.hooks).
        save_strategy="steps" if writes_resume_points(cfg) else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit or None,
        disable_tqdm=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",  # the tokens/s of every step event
        logging_nan_inf_filter=False,  # a NaN loss must be seen (core.train.health), not averaged
        **trackers.trainer_kwargs(cfg, run_dir),
        **distributed.trainer_kwargs(cfg, run_dir, device == "cpu", ranks.world_size()),
    )


def training_arguments(cfg: RunConfig, run_dir: Path, device: str, precision: str,
                       has_eval: bool, **own: Any) -> Any:
    """transformers' TrainingArguments for the SFT and PT stages."""
    from transformers import TrainingArguments

    return TrainingArguments(**shared_kwargs(cfg, run_dir, device, precision, has_eval), **own)
