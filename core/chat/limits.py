"""What bounds one chat reply: the model's context, and a Stop that also ends the prefill.

A prompt longer than the context would be cut by nothing: a rotary model answers garbage
past its trained length and a learned-position one (GPT-2) fails with an index error deep
in torch, after a prefill that can take minutes. So the prompt is measured first and
refused with both counts. A Stop pressed meanwhile must not wait for that prefill: the
stopping criteria of `generate()` run only between tokens, so until the first token every
layer of the model also checks the stop before it runs, and the prefill ends at the next
layer (after it, the stopping criteria end the reply at its next token, with its text).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Tokenizers without a known limit report this placeholder (1e30) as model_max_length.
_NO_LIMIT = 10**9


class PromptTooLong(ValueError):
    """The conversation does not fit in the model's context."""


class Stopped(Exception):
    """Raised inside the forward pass when the person pressed Stop."""


def context_length(model: Any, tokenizer: Any) -> int | None:
    """How many tokens the model can attend to, from its config (else its tokenizer);
    None when neither says."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < _NO_LIMIT else None


def room_for_reply(prompt_tokens: int, context: int | None, max_new_tokens: int) -> int:
    """How many new tokens may be generated: `max_new_tokens`, or what the context has
    left; raises PromptTooLong when the prompt leaves no room at all."""
    if context is None:
        return max_new_tokens
    if prompt_tokens >= context:
        raise PromptTooLong(
            f"the conversation is {prompt_tokens:,} tokens and this model's context is "
            f"{context:,}: nothing was generated. Clear the chat (or shorten the message "
            "or the system prompt) and send it again")
    return min(max_new_tokens, context - prompt_tokens)


@contextmanager
def stoppable(module: Any, should_stop: Callable[[], bool]) -> Iterator[None]:
    """While inside, every layer of `module` (each item of its ModuleLists) raises
    `Stopped` before it runs when `should_stop()`: a Stop ends even a long prefill."""
    import torch

    def check(_module: Any, _args: Any) -> None:
        if should_stop():
            raise Stopped()

    hooks = [layer.register_forward_pre_hook(check)
             for modules in module.modules() if isinstance(modules, torch.nn.ModuleList)
             for layer in modules]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
