"""One training run: `python -m core.train RUN_DIR/config.yaml`.

Reads the run's settings, trains with transformers' Trainer and the chosen method, and
reports only through files in RUN_DIR: events.jsonl (see core.events), the adapter or
model, and loss.png. stdout/stderr go to log.txt (the runner redirects them there).

Why Trainer and not TRL's SFTTrainer: our encoder (core.data.encode) already renders with
the model's chat template and masks everything but the assistant replies, for any
template; SFTTrainer's assistant-only loss needs templates that carry {% generation %}
markers, which most (SmolLM2's included) do not.

Abort: SIGTERM or an ABORT file in the run directory asks the loop to stop at the next
step; what has been trained is saved and the end event says "aborted" (or "done" when
every step had already run). A save is never cut short by a further abort, and is written
whole or not at all (core.methods.common.save_result).

Divergence (a NaN or exploding loss, a collapsed run; rules in core.health) ends the run
`failed` at that step, with a `diverged` event, and its weights are not saved as a result.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from core import distributed
from core.config import RunConfig
from core.events import EventWriter
from core.health import Diverged
from core.runner import ABORT_FILE
from core.stages import PREFERENCE_STAGES, REWARD_METRICS


class StopRequest:
    def __init__(self, run_dir: Path, events: EventWriter | None = None):
        self.flag_file = run_dir / ABORT_FILE
        self.events = events
        self.signalled = False
        self.saving: Path | None = None
        self.result_saved = False
        # Set by train() for a run whose weights are sharded (ZeRO-3, FSDP): every rank
        # takes part in gathering them (core.distributed.state_gatherer).
        self.gather: Any = None
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.result_saved:
            # The result is on disk: what is left (the plot, the end event) takes moments,
            # and an abort now must not call a finished run aborted.
            os.write(1, b"abort requested after the result was saved; finishing\n")
        elif self.saving is not None:
            # Cutting a save short would lose the result: every abort waits for it.
            # os.write, not print: a handler that prints while the main thread is
            # printing raises "reentrant call" and would end the save after all.
            os.write(1, f"abort requested while saving {self.saving}; finishing the save "
                        "first\n".encode())
        elif self.signalled:  # a second signal between saves means: stop now, unsaved
            if self.events is not None:
                self.events.emit("end", status="aborted", error="stopped at once by a "
                                 "second abort; nothing more was saved", final_loss=None,
                                 output_dir=None)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signalled = True

    def save(self, model: Any, out_dir: Path, cfg: RunConfig, tokenizer: Any,
             events: EventWriter, final: bool = False) -> Path:
        """Save a result whole, deaf to aborts meanwhile (and, once the `final` result is
        saved, for good). The `saving` event tells the runner to wait for the save rather
        than kill the process at its deadline. Rank 0 alone writes; with sharded weights
        (ZeRO-3, FSDP: `gather` is set) every rank must call this, at the same point."""
        from core.methods.common import save_result

        if self.gather is None and distributed.rank() != 0:
            return out_dir  # every rank holds the same weights; rank 0 writes them
        # Sharded weights: every rank gathers them with rank 0, deaf to aborts like rank 0
        # (a rank that left the gather would leave rank 0 waiting in it); rank 0 writes.
        events.emit("saving", path=str(out_dir))  # rank 0's: the other ranks' are silent
        self.saving = out_dir
        try:
            state = self.gather() if self.gather is not None else None
            if distributed.rank() != 0:
                self.result_saved = final
                return out_dir
            saved = save_result(model, out_dir, cfg, tokenizer, state)
            self.result_saved = final
            return saved
        finally:
            self.saving = None

    @property
    def requested(self) -> bool:
        return self.signalled or self.flag_file.exists()


def pick_device() -> tuple[str, str]:
    """(device, precision) for this machine: bf16 on a GPU that has it, fp16 on older
    GPUs, fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return f"cuda ({name})", "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "cpu", "fp32"


def _event_callback(cfg: RunConfig, run_dir: Path, events: EventWriter, stop: StopRequest,
                    tokenizer: Any, start_info: dict[str, Any]):
    from transformers import TrainerCallback

    from core.health import Diverged, Health, advice

    fix = advice(cfg.learning_rate, cfg.max_grad_norm, cfg.optim)

    class EventCallback(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.time()
            self.last_tokens = 0
            self.last_time = self.t0
            self.last_loss: float | None = None
            self.health = Health(len(tokenizer))

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = self.last_time = time.time()
            events.emit("start", total_steps=state.max_steps, **start_info)

        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            # The Trainer's NaN filter hides a bad step's loss; the gradients cannot hide.
            # Checked before the optimizer applies them, so a NaN never reaches the weights.
            import torch

            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads:
                norm = float(torch.nn.utils.get_total_norm(grads))
                reason = self.health.check_step(state.global_step + 1, norm)
                if reason:
                    raise Diverged(state.global_step + 1, reason, fix)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            now = time.time()
            if "loss" in logs:
                tokens = state.num_input_tokens_seen
                rate = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
                self.last_tokens, self.last_time = tokens, now
                elapsed = now - self.t0
                step = state.global_step
                eta = elapsed / step * (state.max_steps - step) if step else None
                self.last_loss = float(logs["loss"])
                grad_norm = logs.get("grad_norm")
                reason = self.health.check_log(
                    step, self.last_loss, None if grad_norm is None else float(grad_norm))
                events.emit(
                    "step", step=step, total_steps=state.max_steps,
                    epoch=round(state.epoch or 0.0, 4), loss=self.last_loss,
                    learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                    tokens_per_second=round(rate, 1), tokens_seen=tokens,
                    elapsed=round(elapsed, 2), eta=None if eta is None else round(eta, 1),
                    **{REWARD_METRICS[k]: float(v) for k, v in logs.items() if k in REWARD_METRICS},
                )
                if reason:
                    raise Diverged(step, reason, fix)
            if "eval_loss" in logs:
                events.emit("eval", step=state.global_step, eval_loss=float(logs["eval_loss"]))

        def on_step_end(self, args, state, control, model=None, **kw):
            if cfg.save_steps and state.global_step % cfg.save_steps == 0 \
                    and state.global_step < state.max_steps:
                # Our own checkpoints rather than Trainer's: each is a loadable result
                # (adapter + tokenizer + manifest) that Chat and Export can open, without
                # gigabytes of optimizer state.
                path = run_dir / "checkpoints" / f"step-{state.global_step}"
                stop.save(model, path, cfg, tokenizer, events)
                events.emit("checkpoint", step=state.global_step, path=str(path))
            if distributed.agree_to_stop(stop.requested):
                control.should_training_stop = True
            return control

    return EventCallback()


def train(cfg: RunConfig, run_dir: Path, events: EventWriter, stop: StopRequest) -> dict:
    import torch
    from datasets import Dataset
    from transformers import set_seed

    from core import accel, batching, fast_loss, models, shared_prefix
    from core.data.encode import build_datasets
    from core.methods import METHODS, implementation
    from core.methods.common import (
        apply_method,
        count_parameters,
        load_base_for_training,
    )
    from core.trainer_args import training_arguments

    if cfg.stage in PREFERENCE_STAGES:
        from core.preference import train_preference

        return train_preference(cfg, run_dir, events, stop)
    set_seed(cfg.seed)
    device, auto_precision = pick_device()
    precision = auto_precision if cfg.precision == "auto" else cfg.precision
    print(f"device: {device}, precision: {precision}", flush=True)

    tokenizer = models.load_tokenizer(cfg.model, cfg.trust_remote_code)
    train_items, eval_items, stats = build_datasets(cfg, tokenizer)
    print(f"data: {stats}", flush=True)
    if stop.requested:
        raise KeyboardInterrupt

    model = load_base_for_training(cfg)
    model = apply_method(model, cfg)
    trainable, total = count_parameters(model)
    print(f"trainable parameters: {trainable:,} of {total:,}", flush=True)
    threads = accel.cpu_threads() if device == "cpu" else None
    kernels = accel.enable_gpu_kernels(model, batching.prompt_learning(model))
    flash = "flash-attention 2" in kernels
    batch_mode = batching.choose(cfg, model, flash)
    labelled_only = bool(cfg.fast_loss and not accel.liger_loss(kernels)
                         and fast_loss.causal_lm(model) is not None)
    share_prefix = bool(labelled_only and cfg.shared_prefix and not cfg.gradient_checkpointing
                        and shared_prefix.usable(fast_loss.causal_lm(model)))
    print(f"batching: {batch_mode}, loss on labelled tokens only: {labelled_only}, "
          f"shared prefix once per batch: {share_prefix}, "
          f"kernels: {kernels or 'none'}, threads: {threads or torch.get_num_threads()}",
          flush=True)

    has_eval = bool(eval_items)
    args = training_arguments(
        cfg, run_dir, device, precision, has_eval,
        remove_unused_columns=False,  # every column goes to our collator
        train_sampling_strategy="group_by_length" if batch_mode == "grouped" else "random",
    )
    collator = batching.collator(batch_mode, tokenizer, flash)
    spec = METHODS[cfg.method]
    optimizer = implementation(cfg.method).create_optimizer(model, cfg, args)
    start_info = {
        "device": device, "precision": precision, "method": cfg.method,
        "trainable_params": trainable, "total_params": total,
        "trainable_share": trainable / total if total else 0.0, **stats,
        "batching": batch_mode, "fast_loss": labelled_only, "shared_prefix": share_prefix,
        "kernels": kernels, "threads": threads, **distributed.start_fields(device),
    }
    callback = _event_callback(cfg, run_dir, events, stop, tokenizer, start_info)
    trainer = fast_loss.trainer_class(labelled_only, share_prefix)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_items),
        eval_dataset=Dataset.from_list(eval_items) if has_eval else None,
        data_collator=collator,
        callbacks=[callback],
        optimizers=(optimizer, None),
    )
    stop.gather = distributed.state_gatherer(trainer, trainable_only=not spec.saves_full_model)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    result = trainer.train()
    runtime = time.time() - t0
    final_eval = None
    if has_eval and not stop.requested:
        final_eval = trainer.evaluate().get("eval_loss")
    out_dir = run_dir / ("model" if spec.saves_full_model else "adapter")
    stop.save(trainer.model, out_dir, cfg, tokenizer, events, final=True)
    steps = trainer.state.global_step
    return {
        "completed": steps >= trainer.state.max_steps,
        "output_dir": str(out_dir),
        "final_loss": callback.last_loss if callback.last_loss is not None
        else result.training_loss,
        "final_eval_loss": final_eval,
        "steps": steps,
        "train_runtime": round(runtime, 2),
        "seconds_per_step": round(runtime / steps, 4) if steps else None,
        "peak_memory_mb": _peak_memory_mb(),
        "trainable_params": trainable,
        "total_params": total,
    }


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    # ru_maxrss is in KiB on Linux: the whole process's peak resident memory.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _hold_device(run_dir: Path, events: EventWriter, stop: StopRequest) -> Any:
    """The device lock for this run's lifetime (see core.runner); waits, visibly, while
    an evaluation or export started a moment before still holds it."""
    from core.runner import hold_device

    return hold_device(run_dir.name, cancelled=lambda: stop.requested,
                       on_wait=lambda holder: events.emit("waiting", holder=holder),
                       saves=run_dir.parent, job=run_dir)


_HELD: list[Any] = []


def _job(cfg: RunConfig, run_dir: Path, events: EventWriter) -> dict[str, Any]:
    """Train, then say how it ended: run_job writes it as the end event."""
    stop = StopRequest(run_dir, events)
    if distributed.under_launcher():
        distributed.die_with_parent()  # core.launch holds the device for all ranks
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
        events.emit("diverged", step=exc.step, reason=exc.reason)
        return {"status": "failed", "error": str(exc), "diverged": True, "step": exc.step,
                "final_loss": None, "output_dir": None}
    try:
        from core.plots import save_loss_plot

        plot = save_loss_plot(run_dir) if distributed.rank() == 0 else None
    except OSError as exc:  # a full disk loses the picture, never the result
        print(f"loss.png not written: {exc}", flush=True)
        plot = None
    # An abort that arrives after the last step (during the final save) stopped nothing.
    completed = result.pop("completed")
    status = "aborted" if stop.requested and not completed else "done"
    if not (result["final_loss"] is None or math.isfinite(result["final_loss"])):
        status, error = "failed", "the loss became infinite or NaN; lower the learning rate"
    else:
        error = None
    print(f"{status}: {result['output_dir']}", flush=True)
    return {"status": status, "error": error, "plot": str(plot) if plot else None, **result}


def main(argv: list[str] | None = None) -> int:
    from core.jobs import run_job

    code = run_job(argv, "python -m core.train RUN_DIR/config.yaml", RunConfig.load, _job)
    _HELD.clear()  # the end event is written: the device is free before the process exits
    return code


if __name__ == "__main__":
    sys.exit(main())
