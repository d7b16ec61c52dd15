"""Preference stages (DPO, ORPO, KTO) on TRL's trainers, called from core.train.trainer.train().

The run folder, events, abort and saving are the same as SFT's: the trainer gets
core.train.hooks' event callback, and the result is saved whole by StopRequest.save.
What differs:

- Data: pairwise examples (prompt, chosen, rejected) for DPO and ORPO, or KTO examples
  (prompt, completion, label); TRL renders them with the model's chat template itself.
  A dataset of the wrong format is refused before the model loads.
- The reference model. With a peft method TRL computes it from the policy's own weights:
  it copies the starting adapter into a frozen "ref" adapter (for a fresh LoRA or IA3 that
  is the base exactly; with init_from_run it is the SFT run's model, the usual DPO set-up).
  For full and freeze tuning the reference is a frozen copy made before training. A
  reference run (ref_run) replaces both. ORPO has no reference model.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import distributed
from core.data.formats import DataError
from core.stages import STAGE_FORMATS

if TYPE_CHECKING:
    from core.jobs.events import EventWriter
    from core.schema.config import RunConfig
    from core.train.hooks import StopRequest


def load_examples(cfg: RunConfig) -> tuple[list[dict], list[dict]]:
    """(train, eval) examples of the run's datasets; a dataset whose format does not fit
    the stage is refused with what to do."""
    from core.data.loader import load_one, split_train_eval
    from core.data.registry import resolve

    wanted = STAGE_FORMATS[cfg.stage]
    examples: list[dict] = []
    for name in cfg.dataset:
        fmt = resolve(name).format
        if fmt not in wanted:
            raise DataError(
                f"dataset {name!r} is in the {fmt} format, which the {cfg.stage} stage cannot "
                f"train on; it needs {' or '.join(wanted)} data (choose such a dataset, or "
                f"the stage that fits: {_stages_for(fmt)})"
            )
        examples += load_one(name, cfg)
    return split_train_eval(examples, cfg.seed, cfg.val_size)


def _stages_for(fmt: str) -> str:
    return ", ".join(s for s, fmts in STAGE_FORMATS.items() if fmt in fmts) or "none"


def run_folder(path: str, what: str) -> Path:
    """The result folder (adapter/ or model/) of a finished run given by its folder or
    by the result folder itself."""
    from core.methods.common import MANIFEST

    p = Path(path).expanduser()
    for candidate in (p, p / "adapter", p / "model"):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise DataError(f"{what} {path!r} is not a finished run: no adapter/ or model/ with "
                    f"{MANIFEST} in it; choose a run folder under saves/ that ended done")


def _policy(cfg: RunConfig) -> Any:
    """The model to train: the base wrapped with the method, or a finished run's result
    made trainable again."""
    from core.methods import METHODS
    from core.methods.common import apply_method, load_base_for_training, read_manifest

    if not cfg.init_from_run:
        return apply_method(load_base_for_training(cfg), cfg)
    start = run_folder(cfg.init_from_run, "init_from_run")
    manifest = read_manifest(start)
    if manifest["method"] != cfg.method or manifest["model"] != cfg.model:
        raise DataError(
            f"init_from_run: {start} was trained with method {manifest['method']} on model "
            f"{manifest['model']}; this run uses {cfg.method} on {cfg.model}; they must match"
        )
    if METHODS[cfg.method].saves_full_model:
        # The run's whole model becomes the base; the method picks what trains again.
        return apply_method(load_base_for_training(cfg.replace(model=str(start))), cfg)
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base_for_training(cfg), str(start), is_trainable=True)


def _reference(cfg: RunConfig, model: Any) -> Any:
    if cfg.stage == "orpo":
        return None
    if cfg.ref_run:
        from core.methods.common import load_trained

        ref, _ = load_trained(run_folder(cfg.ref_run, "ref_run"))
    elif hasattr(model, "peft_config"):
        return None  # TRL: a frozen copy of the starting adapter
    else:
        ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _trl_config(cfg: RunConfig, run_dir: Path, device: str, precision: str,
                has_eval: bool) -> Any:
    from core.train.trainer_args import shared_kwargs

    common = dict(shared_kwargs(cfg, run_dir, device, precision, has_eval),
                  max_length=cfg.cutoff_len)
    if cfg.stage == "orpo":
        # Counted by _orpo_trainer itself; Trainer's counter would only warn every step.
        common["include_num_input_tokens_seen"] = "no"
    if cfg.stage == "dpo":
        from trl import DPOConfig

        return DPOConfig(**common, beta=cfg.pref_beta, loss_type=[cfg.dpo_loss])
    if cfg.stage == "kto":
        from trl import KTOConfig

        return KTOConfig(**common, beta=cfg.pref_beta,
                         desirable_weight=cfg.kto_desirable_weight,
                         undesirable_weight=cfg.kto_undesirable_weight)
    from trl.experimental.orpo import ORPOConfig

    return ORPOConfig(**common, beta=cfg.orpo_lambda)


def _trainer_class(stage: str) -> Any:
    if stage == "dpo":
        from trl import DPOTrainer

        return DPOTrainer
    if stage == "kto":
        from trl import KTOTrainer

        return KTOTrainer
    return _orpo_trainer()


def _orpo_trainer() -> Any:
    from trl.experimental.orpo import ORPOTrainer

    class CountingORPOTrainer(ORPOTrainer):
        """ORPO's batches hold chosen_* and rejected_* sequences (each with its prompt)
        but no input_ids, so Trainer's token counter finds nothing: count both here, as
        DPO's concatenated batch is counted, for the tokens/s of the step events."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                seen = sum(int(inputs[k].sum()) for k in
                           ("chosen_attention_mask", "rejected_attention_mask") if k in inputs)
                self.state.num_input_tokens_seen += seen
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return CountingORPOTrainer


def train_preference(cfg: RunConfig, run_dir: Path, events: EventWriter,
                     stop: StopRequest) -> dict:
    """Train one DPO, ORPO or KTO run; returns what core.train.trainer.train returns."""
    from datasets import Dataset
    from transformers import set_seed

    from core import models
    from core.methods import METHODS, implementation
    from core.methods.common import count_parameters
    from core.train.hooks import event_callback, peak_memory_mb, pick_device

    set_seed(cfg.seed)
    device, auto_precision = pick_device()
    precision = auto_precision if cfg.precision == "auto" else cfg.precision
    print(f"device: {device}, precision: {precision}, stage: {cfg.stage}", flush=True)
    tokenizer = models.load_tokenizer(cfg.model, cfg.trust_remote_code)
    if cfg.init_from_run:
        run_folder(cfg.init_from_run, "init_from_run")  # fail before the model loads
    if cfg.ref_run:
        run_folder(cfg.ref_run, "ref_run")
    train_ex, eval_ex = load_examples(cfg)
    if not train_ex:
        raise DataError("nothing to train on: the datasets have no rows")
    stats = {"examples": len(train_ex) + len(eval_ex), "train_samples": len(train_ex),
             "eval_samples": len(eval_ex), "stage": cfg.stage}
    print(f"data: {stats}", flush=True)
    if stop.requested:
        raise KeyboardInterrupt

    model = _policy(cfg)
    ref = _reference(cfg, model)
    trainable, total = count_parameters(model)
    print(f"trainable parameters: {trainable:,} of {total:,}", flush=True)
    args = _trl_config(cfg, run_dir, device, precision, bool(eval_ex))
    optimizer = implementation(cfg.method).create_optimizer(model, cfg, args)
    start_info = {
        "device": device, "precision": precision, "method": cfg.method,
        "trainable_params": trainable, "total_params": total,
        "trainable_share": trainable / total if total else 0.0, **stats,
        **distributed.start_fields(device),
    }
    callback = event_callback(cfg, run_dir, events, stop, tokenizer, start_info)
    extra = {} if cfg.stage == "orpo" else {"ref_model": ref}
    trainer = _trainer_class(cfg.stage)(
        model=model, args=args, train_dataset=Dataset.from_list(train_ex),
        eval_dataset=Dataset.from_list(eval_ex) if eval_ex else None,
        processing_class=tokenizer, callbacks=[callback], optimizers=(optimizer, None),
        **extra,
    )
    t0 = time.time()
    result = trainer.train()
    runtime = time.time() - t0
    final_eval = None
    if eval_ex and not stop.requested:
        final_eval = trainer.evaluate().get("eval_loss")
    trained = trainer.model
    if "ref" in getattr(trained, "peft_config", {}):
        trained.delete_adapter("ref")  # TRL's frozen reference copy is not the result
    out_dir = run_dir / ("model" if METHODS[cfg.method].saves_full_model else "adapter")
    stop.save(trained, out_dir, cfg, tokenizer, events, final=True)
    steps = trainer.state.global_step
    return {
        "output_dir": str(out_dir),
        "final_loss": callback.last_loss if callback.last_loss is not None
        else result.training_loss,
        "final_eval_loss": final_eval,
        "steps": steps,
        "completed": steps >= trainer.state.max_steps,
        "train_runtime": round(runtime, 2),
        "seconds_per_step": round(runtime / steps, 4) if steps else None,
        "peak_memory_mb": peak_memory_mb(),
        "trainable_params": trainable,
        "total_params": total,
    }
