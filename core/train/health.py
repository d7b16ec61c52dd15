"""Is a run still learning? The rules that end a diverging run as `failed`.

The Trainer hides trouble: with `logging_nan_inf_filter` (on by default) a NaN or infinite
step loss is replaced by the average of the previous ones, and a run whose weights blew
up can go on to "finish" with a ruined model. A user's full tuning at learning rate 1, no
clipping, SGD went 4 -> 30 -> 119 -> 714 -> 2,125 -> 271,311 and then sat at 10.80 (the
log of the vocabulary size: a uniform guess) with gradient norm 0, and ended `done`.

Three rules, each cheap and free of tuning knobs a user would have to set:

* non-finite: a NaN or infinite loss or gradient norm. Checked on every optimizer step,
  on the gradients themselves, before the optimizer applies them.
* exploding: a logged loss above twice max(log V, first logged loss). log V (V the
  vocabulary size) is the loss of guessing every token uniformly: a model that does
  worse than twice that is confidently wrong about nearly every token, which a healthy
  fine-tuning run never is, not even a random model at its first step (it starts near
  log V). Taking the first loss into the max keeps the rule meaningful for a run that
  starts above log V. Measured: the tiny random Llama at learning rate 1 with AdamW goes
  10.8 -> 19.5 -> 57.0 (caught at the third step); the user's run above is caught at
  its second logged value (30 > 2 x 10.8).
* collapsed: the gradient norm exactly 0 on two logged steps in a row while the loss sits
  within 5% of log V. Nothing can change any more (the activations are saturated) and
  the model outputs a uniform guess; training on only wastes time and its "result" is
  noise. Two in a row, so a single batch with nothing to learn does not trip it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class Diverged(RuntimeError):
    """Training went off the rails; the message says at which step and what to change."""

    def __init__(self, step: int, reason: str, advice: str):
        self.step, self.reason = step, reason
        super().__init__(f"training diverged at step {step}: {reason}. {advice}")


def advice(learning_rate: float, max_grad_norm: float, optim: str) -> str:
    """What to change, naming the settings as they are now."""
    tips = [f"lower the learning rate (now {learning_rate:g})"]
    if max_grad_norm <= 0:
        tips.append("turn clipping back on (max_grad_norm is 0; 1.0 is usual)")
    else:
        tips.append(f"clip harder (max_grad_norm is now {max_grad_norm:g})")
    if optim == "sgd":
        tips.append("use adamw_torch instead of sgd")
    return ("To fix it: " + " or ".join(tips) + ". The weights of this run are not kept as "
            "a result.")


@dataclass
class Health:
    vocab_size: int
    first_loss: float | None = None
    zero_grad_streak: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def uniform_loss(self) -> float:
        return math.log(max(self.vocab_size, 2))

    def check_step(self, step: int, grad_norm: float) -> str | None:
        """The reason the gradients of `step` must not be applied, or None."""
        if not math.isfinite(grad_norm):
            return f"the gradient norm became {grad_norm} (not a number)"
        return None

    def check_log(self, step: int, loss: float, grad_norm: float | None) -> str | None:
        """The reason the run diverged as of this logged loss, or None."""
        if not math.isfinite(loss):
            return f"the loss became {loss}"
        if grad_norm is not None and not math.isfinite(grad_norm):
            return f"the gradient norm became {grad_norm}"
        self.history.append((step, loss))
        if self.first_loss is None:
            self.first_loss = loss
        limit = 2 * max(self.uniform_loss, self.first_loss)
        if loss > limit:
            return (f"the loss exploded to {loss:.4g} (it started at {self.first_loss:.4g}; "
                    f"a uniform guess over the vocabulary scores {self.uniform_loss:.2f})")
        near_uniform = abs(loss - self.uniform_loss) <= 0.05 * self.uniform_loss
        self.zero_grad_streak = self.zero_grad_streak + 1 \
            if grad_norm == 0 and near_uniform else 0
        if self.zero_grad_streak >= 2:
            return (f"the run collapsed: the loss is stuck at {loss:.2f}, a uniform guess "
                    f"over the vocabulary (log {self.vocab_size} = {self.uniform_loss:.2f}), "
                    "and the gradient norm is 0, so nothing learns any more")
        return None
