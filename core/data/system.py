"""The system prompt a sample gets when it has none of its own: the run's `system_prompt`.

Many chat templates write a system prompt of their own into every conversation that opens
without one (SmolLM2's "You are a helpful AI assistant named SmolLM, trained by Hugging
Face", Qwen2.5's "You are Qwen, created by Alibaba Cloud..."), so a dataset teaching a model
who it is would be trained under a sentence that contradicts it. The choice:

- `default`: what the template does (its own prompt, or none where it has none);
- `none`: no system block at all. An empty system message is not that (SmolLM2 renders an
  empty block for it), so the conversation is rendered after a marker system message and
  the block it makes is cut out;
- any other text: that text as the system message.

Rows with a system message of their own keep it whatever the choice. `rendering()` gives
a tokenizer that renders with the choice; `core.data.encode` (training, the Data tab's
preview) and `core.chat.engine` (chat, serving: the run's own choice) render through it.
"""

from __future__ import annotations

from typing import Any

from core.data.errors import DataError

DEFAULT, NONE = "default", "none"
# Characters no template trims or shares with a real prompt, so a diff finds it exactly.
_MARK = "\u27e6system\u27e7"
_defaults: dict[str, str] = {}


def choice_of(tokenizer: Any) -> str:
    """The choice a tokenizer from `rendering` carries; `default` for a plain one."""
    return getattr(tokenizer, "studio_system_prompt", DEFAULT)


def with_choice(messages: list[dict], choice: str) -> list[dict]:
    """The conversation with a custom system prompt added when it has none of its own."""
    if choice in (DEFAULT, NONE) or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": choice}, *messages]


def template_default(tokenizer: Any, template: str) -> str:
    """The system prompt `template` writes into a conversation that has none ("" when it
    writes none): the text where a system message's would be, found by rendering a user
    turn alone and after a marker system message."""
    tokenizer = getattr(tokenizer, "studio_base", tokenizer)  # never through _Rendering
    if template not in _defaults:
        user = {"role": "user", "content": "Hi"}
        try:
            alone = _render(tokenizer, [user], template)
            marked = _render(tokenizer, [{"role": "system", "content": _MARK}, user], template)
        except Exception:  # a template refusing the system role has no default either
            _defaults[template] = ""
            return ""
        head = _common_prefix(alone, marked)
        tail = _common_prefix(alone[head:][::-1], marked[head:][::-1])
        _defaults[template] = alone[head:len(alone) - tail] if _MARK in marked else ""
    return _defaults[template]


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _render(tokenizer: Any, messages: list[dict], template: str, **kwargs: Any) -> str:
    kwargs.setdefault("add_generation_prompt", False)
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template,
                                         **kwargs)


def without_system(tokenizer: Any, messages: list[dict], template: str,
                   **kwargs: Any) -> str:
    """`messages` rendered with no system block, on a template that writes one by default:
    after a marker system message, the block that message alone renders cut from the
    start (a bos before it kept). With tools, whose definitions such a template writes into that
    block (Qwen2.5), the block stays with an empty system message."""
    if kwargs.get("tools"):
        return _render(tokenizer, [{"role": "system", "content": ""}, *messages], template,
                       **kwargs)
    marker = {"role": "system", "content": _MARK}
    text = _render(tokenizer, [marker, *messages], template, **kwargs)
    block = _render(tokenizer, [marker], template)
    bos = getattr(tokenizer, "bos_token", None) or ""
    rest = text[len(block):]
    if block and text.startswith(block) and _MARK not in rest:
        # A bos the template writes before the conversation stays; one that is the token
        # every turn opens with (SmolLM2's <|im_start|>) went with the block.
        keep = bos if bos and block.startswith(bos) and not rest.startswith(bos) else ""
        return keep + rest
    raise DataError("system_prompt none: this model's chat template writes a system prompt "
                    f"of its own ({template_default(tokenizer, template)!r}) in a way that "
                    "cannot be cut out; choose default or write a system prompt")


class _Rendering:
    """A tokenizer carrying a run's system prompt choice: `with_choice` adds a custom text
    to a conversation before tools and roles are folded (core.data.encode.as_rendered);
    `none` is rendered here. Anything else is the tokenizer's own."""

    def __init__(self, tokenizer: Any, choice: str):
        self.__dict__.update(studio_base=tokenizer, studio_system_prompt=choice)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.studio_base, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Evaluate sets padding_side for its batches: on the tokenizer that pads.
        setattr(self.studio_base, name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.studio_base(*args, **kwargs)

    def apply_chat_template(self, conversation: list[dict], **kwargs: Any) -> Any:
        tok = self.studio_base
        template = kwargs.pop("chat_template", None) or tok.chat_template
        own = bool(conversation) and conversation[0]["role"] == "system"
        if self.studio_system_prompt != NONE or own or not template_default(tok, template):
            return tok.apply_chat_template(conversation, chat_template=template, **kwargs)
        tokenize = kwargs.pop("tokenize", True)
        text = without_system(tok, conversation, template, **kwargs)
        return tok(text, add_special_tokens=False)["input_ids"] if tokenize else text


def rendering(tokenizer: Any, choice: str) -> Any:
    """`tokenizer` rendering with the system prompt `choice` (see the module's note)."""
    if not choice or choice == DEFAULT:
        return tokenizer
    return _Rendering(tokenizer, choice)


def describe(tokenizer: Any, template: str, conversations: list[list[dict]]) -> str:
    """Which system prompt these conversations get through `tokenizer` (one from
    `rendering`) and its `template`, in one line: the Data tab's preview and the start
    event say it."""
    choice = choice_of(tokenizer)
    default = template_default(tokenizer, template)
    if choice == NONE:
        what = "none (no system block)" + (f"; the template's own {default!r} is left out"
                                           if default else "")
    elif choice != DEFAULT:
        what = f"yours, {choice!r}"
    else:
        what = (f"the chat template's default, {default!r}" if default else
                "the chat template's default: none")
    own = sum(bool(c) and c[0]["role"] == "system" for c in conversations)
    mine = (f"; {own} of {len(conversations)} samples have their own system message and "
            "keep it") if own else ""
    return f"system prompt: {what}{mine}"
