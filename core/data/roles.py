"""What a chat template takes: a system role, reasoning. Data the template cannot render as
it is written is folded into what it can, the way the model's makers do it, and said.

- A system message, on a template that refuses the role (Gemma and Gemma 2 raise "System
  role not supported"), goes into the first user turn, its text then a blank line: how
  Google's Gemma documentation gives system instructions, and what Gemma 3's own template
  does with a system message.
- An assistant's `reasoning_content` (OpenAI's and Qwen's field), on a template that does
  not render it, is written into the reply as `<think>...</think>` before the answer: how
  LLaMA-Factory's data carries reasoning, and what a reasoning model's output looks like.
"""

from __future__ import annotations

from typing import Any

SYSTEM_FOLDED = ("the system message is written at the start of the first user turn: this "
                 "model's chat template takes no system role (as its documentation does)")
REASONING_FOLDED = ("reasoning_content is trained as <think>...</think> before the reply: "
                    "this model's chat template does not render reasoning")

_system_taken: dict[str, bool] = {}


def takes_system(tokenizer: Any, template: str) -> bool:
    """Whether `template` renders a system message (it renders a user turn alone)."""
    if template not in _system_taken:
        def renders(messages: list[dict]) -> bool:
            try:
                tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template,
                                              add_generation_prompt=True)
            except Exception:  # jinja's raise_exception, as Gemma's template does
                return False
            return True

        user = {"role": "user", "content": "Hi"}
        # A template that renders nothing at all is not refusing the role: its own error
        # is said where the conversation is rendered.
        _system_taken[template] = not renders([user]) or renders(
            [{"role": "system", "content": "Be brief."}, user])
    return _system_taken[template]


def takes_reasoning(template: str) -> bool:
    return "reasoning_content" in template


def as_template_takes(tokenizer: Any, template: str,
                      messages: list[dict]) -> tuple[list[dict], list[str]]:
    """(messages the template can render, what was folded to get them: the notes above)."""
    notes = []
    if messages and messages[0]["role"] == "system" and len(messages) > 1 \
            and messages[1]["role"] == "user" and not takes_system(tokenizer, template):
        first = messages[1]
        messages = [{**first, "content": f"{messages[0]['content']}\n\n{first['content']}"},
                    *messages[2:]]
        notes.append(SYSTEM_FOLDED)
    if any(m.get("reasoning_content") for m in messages) and not takes_reasoning(template):
        messages = [_reasoning_in_reply(m) for m in messages]
        notes.append(REASONING_FOLDED)
    return messages, notes


def _reasoning_in_reply(message: dict) -> dict:
    if not message.get("reasoning_content"):
        return message
    out = {k: v for k, v in message.items() if k != "reasoning_content"}
    out["content"] = f"<think>\n{message['reasoning_content'].strip()}\n</think>\n\n" \
                     f"{message['content'].lstrip()}"
    return out


def has_reasoning(message: dict) -> bool:
    """Whether a reply carries reasoning (its field, or written inline as LLaMA-Factory's
    data does), so that its template's reasoning block is trained."""
    return bool(message.get("reasoning_content")) or "</think>" in message.get("content", "")
