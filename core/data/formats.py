"""Dataset formats: detect one from a file's columns, and turn one row into an example.

An example is `{"messages": [{"role", "content"}, ...]}` (for SFT), `{"text": str}` (for
pre-training), `{"prompt": [messages], "chosen": [reply], "rejected": [reply]}` (pairwise,
for DPO and ORPO) or `{"prompt": [messages], "completion": [reply], "label": bool}` (KTO);
a reply is a one-message list `[{"role": "assistant", "content": ...}]`, the shape TRL's
preference trainers take. Every problem is a `DataError` that says which file,
which row and which field, so a user can fix their file without reading a traceback.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data import tools
from core.data.errors import DataError
from core.data.reader import loads, open_rows

FORMATS = ("alpaca", "messages", "sharegpt", "text", "pairwise", "kto")
PREFERENCE_FORMATS = ("pairwise", "kto")

# Canonical field -> the column it is read from unless a mapping says otherwise.
FIELDS: dict[str, dict[str, str]] = {
    "alpaca": {k: k for k in ("instruction", "input", "output", "system", "history")},
    "messages": {"messages": "messages", "system": "system", "tools": "tools"},
    "sharegpt": {"conversations": "conversations", "system": "system", "tools": "tools"},
    "text": {"text": "text"},
    # `prompt` is either the instruction text (alpaca-like, with input, system and
    # history) or a conversation ending in a user turn (messages-like).
    "pairwise": {k: k for k in ("prompt", "input", "system", "history", "chosen", "rejected")},
    "kto": {k: k for k in ("prompt", "input", "system", "history", "completion", "label")},
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "text": ("text",),
    # Without a prompt column the replies are whole conversations sharing their start
    # (TRL's implicit prompt); without a completion the prompt is a conversation whose
    # last turn is the reply judged (LLaMA-Factory's KTO layout).
    "pairwise": ("chosen", "rejected"),
    "kto": ("prompt", "label"),
}

# Both list formats accept either key style, since real files mix them freely.
ROLES = {
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    # Tool results: OpenAI's role, LLaMA-Factory's sharegpt tag, Llama 3.1's role. (A
    # LLaMA-Factory `function_call` turn is the assistant's call: see _message_list.)
    "tool": "tool", "observation": "tool", "ipython": "tool",
}
CALL_ROLES = ("function_call",)


@dataclass(frozen=True)
class Detection:
    """The format guessed from a file's columns. `format` is None when nothing fits;
    `confident` is False when the guess rests on look-alike column names."""

    format: str | None
    columns: dict[str, str] = field(default_factory=dict)
    confident: bool = False
    note: str = ""
    # Columns the format would leave unused although their names say they carry meaning
    # (a KTO label, tool definitions, media): never dropped in silence.
    ignored: tuple[str, ...] = ()
    # Every column the format would not read, meaningful or not: named wherever a
    # detection is shown, and never "sure" while there is one.
    unused: tuple[str, ...] = ()


# Column names that carry meaning no format here reads beside the ones it uses: a file
# with one left over is not trained as if it were absent.
MEANINGFUL = {"label": "KTO labels (desirable or not)", "kto_tag": "KTO labels",
              "tools": "tool definitions", "images": "images", "image": "images",
              "videos": "videos", "video": "videos", "audios": "audio", "audio": "audio",
              "chosen": "preferred replies", "rejected": "dispreferred replies",
              "score": "scores", "reward": "scores"}
# Media the studio cannot train on yet: refused with that reason, never stripped.
MEDIA = {"images": "image", "image": "image", "videos": "video", "video": "video",
         "audios": "audio", "audio": "audio"}
_SUGGEST = {"label": "kto", "kto_tag": "kto", "chosen": "pairwise", "rejected": "pairwise"}


# Look-alike column names, most likely first. Exact canonical names are confident.
_ALIASES = {
    "instruction": ("instruction", "prompt", "question", "query", "instruct"),
    "input": ("input", "context"),
    "output": ("output", "response", "answer", "completion", "target"),
    "system": ("system", "system_prompt"),
    "history": ("history",),
}


def detect_format(columns: list[str]) -> Detection:
    found = _detect(columns)
    if found.format is None:
        return found
    used = set(found.columns.values())
    unused = tuple(c for c in columns if c not in used)
    ignored = tuple(c for c in unused if c.lower() in MEANINGFUL)
    if not unused:
        return found
    notes = [found.note] if found.note else []
    if ignored:
        notes.append(left_unused(found.format, ignored))
    if rest := [c for c in unused if c not in ignored]:
        notes.append(f"column {', '.join(map(repr, rest))} would not be used")
    return Detection(found.format, found.columns, False, "; ".join(notes), ignored, unused)


def left_unused(fmt: str, ignored: tuple[str, ...]) -> str:
    what = ", ".join(f"{c!r} ({MEANINGFUL[c.lower()]})" for c in ignored)
    fits = sorted({_SUGGEST[c.lower()] for c in ignored if c.lower() in _SUGGEST} - {fmt})
    hint = f" (the {' or '.join(fits)} format reads them)" if fits else ""
    return f"the {fmt} format would leave {what} unused{hint}"


def media_problem(columns: tuple[str, ...] | list[str]) -> str | None:
    """Why a file with media columns cannot be trained, or None."""
    kinds = dict.fromkeys(MEDIA[c.lower()] for c in columns if c.lower() in MEDIA)
    if not kinds:
        return None
    first = next(iter(kinds))
    return (f"this dataset has {' and '.join(k + 's' for k in kinds)} (column "
            f"{', '.join(repr(c) for c in columns if c.lower() in MEDIA)}); {first} "
            "fine-tuning is not supported yet")


def _detect(columns: list[str]) -> Detection:
    lower = {c.lower(): c for c in columns}

    def find(*names: str) -> str | None:
        return next((lower[n] for n in names if n in lower), None)

    extra = {}
    if system := find(*_ALIASES["system"]):
        extra["system"] = system
    if found := _detect_preference(find, extra):
        return found
    chat = {"tools": tools} if (tools := find("tools")) else {}
    if col := find("messages"):
        others = bool(find("instruction", "output", "conversations"))
        return Detection("messages", {"messages": col, **extra, **chat}, not others,
                         "also has other chat-like columns" if others else "")
    if col := find("conversations"):
        return Detection("sharegpt", {"conversations": col, **extra, **chat}, True)
    if col := find("conversation", "chat", "dialog", "dialogue"):
        return Detection("messages", {"messages": col, **extra, **chat}, False,
                         f"guessed that {col!r} holds a list of chat messages")

    mapping = {k: c for k, names in _ALIASES.items() if (c := find(*names))}
    if "instruction" in mapping and "output" in mapping:
        exact = mapping["instruction"] == lower.get("instruction") and (
            mapping["output"] == lower.get("output")
        )
        note = "" if exact else (
            f"guessed {mapping['instruction']!r} as the instruction and "
            f"{mapping['output']!r} as the answer"
        )
        return Detection("alpaca", mapping, exact, note)

    if col := find("text"):
        return Detection("text", {"text": col}, True)
    if col := find("content", "document", "body", "passage"):
        return Detection("text", {"text": col}, False, f"guessed {col!r} as raw text")
    if len(columns) == 1:
        return Detection("text", {"text": columns[0]}, False,
                         f"guessed the only column {columns[0]!r} as raw text")
    return Detection(None, {}, False, (
        "no known columns: alpaca needs instruction + output, messages needs messages, "
        "sharegpt needs conversations, text needs text"
    ))


def _detect_preference(find: Any, extra: dict[str, str]) -> Detection | None:
    """pairwise (chosen + rejected) and kto (a label) before the others: their prompt and
    completion columns look like alpaca's instruction and answer, and their conversation
    columns like chat data."""
    prompt = find("prompt", "instruction", "messages", "conversations", "question", "query",
                  "conversation")
    exact = prompt is not None and prompt == find("prompt", "instruction", "messages",
                                                  "conversations")
    more = {k: c for k in ("input", "history") if (c := find(*_ALIASES[k]))}
    guess = "" if exact else f"guessed {prompt!r} as the prompt"
    chosen, rejected = find("chosen", "chosen_messages"), find("rejected", "rejected_messages")
    if chosen and rejected:
        pair = {"chosen": chosen, "rejected": rejected}
        if prompt is None:
            return Detection("pairwise", pair, True, "")  # the replies hold the prompt
        return Detection("pairwise", {"prompt": prompt, **more, **extra, **pair}, exact, guess)
    label = find("label", "kto_tag")
    if label and prompt:
        cols = {"prompt": prompt, **more, **extra, "label": label}
        if completion := find("completion"):
            return Detection("kto", {**cols, "completion": completion}, exact, guess)
        if answer := find("output", "response", "answer"):
            return Detection("kto", {**cols, "completion": answer}, False,
                             f"guessed {answer!r} as the reply that {label!r} judges")
        if prompt == find("messages", "conversations"):  # the last turn is the reply
            return Detection("kto", cols, True, "")
    return None


def column_map(fmt: str, columns: Mapping[str, str] | None = None) -> dict[str, str]:
    """The full canonical -> column mapping for `fmt`, checking the given overrides."""
    if fmt not in FIELDS:
        raise DataError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    columns = dict(columns or {})
    unknown = [k for k in columns if k not in FIELDS[fmt]]
    if unknown:
        raise DataError(
            f"column mapping has {', '.join(map(repr, unknown))}, which {fmt} does not use; "
            f"it uses: {', '.join(FIELDS[fmt])}"
        )
    return {**FIELDS[fmt], **columns}


def check_columns(
    fmt: str, columns: Mapping[str, str] | None, present: list[str], file: str | Path
) -> dict[str, str]:
    """The mapping to use for a file with columns `present`; a DataError if a required
    column is missing."""
    cols = column_map(fmt, columns)
    for key in REQUIRED[fmt]:
        if cols[key] not in present:
            raise DataError(
                f"column missing; {fmt} needs a {cols[key]!r} column (the file has: "
                f"{', '.join(present) or 'no columns'})",
                file=file, field=cols[key],
            )
    return cols


def to_example(
    row: Mapping[str, Any],
    fmt: str,
    columns: Mapping[str, str] | None = None,
    *,
    file: str | Path | None = None,
    row_number: int | None = None,
    placeholders: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One row as `{"messages": [...]}` or `{"text": ...}`; `{{key}}` in any text is
    replaced by `placeholders[key]`."""
    cols = column_map(fmt, columns)

    def fail(key: str, reason: str) -> DataError:
        return DataError(reason, file=file, row=row_number, field=cols.get(key, key))

    def text(key: str, required: str | None = None) -> str:
        value = row.get(cols[key])
        try:
            out = _as_text(value)
        except TypeError as exc:
            raise fail(key, str(exc)) from None
        if required and not out.strip():
            raise fail(key, f"empty; every row needs a non-empty {required}")
        return _fill(out, placeholders)

    if fmt == "text":
        return {"text": text("text", "text")}
    if fmt in PREFERENCE_FORMATS:
        return _preference_example(row, fmt, cols, fail, text, placeholders)

    system = text("system")
    if fmt == "alpaca":
        prompt = text("instruction", "instruction")
        extra = text("input")
        answer = text("output", "answer")
        messages = _history(row.get(cols["history"]), fail, placeholders)
        user = f"{prompt}\n\n{extra}" if extra.strip() else prompt
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    else:
        key = "messages" if fmt == "messages" else "conversations"
        messages = _message_list(row.get(cols[key]), lambda r: fail(key, r), placeholders)
    if system.strip() and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    problem = _turn_problem(messages)
    if problem:
        raise fail("history" if fmt == "alpaca" else key, problem)
    offered = tools.definitions(row.get(cols["tools"]), lambda r: fail("tools", r)) \
        if "tools" in cols else []
    return {"messages": messages, "tools": offered} if offered else {"messages": messages}


def _preference_example(
    row: Mapping[str, Any], fmt: str, cols: dict[str, str], fail: Any, text: Any,
    placeholders: Mapping[str, str] | None,
) -> dict[str, Any]:
    if fmt == "kto":
        label = _label(row.get(cols["label"]), fail)
        if _absent(row.get(cols["completion"])):
            prompt, completion = _last_reply(row, cols, fail, placeholders)
        else:
            prompt = _preference_prompt(row, cols, fail, text, placeholders)
            completion = _reply(row.get(cols["completion"]), "completion", fail, placeholders)
        return {"prompt": prompt, "completion": completion, "label": label}
    chosen = _reply(row.get(cols["chosen"]), "chosen", fail, placeholders, whole=True)
    rejected = _reply(row.get(cols["rejected"]), "rejected", fail, placeholders, whole=True)
    if _absent(row.get(cols["prompt"])):
        if len(chosen) == 1:
            raise fail("prompt", "empty; every row needs a non-empty prompt (or chosen and "
                       "rejected as whole conversations that hold it)")
        prompt, chosen, rejected = _implicit_prompt(chosen, rejected, fail)
    else:
        prompt = _preference_prompt(row, cols, fail, text, placeholders)
        for key, reply in (("chosen", chosen), ("rejected", rejected)):
            if len(reply) != 1 or reply[0]["role"] != "assistant":
                raise fail(key, "expected the reply as text or as one assistant message "
                           "(the conversation before it goes in the prompt)")
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        raise fail("rejected", "the same as the chosen reply; a pair must differ to teach a "
                   "preference")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _absent(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _last_reply(row: Mapping[str, Any], cols: dict[str, str], fail: Any,
                placeholders: Mapping[str, str] | None) -> tuple[list[dict], list[dict]]:
    """LLaMA-Factory's KTO rows: one conversation whose last turn is the reply judged."""
    value = _json_cell(row.get(cols["prompt"]), "prompt", fail)
    messages = _message_list(value, lambda r: fail("prompt", r), placeholders) \
        if isinstance(value, list) else []
    if not messages or messages[-1]["role"] != "assistant":
        raise fail("completion", "no completion: give the reply the label judges in a "
                   "completion column, or the prompt as a conversation ending with it")
    prompt, reply = messages[:-1], messages[-1:]
    problem = _turn_problem(messages)
    if problem:
        raise fail("prompt", problem)
    return prompt, reply


def _implicit_prompt(chosen: list[dict], rejected: list[dict],
                     fail: Any) -> tuple[list[dict], list[dict], list[dict]]:
    """TRL's implicit prompt: chosen and rejected are whole conversations that share
    everything but their last (assistant) turn."""
    for key, conv in (("chosen", chosen), ("rejected", rejected)):
        if len(conv) < 2 or conv[-1]["role"] != "assistant":
            raise fail(key, "with no prompt column, chosen and rejected must be whole "
                       "conversations ending with the assistant reply (or add a prompt "
                       "column)")
        problem = _turn_problem(conv)
        if problem:
            raise fail(key, problem)
    if chosen[:-1] != rejected[:-1]:
        raise fail("rejected", "with no prompt column, chosen and rejected must be the same "
                   "conversation up to their last reply")
    return chosen[:-1], chosen[-1:], rejected[-1:]


def _json_cell(value: Any, key: str, fail: Any) -> Any:
    try:
        return _maybe_json(value)
    except ValueError as exc:
        raise fail(key, str(exc)) from None


def _preference_prompt(row: Mapping[str, Any], cols: dict[str, str], fail: Any, text: Any,
                       placeholders: Mapping[str, str] | None) -> list[dict]:
    """The conversation before the reply: a text prompt (plus input, history) or a list
    of messages; it must end with a user turn."""
    try:
        value = _maybe_json(row.get(cols["prompt"]))
    except ValueError as exc:
        raise fail("prompt", str(exc)) from None
    if isinstance(value, list):
        messages = _message_list(value, lambda r: fail("prompt", r), placeholders)
    else:
        user = text("prompt", "prompt")
        extra = text("input")
        messages = _history(row.get(cols["history"]), fail, placeholders)
        messages.append({"role": "user", "content": f"{user}\n\n{extra}" if extra.strip()
                         else user})
    system = text("system")
    if system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    if messages[-1]["role"] != "user":
        raise fail("prompt", "the prompt must end with a user turn; the replies to compare "
                   "go in the other columns")
    problem = _turn_problem([*messages, {"role": "assistant", "content": "-"}])
    if problem:
        raise fail("prompt", problem)
    return messages


def _reply(value: Any, key: str, fail: Any, placeholders: Mapping[str, str] | None,
           whole: bool = False) -> list[dict]:
    """A reply as a message list: text, one message object (LLaMA-Factory's sharegpt
    pairs) or a list of messages (TRL's conversational shape: one assistant message, or
    with `whole` a conversation for an implicit prompt)."""
    value = _json_cell(value, key, fail)
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, list):
        msgs = _message_list(value, lambda r: fail(key, r), placeholders)
        if not whole and (len(msgs) != 1 or msgs[0]["role"] != "assistant"):
            raise fail(key, "expected the reply as text or as one assistant message")
        return msgs
    try:
        content = _as_text(value)
    except TypeError as exc:
        raise fail(key, str(exc)) from None
    if not content.strip():
        raise fail(key, "empty; every row needs a non-empty reply here")
    return [{"role": "assistant", "content": _fill(content, placeholders)}]


def _label(value: Any, fail: Any) -> bool:
    """KTO's desirable flag. JSON true/false arrive as the text "true"/"false" (the
    reader keeps cells as written), CSV as text; 1/0 are accepted too."""
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    shown = "nothing" if value is None or value == "" else repr(value)
    raise fail("label", f"expected true or false (is the reply desirable?), got {shown}")


def _as_text(value: Any) -> str:
    """A cell as text. Readers keep text exact (core.data.reader); what is left to turn
    into text here are parquet's typed cells and JSON's true/false: booleans as JSON
    writes them, numbers as Python does, dates and times in ISO 8601, null/NaN as ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, decimal.Decimal)):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    raise TypeError(f"expected text, got {type(value).__name__} {_short(value)}")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _fill(text: str, placeholders: Mapping[str, str] | None) -> str:
    for key, value in (placeholders or {}).items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _maybe_json(value: Any) -> Any:
    # CSV has no lists: a list column arrives as its JSON text.
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            return loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    return value


def _history(value: Any, fail: Any, placeholders: Mapping[str, str] | None) -> list[dict]:
    try:
        value = _maybe_json(value)
    except ValueError as exc:
        raise fail("history", str(exc)) from None
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return []
    if not isinstance(value, list):
        raise fail("history", "expected a list of [user, assistant] pairs")
    out = []
    for i, pair in enumerate(value, 1):
        if (
            not isinstance(pair, (list, tuple)) or len(pair) != 2
            or not all(isinstance(t, str) and t.strip() for t in pair)
        ):
            raise fail("history", f"item {i} is not a [user, assistant] pair of non-empty texts")
        out.append({"role": "user", "content": _fill(pair[0], placeholders)})
        out.append({"role": "assistant", "content": _fill(pair[1], placeholders)})
    return out


def _message_list(value: Any, fail: Any, placeholders: Mapping[str, str] | None) -> list[dict]:
    try:
        value = _maybe_json(value)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if not isinstance(value, list) or not value:
        raise fail("expected a non-empty list of messages")
    out = []
    for i, msg in enumerate(value, 1):
        if not isinstance(msg, Mapping):
            raise fail(f"message {i} is not an object with a role and a content")
        out.append(_message(msg, i, fail, placeholders))
    return out


def _message(msg: Mapping[str, Any], i: int, fail: Any,
             placeholders: Mapping[str, str] | None) -> dict[str, Any]:
    """Message `i` of a list as {"role", "content"}, plus `tool_calls` for an assistant's
    calls (core.data.tools) and the `name`/`tool_call_id` a tool result carries."""
    role = msg.get("role", msg.get("from"))
    content = msg.get("content", msg.get("value"))
    if isinstance(role, str) and role.lower() in CALL_ROLES:
        return {"role": "assistant", "content": "", "tool_calls": tools.calls(content, i, fail)}
    if isinstance(role, str) and role.lower() in ROLES:
        role = ROLES[role.lower()]
    else:
        raise fail(f"message {i} has role {role!r}; expected user, assistant, system or tool")
    if isinstance(content, list):
        content = _parts_text(content, i, fail)
    if role == "tool" and isinstance(content, Mapping | list):
        content = json.dumps(content, ensure_ascii=False)  # a result given as JSON itself
    calls = tools.calls(msg["tool_calls"], i, fail) \
        if role == "assistant" and msg.get("tool_calls") else None
    if calls and not (isinstance(content, str) and content.strip()):
        content = ""  # a turn that only calls tools
    elif not isinstance(content, str) or not content.strip():
        raise fail(f"message {i} ({role}) has no text; every message needs content")
    out: dict[str, Any] = {"role": role, "content": _fill(content, placeholders)}
    if calls:
        out["tool_calls"] = calls
    reasoning = msg.get("reasoning_content") if role == "assistant" else None
    if isinstance(reasoning, str) and reasoning.strip():
        out["reasoning_content"] = reasoning  # trained as the template renders it
    for key in ("name", "tool_call_id") if role == "tool" else ():
        if isinstance(msg.get(key), str):
            out[key] = msg[key]
    return out


# Part types that carry media (OpenAI's chat parts, LLaMA-Factory v1's, Anthropic's).
_MEDIA_PARTS = {"image": "image", "image_url": "image", "input_image": "image",
                "video": "video", "video_url": "video", "audio": "audio",
                "input_audio": "audio", "audio_url": "audio", "file": "file"}


def _parts_text(parts: list[Any], i: int, fail: Any) -> str:
    """A content given as parts ({"type": "text", "text": ...} as OpenAI writes it,
    {"type": "text", "value": ...} as LLaMA-Factory's v1 files do) as its joined text;
    a media part is refused, never stripped."""
    out = []
    for j, part in enumerate(parts, 1):
        kind = part.get("type", "text") if isinstance(part, Mapping) else None
        if kind in _MEDIA_PARTS:
            media = _MEDIA_PARTS[kind]
            raise fail(f"message {i}, part {j} is {'an' if media[0] in 'aeiou' else 'a'} "
                       f"{media}; this dataset has {media}s; {media} fine-tuning is not "
                       "supported yet")
        text = part.get("text", part.get("value")) if kind == "text" else None
        if not isinstance(text, str):
            raise fail(f"message {i}, part {j} is not a text part ({{\"type\": \"text\", "
                       f"\"text\": ...}}): {_short(part)}")
        out.append(text)
    return "".join(out)


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _turn_problem(messages: list[dict]) -> str | None:
    """Conversations must go [system] user assistant user assistant ... so that every
    chat template renders them and every user turn has a reply to learn; an assistant
    turn that calls tools is followed by their results (tool turns), then the assistant
    again."""
    skip = 1 if messages and messages[0]["role"] == "system" else 0
    previous = None
    for n, msg in enumerate(messages[skip:], skip + 1):
        role, calling = msg["role"], bool(previous and previous.get("tool_calls"))
        if previous is None or (previous["role"] == "assistant" and not calling):
            expected = ("user",)
        elif previous["role"] == "user":
            expected = ("assistant",)
        elif calling:
            expected = ("tool",)
        else:  # after a tool's result: another result, or the assistant goes on
            expected = ("tool", "assistant")
        if role not in expected:
            wanted = " or ".join(f"{_a(r)} {r} turn" for r in expected)
            return (f"message {n} is {_a(role)} {role} turn where {wanted} was expected; "
                    "turns must alternate user, assistant (one system first), with tool "
                    "results after an assistant's tool calls")
        previous = msg
    if previous is None or previous["role"] != "assistant" or previous.get("tool_calls"):
        return "the conversation must end with an assistant reply"
    return None


def validate_file(
    path: str | Path, fmt: str, columns: Mapping[str, str] | None = None,
    text_split: str = "paragraph",
) -> list[DataError]:
    """Every problem in a file, one DataError per bad row (empty list: the file is fine).
    Rows are checked as they are read, so a big file is never all in memory."""
    problems = []
    try:
        cols = column_map(fmt, columns)
        declared, rows = open_rows(path, text_split)
        present = dict.fromkeys(declared or [])
        meaningful: set[str] = set()  # such columns with a value in some row
        count = 0
        for count, row in enumerate(rows, 1):
            if declared is None:
                present.update(dict.fromkeys(row))
            meaningful.update(c for c, v in row.items()
                              if c.lower() in MEANINGFUL and v not in (None, "", [], {}))
            try:
                to_example(row, fmt, cols, file=path, row_number=count)
            except DataError as exc:
                problems.append(exc)
        if not count:
            return [DataError("the file has no rows", file=path)]
        # A missing column is one problem, not one per row.
        check_columns(fmt, columns, list(present), path)
    except DataError as exc:
        return [exc]
    dropped = tuple(c for c in present if c in meaningful and c not in cols.values())
    return [*_dropped_problems(fmt, dropped, path), *problems]


def _dropped_problems(fmt: str, dropped: tuple[str, ...], path: str | Path) -> list[DataError]:
    """A column that carries meaning, filled in the file, which the format would not read:
    the file is not trained as if it were absent."""
    if not dropped:
        return []
    media = media_problem(dropped)
    if media:
        return [DataError(media, file=path)]
    return [DataError(f"{left_unused(fmt, dropped)}; map it, choose the format that reads "
                      "it, or remove it from the file", file=path)]
