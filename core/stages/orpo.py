"""The orpo stage's recipe (see core.stages): TRL's ORPOTrainer, the SFT loss on the chosen
reply plus an odds-ratio term; no reference model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.schema.config import RunConfig
from core.stages.preference import data, model, orpo_trainer, trl_plan
from core.train.hooks import Plan

__all__ = ["data", "model", "plan"]


def plan(cfg: RunConfig, model: Any, tokenizer: Any, run_dir: Path, device: str,
         precision: str, has_eval: bool) -> Plan:
    from trl.experimental.orpo import ORPOConfig

    # Tokens are counted by orpo_trainer itself; Trainer's counter would only warn every step.
    return trl_plan(cfg, model, tokenizer, run_dir, device, precision, has_eval, ORPOConfig,
                    orpo_trainer(), reference=False, beta=cfg.orpo_lambda,
                    include_num_input_tokens_seen="no")
