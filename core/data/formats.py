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

from core.data.errors import DataError
from core.data.reader import loads, open_rows

FORMATS = ("alpaca", "messages", "sharegpt", "text", "pairwise", "kto")
PREFERENCE_FORMATS = ("pairwise", "kto")

# Canonical field -> the column it is read from unless a mapping says otherwise.
FIELDS: dict[str, dict[str, str]] = {
    "alpaca": {k: k for k in ("instruction", "input", "output", "system", "history")},
    "messages": {"messages": "messages", "system": "system"},
    "sharegpt": {"conversations": "conversations", "system": "system"},
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
    "pairwise": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}

# Both list formats accept either key style, since real files mix them freely.
ROLES = {
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}


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


# Column names that carry meaning no format here reads beside the ones it uses: a file
# with one left over is not trained as if it were absent.
MEANINGFUL = {"label": "KTO labels (desirable or not)", "kto_tag": "KTO labels",
              "tools": "tool definitions", "images": "images", "image": "images",
              "videos": "videos", "video": "videos", "audios": "audio", "audio": "audio"}


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
    used = set(found.columns.values())
    ignored = tuple(c for c in columns if c.lower() in MEANINGFUL and c not in used)
    if not ignored or found.format is None:
        return found
    note = f"{found.note}; " if found.note else ""
    return Detection(found.format, found.columns, False,
                     note + left_unused(found.format, ignored), ignored)


def left_unused(fmt: str, ignored: tuple[str, ...]) -> str:
    what = ", ".join(f"{c!r} ({MEANINGFUL[c.lower()]})" for c in ignored)
    return f"the {fmt} format would leave {what} unused"


def _detect(columns: list[str]) -> Detection:
    lower = {c.lower(): c for c in columns}

    def find(*names: str) -> str | None:
        return next((lower[n] for n in names if n in lower), None)

    extra = {}
    if system := find(*_ALIASES["system"]):
        extra["system"] = system
    if found := _detect_preference(find, extra):
        return found
    if col := find("messages"):
        others = bool(find("instruction", "output", "conversations"))
        return Detection("messages", {"messages": col, **extra}, not others,
                         "also has other chat-like columns" if others else "")
    if col := find("conversations"):
        return Detection("sharegpt", {"conversations": col, **extra}, True)
    if col := find("conversation", "chat", "dialog", "dialogue"):
        return Detection("messages", {"messages": col, **extra}, False,
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
    """pairwise (chosen + rejected) and kto (completion + label) before the others: their
    prompt and completion columns look like alpaca's instruction and answer."""
    prompt = find("prompt", "instruction", "question", "query", "messages", "conversation")
    more = {k: c for k in ("input", "history") if (c := find(*_ALIASES[k]))}
    if (chosen := find("chosen")) and (rejected := find("rejected")):
        if prompt is None:
            return Detection("pairwise", {"chosen": chosen, "rejected": rejected}, False,
                             "has chosen and rejected but no prompt column; map one")
        cols = {"prompt": prompt, **more, **extra, "chosen": chosen, "rejected": rejected}
        return Detection("pairwise", cols, prompt == find("prompt"),
                         "" if prompt == find("prompt") else f"guessed {prompt!r} as the prompt")
    if (label := find("label")) and (completion := find("completion")) and prompt:
        cols = {"prompt": prompt, **more, **extra, "completion": completion, "label": label}
        return Detection("kto", cols, prompt == find("prompt"),
                         "" if prompt == find("prompt") else f"guessed {prompt!r} as the prompt")
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
    return {"messages": messages}


def _preference_example(
    row: Mapping[str, Any], fmt: str, cols: dict[str, str], fail: Any, text: Any,
    placeholders: Mapping[str, str] | None,
) -> dict[str, Any]:
    prompt = _preference_prompt(row, cols, fail, text, placeholders)
    if fmt == "kto":
        return {"prompt": prompt,
                "completion": _reply(row.get(cols["completion"]), "completion", fail, placeholders),
                "label": _label(row.get(cols["label"]), fail)}
    chosen = _reply(row.get(cols["chosen"]), "chosen", fail, placeholders)
    rejected = _reply(row.get(cols["rejected"]), "rejected", fail, placeholders)
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        raise fail("rejected", "the same as the chosen reply; a pair must differ to teach a "
                   "preference")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


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


def _reply(value: Any, key: str, fail: Any,
           placeholders: Mapping[str, str] | None) -> list[dict]:
    """A reply as a one-message list; given as text or as one assistant message."""
    try:
        value = _maybe_json(value)
    except ValueError as exc:
        raise fail(key, str(exc)) from None
    if isinstance(value, list):
        msgs = _message_list(value, lambda r: fail(key, r), placeholders)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
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
        role = msg.get("role", msg.get("from"))
        content = msg.get("content", msg.get("value"))
        if isinstance(role, str) and role.lower() in ROLES:
            role = ROLES[role.lower()]
        else:
            raise fail(f"message {i} has role {role!r}; expected user, assistant or system")
        if isinstance(content, list):  # OpenAI-style parts: keep the text ones
            content = "".join(
                p.get("text", "") for p in content if isinstance(p, Mapping)
                and p.get("type", "text") == "text"
            )
        if not isinstance(content, str) or not content.strip():
            raise fail(f"message {i} ({role}) has no text; every message needs content")
        out.append({"role": role, "content": _fill(content, placeholders)})
    return out


def _turn_problem(messages: list[dict]) -> str | None:
    """Conversations must go [system] user assistant user assistant ... so that every
    chat template renders them and every user turn has a reply to learn."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            n = i + 1 + (len(messages) - len(turns))
            return (f"message {n} is a {msg['role']} turn where a {expected} turn was "
                    "expected; turns must alternate user, assistant (one system first)")
    if not turns or turns[-1]["role"] != "assistant":
        return "the conversation must end with an assistant reply"
    return None


def validate_file(
    path: str | Path, fmt: str, columns: Mapping[str, str] | None = None
) -> list[DataError]:
    """Every problem in a file, one DataError per bad row (empty list: the file is fine).
    Rows are checked as they are read, so a big file is never all in memory."""
    problems = []
    try:
        cols = column_map(fmt, columns)
        declared, rows = open_rows(path)
        present = dict.fromkeys(declared or [])
        count = 0
        for count, row in enumerate(rows, 1):
            if declared is None:
                present.update(dict.fromkeys(row))
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
    return problems
