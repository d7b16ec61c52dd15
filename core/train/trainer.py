"""One training run: `python -m core.train RUN_DIR/config.yaml`.

Reads the run's settings, trains with the stage's trainer (transformers' or TRL's) and the
chosen method, and reports only through files in RUN_DIR: events.jsonl (see
core.jobs.events), the adapter or model, and loss.png. stdout/stderr go to log.txt (the
runner redirects them there).

Every stage runs through `train`, the one skeleton; what differs between stages (data,
model, trainer) is the stage's recipe, core/stages/.

Abort: SIGTERM or an ABORT file in the run directory asks the loop to stop at the next
step; what has been trained is saved and the end event says "aborted" (or "done" when
every step had already run). A save is never cut short by a further abort, and is written
whole or not at all (core.methods.result.save_result).

Divergence (a NaN or exploding loss, a collapsed run; rules in core.train.health) ends the run
`failed` at that step, with a `diverged` event, and its weights are not saved as a result.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from core.distributed import ranks
from core.jobs.events import EventWriter
from core.schema.config import RunConfig
from core.stages import STAGES
from core.train.health import Diverged
from core.train.hooks import (
    BEST,
    Plan,
    StopRequest,
    event_callback,
    peak_memory_mb,
    pick_device,
)


def train(cfg: RunConfig, run_dir: Path, events: EventWriter, stop: StopRequest) -> dict:
    """One run of any stage: the stage's recipe (core.stages) gives the data, the model and
    the trainer; everything around them (device, events, abort, saving) is the same."""
    import importlib

    import torch
    from datasets import Dataset
    from transformers import set_seed

    from core import models
    from core.methods import METHODS, implementation
    from core.methods.common import count_parameters

    recipe = importlib.import_module(STAGES[cfg.stage].recipe)
    set_seed(cfg.seed)
    device, choice = pick_device(cfg)
    precision = choice.precision
    print(f"device: {device}, precision: {precision} ({choice.reason}), stage: {cfg.stage}",
          flush=True)

    tokenizer = models.load_tokenizer(cfg.model, cfg.trust_remote_code)
    train_items, eval_items, stats = recipe.data(cfg, tokenizer)
    data_notes = stats.pop("notes", None) or []  # how the data was rendered (core.data)
    if stats.get("chat_template_kwargs"):
        stop.manifest["chat_template_kwargs"] = stats["chat_template_kwargs"]
    print(f"data: {stats}", flush=True)
    if stop.requested:
        raise KeyboardInterrupt

    model = recipe.model(cfg)
    trainable, total = count_parameters(model)
    print(f"trainable parameters: {trainable:,} of {total:,}", flush=True)
    # Defaults a method had to adapt to this model (e.g. no dropout on fused experts).
    notes = data_notes + list(getattr(model, "studio_notes", None) or [])
    for note in notes:
        print(f"note: {note}", flush=True)
    has_eval = bool(eval_items)
    plan = recipe.plan(cfg, model, tokenizer, run_dir, device, precision, has_eval)
    spec = METHODS[cfg.method]
    optimizer = implementation(cfg.method).create_optimizer(model, cfg, plan.args)
    start_info = {
        "device": device, "precision": precision, "precision_reason": choice.reason,
        "method": cfg.method, "stage": cfg.stage,
        "trainable_params": trainable, "total_params": total,
        "trainable_share": trainable / total if total else 0.0, "notes": notes, **stats,
        **plan.start_fields,
        **ranks.start_fields(device),
    }
    callback = event_callback(cfg, run_dir, events, stop, tokenizer, start_info)
    trainer = plan.build(model, Dataset.from_list(train_items),
                         Dataset.from_list(eval_items) if has_eval else None, callback,
                         optimizer)
    stop.gather = ranks.state_gatherer(trainer, trainable_only=not spec.saves_full_model)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    out_dir = run_dir / ("model" if spec.saves_full_model else "adapter")
    return _fit(trainer, callback, plan, has_eval, cfg, tokenizer, events, stop, out_dir) | {
        "trainable_params": trainable, "total_params": total}


def _fit(trainer: Any, callback: Any, plan: Plan, has_eval: bool, cfg: RunConfig,
         tokenizer: Any, events: EventWriter, stop: StopRequest,
         out_dir: Path) -> dict[str, Any]:
    """Train, evaluate once more, save the result whole; the end event's figures."""
    from core.jobs.resume import requested_point

    point = requested_point(out_dir.parent)
    if point is not None:
        print(f"resuming from {point}", flush=True)
    t0 = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(point) if point else None)
    except Exception as exc:
        from core.jobs.resume import cut_short

        # The Trainer writes its checkpoints (the resume points) in place: on a full disk
        # the one it was writing is removed, and named.
        if (full := cut_short(out_dir.parent, exc)) is None:
            raise
        raise full from exc
    runtime = time.time() - t0
    final_eval = None
    best = _best_to_load(cfg, callback.early, out_dir.parent, trainer.state.global_step)
    if best is not None:
        # The best evaluation's model, saved when it was evaluated, is the result.
        final_eval = callback.early.best
        _swap_in(best, out_dir, events, stop)
        callback.early.stopped["loaded_best"] = True
    else:
        if has_eval and not stop.requested:
            final_eval = trainer.evaluate().get("eval_loss")
        stop.save(plan.result(trainer.model), out_dir, cfg, tokenizer, events, final=True)
    steps = trainer.state.global_step
    return {
        # Stopped early is as complete as the run was meant to be: not aborted.
        "completed": steps >= trainer.state.max_steps or callback.early.stopped is not None,
        "output_dir": str(out_dir),
        "final_loss": callback.last_loss if callback.last_loss is not None
        else result.training_loss,
        "final_eval_loss": final_eval,
        "steps": steps,
        "train_runtime": round(runtime, 2),
        "seconds_per_step": round(runtime / steps, 4) if steps else None,
        "peak_memory_mb": peak_memory_mb(),
        "stopped_early": callback.early.stopped,
    }


def _best_to_load(cfg: RunConfig, early: Any, run_dir: Path, steps: int) -> Path | None:
    """checkpoints/best when the run stopped early, asks for its best, and that is not the
    model it ends with."""
    best = run_dir / "checkpoints" / BEST
    if not (cfg.early_stopping_load_best and early.stopped and best.is_dir()):
        return None
    return best if early.best_step != steps else None


def _swap_in(best: Path, out_dir: Path, events: EventWriter, stop: StopRequest) -> None:
    """A copy of the best checkpoint as the result, whole or not at all (as save_result
    writes one); rank 0 alone, the others hold the same files."""
    import shutil

    stop.result_saved = True
    if ranks.rank() != 0:
        return
    events.emit("saving", path=str(out_dir))
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(best, tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _hold_device(run_dir: Path, events: EventWriter, stop: StopRequest) -> Any:
    """The device lock for this run's lifetime (see core.jobs.device); waits, visibly, while
    an evaluation or export started a moment before still holds it."""
    from core.jobs.device import hold_device

    return hold_device(run_dir.name, cancelled=lambda: stop.requested,
                       on_wait=lambda holder: events.emit("waiting", holder=holder),
                       saves=run_dir.parent, job=run_dir)


_HELD: list[Any] = []


def _job(cfg: RunConfig, run_dir: Path, events: EventWriter) -> dict[str, Any]:
    """Train, then say how it ended: run_job writes it as the end event."""
    from core.train import trackers

    stop = StopRequest(run_dir, events)
    os.environ.update(trackers.environment(cfg, run_dir))  # where the tracker writes
    if ranks.under_launcher():
        ranks.die_with_parent()  # core.distributed.launch holds the device for all ranks
    else:
        # Kept until run_job has written the end event: nobody sees the device free
        # while this run still reads as running.
        _HELD.append(_hold_device(run_dir, events, stop))
        if _HELD[-1] is None:
            raise KeyboardInterrupt  # aborted while it waited: run_job ends it "aborted"
    try:
        result = train(cfg, run_dir, events, stop)
    except Diverged as exc:
        print(f"diverged: {exc}", flush=True)
        # Its checkpoints stay on disk for whoever wants to look, under a name that no
        # picker takes for results (nobody knows from which step on they were going bad).
        if (run_dir / "checkpoints").is_dir():
            os.replace(run_dir / "checkpoints", run_dir / "checkpoints-before-divergence")
        from core.jobs.resume import finished

        finished(run_dir)  # resuming would diverge again: its optimizer state goes
        events.emit("diverged", step=exc.step, reason=exc.reason)
        return {"status": "failed", "error": str(exc), "diverged": True, "step": exc.step,
                "final_loss": None, "output_dir": None}
    try:
        from core.jobs.plots import save_loss_plot

        plot = save_loss_plot(run_dir) if ranks.rank() == 0 else None
    except OSError as exc:  # a full disk loses the picture, never the result
        print(f"loss.png not written: {exc}", flush=True)
        plot = None
    # An abort that arrives after the last step (during the final save) stopped nothing.
    completed = result.pop("completed")
    status = "aborted" if stop.requested and not completed else "done"
    if status == "done":
        from core.jobs.resume import finished

        finished(run_dir)
    if not (result["final_loss"] is None or math.isfinite(result["final_loss"])):
        status, error = "failed", "the loss became infinite or NaN; lower the learning rate"
    else:
        error = None
    print(f"{status}: {result['output_dir']}", flush=True)
    return {"status": status, "error": error, "plot": str(plot) if plot else None, **result}


def main(argv: list[str] | None = None) -> int:
    from core.jobs.job import run_job

    code = run_job(argv, "python -m core.train RUN_DIR/config.yaml", RunConfig.load, _job)
    _HELD.clear()  # the end event is written: the device is free before the process exits
    return code

