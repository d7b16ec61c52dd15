"""What the preference stages' recipes (dpo, orpo, kto: core/stages/<stage>.py) share, on
TRL's trainers, run by the one skeleton core.train.trainer.train.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.data.formats import DataError
from core.train.hooks import Plan

if TYPE_CHECKING:
    from core.schema.config import RunConfig


def load_examples(cfg: RunConfig) -> tuple[list[dict], list[dict], dict | None]:
    """(train, eval) examples of the run's datasets, and the counts a mix drew; a dataset
    whose format does not fit the stage is refused with what to do."""
    from core.data.loader import load_for_stage, split_train_eval

    examples = load_for_stage(cfg)
    return *split_train_eval(examples, cfg.seed, cfg.val_size), examples.mix


def run_folder(path: str, what: str) -> Path:
    """The result folder (adapter/ or model/) of a finished run given by its folder or
    by the result folder itself."""
    from core.methods.result import MANIFEST

    p = Path(path).expanduser()
    for candidate in (p, p / "adapter", p / "model"):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise DataError(f"{what} {path!r} is not a finished run: no adapter/ or model/ with "
                    f"{MANIFEST} in it; choose a run folder under saves/ that ended done")


def model(cfg: RunConfig) -> Any:
    """The model to train: the base wrapped with the method, or a finished run's result
    made trainable again."""
    from core.methods import METHODS
    from core.methods.base import apply_method, load_base_for_training
    from core.methods.result import read_manifest

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
    if cfg.ref_run:
        from core.methods.result import load_trained

        ref, _ = load_trained(run_folder(cfg.ref_run, "ref_run"))
    elif hasattr(model, "peft_config"):
        return None  # TRL: a frozen copy of the starting adapter
    else:
        ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def orpo_trainer() -> Any:
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


def data(cfg: RunConfig, tokenizer: Any) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """The run's (train, eval) examples; TRL renders them with the chat template itself.
    A start-from or reference run that is not a finished run fails here, before the model
    loads."""
    if cfg.init_from_run:
        run_folder(cfg.init_from_run, "init_from_run")
    if cfg.ref_run:
        run_folder(cfg.ref_run, "ref_run")
    train_ex, eval_ex, drawn = load_examples(cfg)
    if not train_ex:
        raise DataError("nothing to train on: the datasets have no rows")
    return train_ex, eval_ex, {"examples": len(train_ex) + len(eval_ex),
                               "train_samples": len(train_ex), "eval_samples": len(eval_ex),
                               "mix": drawn}


def trl_plan(cfg: RunConfig, model: Any, tokenizer: Any, run_dir: Path, device: str,
             precision: str, has_eval: bool, config_class: Any, trainer_class: Any,
             reference: bool = True, **own: Any) -> Plan:
    """A preference stage's plan: TRL's config (the arguments every stage shares, then the
    stage's `own`) and trainer, with a reference model unless the stage has none."""
    from core.train.trainer_args import shared_kwargs

    common = {**shared_kwargs(cfg, run_dir, device, precision, has_eval),
              "max_length": cfg.cutoff_len}
    args = config_class(**{**common, **own})
    extra = {"ref_model": _reference(cfg, model)} if reference else {}

    def build(model: Any, train_set: Any, eval_set: Any, callback: Any, optimizer: Any) -> Any:
        return trainer_class(model=model, args=args, train_dataset=train_set,
                             eval_dataset=eval_set, processing_class=tokenizer,
                             callbacks=[callback], optimizers=(optimizer, None), **extra)

    return Plan(args, build, result=_without_reference)


def _without_reference(trained: Any) -> Any:
    if "ref" in getattr(trained, "peft_config", {}):
        trained.delete_adapter("ref")  # TRL's frozen reference copy is not the result
    return trained
