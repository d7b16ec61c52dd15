"""Tool calling in conversations: the tool definitions a row offers, the assistant's calls,
and the tools' results, in one shape whichever file layout they came in.

The shape is the one transformers' chat templates take (`apply_chat_template(tools=...)`):
definitions as `{"type": "function", "function": {"name", "description", "parameters"}}`,
an assistant turn's calls as `tool_calls: [{"type": "function", "function": {"name",
"arguments": {...}}}]`, a result as a `{"role": "tool", "content": ...}` turn. It is read
from OpenAI's layout (`tools`, assistant `tool_calls` with JSON-text `arguments`, `role:
tool`) and from LLaMA-Factory's sharegpt one (`function_call` turns holding the call as
JSON, `observation` turns, a `tools` column of JSON text).

A template that does not render tools (its source names neither `tools` nor `tool_calls`,
as SmolLM2's) gets the conversation folded into plain turns the way Qwen's and Hermes'
templates write tools, so nothing is dropped and the convention is a widespread one:
the definitions in the system message inside <tools></tools>, each call as
<tool_call>{"name": ..., "arguments": ...}</tool_call> in the assistant's reply, and the
results as a user turn of <tool_response></tool_response> blocks. What the model sees
shows exactly that; the served model's calls are read back from the same tags
(core.serve.protocol).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

FOLD_INTRO = ("You may call one or more functions to assist with the user query. "
              "The functions you can call are:")
FOLD_HOW = ("To call a function, reply with a JSON object with its name and arguments "
            "inside <tool_call></tool_call> tags.")

Fail = Callable[[str], Exception]


def definitions(value: Any, fail: Fail) -> list[dict]:
    """A row's tool definitions (a list, or JSON text of one) in the templates' shape;
    none for an empty cell (None, or the NaN a table gives a missing value)."""
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise fail(f"tools is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise fail("tools must be a list of tool definitions")
    out = []
    for i, tool in enumerate(value, 1):
        function = tool.get("function", tool) if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) \
                or not function["name"].strip():
            raise fail(f"tool {i} has no name; a tool is {{\"name\": ..., \"description\": "
                       "..., \"parameters\": {...}}} (or OpenAI's {\"type\": \"function\", "
                       "\"function\": {...}})")
        out.append({"type": "function", "function": dict(function)})
    return out


def calls(value: Any, i: int, fail: Fail) -> list[dict]:
    """The calls of assistant message `i`: OpenAI's `tool_calls` list, or the JSON text
    of a LLaMA-Factory `function_call` turn (one call or a list of them)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise fail(f"message {i} is a function call whose value is not JSON: "
                       f"{value[:80]!r}; it should be {{\"name\": ..., \"arguments\": "
                       "{...}}") from None
    items = value if isinstance(value, list) else [value]
    out = []
    for call in items:
        function = call.get("function", call) if isinstance(call, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or not name.strip():
            raise fail(f"message {i} has a tool call without a function name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                raise fail(f"message {i}: the arguments of the call to {name!r} are not "
                           "JSON") from None
        if not isinstance(arguments, Mapping):
            raise fail(f"message {i}: the arguments of the call to {name!r} must be a JSON "
                       "object")
        entry = {"type": "function", "function": {"name": name, "arguments": dict(arguments)}}
        if isinstance(call, Mapping) and isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    if not out:
        raise fail(f"message {i} has an empty list of tool calls")
    return out


def uses_tools(messages: list[dict], tools: list[dict] | None) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def template_takes_tools(template: str) -> bool:
    """Whether a chat template renders tool definitions and calls itself."""
    return "tools" in template and "tool_calls" in template


def fold(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """The conversation in plain system/user/assistant turns (see the module's note)."""
    out: list[dict] = []
    for msg in messages:
        if msg["role"] == "tool":
            block = f"<tool_response>\n{msg['content']}\n</tool_response>"
            if out and out[-1].get("folded_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "folded_results": True})
            continue
        content = msg.get("content") or ""
        for call in msg.get("tool_calls") or ():
            text = json.dumps({"name": call["function"]["name"],
                               "arguments": call["function"]["arguments"]}, ensure_ascii=False)
            content += ("\n" if content else "") + f"<tool_call>\n{text}\n</tool_call>"
        out.append({"role": msg["role"], "content": content})
    for msg in out:
        msg.pop("folded_results", None)
    if tools:
        listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        offer = f"{FOLD_INTRO}\n<tools>\n{listed}\n</tools>\n{FOLD_HOW}"
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{offer}"}
        else:
            out.insert(0, {"role": "system", "content": offer})
    return out
