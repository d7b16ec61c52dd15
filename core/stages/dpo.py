"""The dpo stage's recipe (see core.stages): TRL's DPOTrainer, which learns to prefer the
chosen reply over the rejected one, measured against a reference model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.schema.config import RunConfig
from core.stages.preference import data, model, trl_plan
from core.train.hooks import Plan

__all__ = ["data", "model", "plan"]


def plan(cfg: RunConfig, model: Any, tokenizer: Any, run_dir: Path, device: str,
         precision: str, has_eval: bool) -> Plan:
    from trl import DPOConfig, DPOTrainer

    return trl_plan(cfg, model, tokenizer, run_dir, device, precision, has_eval, DPOConfig,
                    DPOTrainer, beta=cfg.pref_beta, loss_type=[cfg.dpo_loss])
