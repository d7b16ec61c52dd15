"""What every stage's training hooks into, whichever trainer runs it (transformers' Trainer
for SFT and pre-training, TRL's for the preference stages): the abort request and the
whole-or-nothing save, the device and its precision, the callback that turns the trainer's
logs into step, eval and checkpoint events (and stops a diverged run), and peak memory."""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import precision
from core.distributed import ranks
from core.jobs.events import EventWriter
from core.jobs.process import ABORT_FILE
from core.precision import Choice
from core.schema.config import RunConfig
from core.stages import LIVE_METRICS
from core.train.trainer_args import writes_resume_points


class StopRequest:
    def __init__(self, run_dir: Path, events: EventWriter | None = None):
        self.flag_file = run_dir / ABORT_FILE
        self.events = events
        self.signalled = False
        self.saving: Path | None = None
        self.result_saved = False
        # Set by train() for a run whose weights are sharded (ZeRO-3, FSDP): every rank
        # takes part in gathering them (core.ranks.state_gatherer).
        self.gather: Any = None
        # What every saved result's studio.json says beside the settings (set by train():
        # the chat template switches its data was rendered with, core.data.encode).
        self.manifest: dict[str, Any] = {}
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
        from core.methods.result import save_result

        if self.gather is None and ranks.rank() != 0:
            return out_dir  # every rank holds the same weights; rank 0 writes them
        # Sharded weights: every rank gathers them with rank 0, deaf to aborts like rank 0
        # (a rank that left the gather would leave rank 0 waiting in it); rank 0 writes.
        events.emit("saving", path=str(out_dir))  # rank 0's: the other ranks' are silent
        self.saving = out_dir
        try:
            state = self.gather() if self.gather is not None else None
            if ranks.rank() != 0:
                self.result_saved = final
                return out_dir
            saved = save_result(model, out_dir, cfg, tokenizer, state, self.manifest)
            self.result_saved = final
            return saved
        finally:
            self.saving = None

    @property
    def requested(self) -> bool:
        return self.signalled or self.flag_file.exists()


def pick_device(cfg: RunConfig) -> tuple[str, Choice]:
    """(device, precision and why) for this run on this machine: `auto` is bf16 on a GPU
    that has it, fp16 on older GPUs, bf16 on a CPU with bfloat16 matrix units where the
    run allows it, else fp32 (core.precision)."""
    import torch

    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return device, precision.for_run(cfg)


def event_callback(cfg: RunConfig, run_dir: Path, events: EventWriter, stop: StopRequest,
                    tokenizer: Any, start_info: dict[str, Any]):
    from transformers import TrainerCallback

    from core.train.health import Diverged, Health, advice

    fix = advice(cfg.learning_rate, cfg.max_grad_norm, cfg.optim)

    class EventCallback(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.time()
            self.last_tokens = 0
            self.last_time = self.t0
            self.last_loss: float | None = None
            self.health = Health(len(tokenizer))
            self.early = EarlyStop(cfg.early_stopping_patience, cfg.early_stopping_threshold)

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
                    **{LIVE_METRICS[k]: float(v) for k, v in logs.items() if k in LIVE_METRICS},
                )
                if reason:
                    raise Diverged(step, reason, fix)
            if "eval_loss" in logs:
                _evaluated(self.early, float(logs["eval_loss"]), state.global_step, control,
                           kw["model"], cfg, run_dir, tokenizer, events, stop)
            return control

        def on_step_end(self, args, state, control, model=None, **kw):
            step = state.global_step
            if cfg.save_steps and step % cfg.save_steps == 0 and step < state.max_steps:
                _checkpoint(step, model, cfg, run_dir, tokenizer, events, stop)
            if ranks.agree_to_stop(stop.requested):
                control.should_training_stop = True
                # An aborted run can be resumed from the step it stopped at.
                control.should_save = writes_resume_points(cfg)
            elif step >= state.max_steps:
                # A finished run's resume point would be deleted at once (core.jobs.resume).
                control.should_save = False
            return control

    return EventCallback()


def _checkpoint(step: int, model: Any, cfg: RunConfig, run_dir: Path, tokenizer: Any,
                events: EventWriter, stop: StopRequest) -> None:
    """A loadable result (adapter + tokenizer + manifest) that Chat and Export can open;
    only the newest save_total_limit are kept. The Trainer writes its own checkpoint (the
    resume point, with the optimizer: core.jobs.resume) right after this, on the same steps."""
    import shutil

    path = run_dir / "checkpoints" / f"step-{step}"
    stop.save(model, path, cfg, tokenizer, events)
    events.emit("checkpoint", step=step, path=str(path))
    steps = sorted((p for p in path.parent.glob("step-*") if p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    for old in steps[:-cfg.save_total_limit] if cfg.save_total_limit else ():
        shutil.rmtree(old, ignore_errors=True)


BEST = "best"  # checkpoints/best: the model of the best evaluation so far (early stopping)


def _evaluated(early: EarlyStop, loss: float, step: int, control: Any, model: Any,
               cfg: RunConfig, run_dir: Path, tokenizer: Any, events: EventWriter,
               stop: StopRequest) -> None:
    """An evaluation's event; with early stopping, the run stopped or a new best kept."""
    events.emit("eval", step=step, eval_loss=loss)
    if early.seen(loss, step):
        events.emit("early_stop", **early.stopped)
        control.should_training_stop = True
    elif early.patience and early.best_step == step:
        _keep_best(step, model, cfg, run_dir, tokenizer, events, stop)


def _keep_best(step: int, model: Any, cfg: RunConfig, run_dir: Path, tokenizer: Any,
               events: EventWriter, stop: StopRequest) -> None:
    """The model of the best evaluation so far, loadable like any checkpoint (replaced
    whole at each new best)."""
    path = run_dir / "checkpoints" / BEST
    stop.save(model, path, cfg, tokenizer, events)
    events.emit("checkpoint", step=step, path=str(path), best=True)


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    # Linux: VmHWM, this process's own peak resident memory. Not ru_maxrss: Linux carries
    # that across exec from the process that started us (Popen's vfork shares its memory
    # until exec), so a trainer started by a 1.4 GB test worker or UI read 1.4 GB whatever
    # it used itself.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    # elsewhere ru_maxrss (KiB on Linux, bytes on macOS; it has no /proc)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(maxrss / (2**20 if sys.platform == "darwin" else 1024), 1)


@dataclass
class EarlyStop:
    """When a run stops because its validation loss has not improved by `threshold` for
    `patience` evaluations in a row. Ours rather than transformers' EarlyStoppingCallback,
    which needs Trainer's own checkpoints (load_best_model_at_end): here the result is the
    model at the step it stopped, or with `early_stopping_load_best` the best evaluation's
    (kept in checkpoints/best), and the end event says which."""

    patience: int
    threshold: float
    best: float | None = None
    best_step: int | None = None
    without_gain: int = 0
    stopped: dict[str, Any] | None = None

    def seen(self, loss: float, step: int) -> dict[str, Any] | None:
        """The early_stop event's fields when this evaluation ends the run, else None."""
        if not self.patience or self.stopped:
            return None
        if self.best is None or loss < self.best - self.threshold:
            self.best, self.best_step, self.without_gain = loss, step, 0
            return None
        self.without_gain += 1
        if self.without_gain < self.patience:
            return None
        self.stopped = {"step": step, "best_eval_loss": self.best, "best_step": self.best_step,
                        "patience": self.patience}
        return self.stopped


@dataclass
class Plan:
    """How a stage's recipe trains one run (see core.stages): the trainer's arguments, the
    start event's fields it adds, the trainer to build, and the model to save at the end."""

    args: Any
    # (model, train dataset, eval dataset or None, event callback, optimizer) -> a Trainer
    build: Callable[[Any, Any, Any, Any, Any], Any]
    start_fields: dict[str, Any] = field(default_factory=dict)
    result: Callable[[Any], Any] = lambda model: model  # the trained model -> what is saved
