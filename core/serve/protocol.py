"""OpenAI's request and response shapes, read into ours and written back; no weights here.

A request becomes a `Request`: the messages (or a plain prompt), the run's generation
settings with the request's values over them (core.schema.jobs.GENERATION: the Chat
tab's defaults, so a request that sets nothing is answered as Chat answers), stop
strings and a seed. What the endpoint cannot honour (n > 1, penalties, log
probabilities, JSON modes) is refused with a 400 that names the field, never ignored.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from core.chat.engine import GenerationSettings
from core.schema.jobs import GENERATION
from core.schema.setting import SettingsError

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOPS = 4  # as OpenAI's API
TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


class ApiError(Exception):
    """A request answered with an error: the HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = \
            status, message, param, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


@dataclass
class Request:
    model: str
    settings: GenerationSettings
    max_tokens_given: bool
    messages: list[dict[str, Any]] | None = None  # a chat; None for a plain completion
    prompt: str = ""
    tools: list[dict[str, Any]] | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


# Fields a client may send that would change the answer in ways this endpoint does not
# do, and the value that means "not asked for".
_UNSUPPORTED = {"n": 1, "best_of": 1, "presence_penalty": 0, "frequency_penalty": 0,
                "logprobs": None, "top_logprobs": None, "logit_bias": None, "echo": False,
                "suffix": None}


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name, neutral in _UNSUPPORTED.items():
        value = body.get(name, neutral)
        if value in (neutral, None, {}, False) or (name == "logprobs" and value is False):
            continue
        raise ApiError(400, f"{name}={value!r} is not supported by this endpoint (it "
                       f"answers one choice, without penalties or log probabilities); "
                       f"leave {name} out", name)
    fmt = body.get("response_format")
    if fmt not in (None, {}) and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise ApiError(400, "response_format: only {'type': 'text'} is supported",
                       "response_format")


def _settings(body: dict[str, Any]) -> tuple[GenerationSettings, bool]:
    """The run's generation settings with the request's values over them."""
    values = {name: s.default for name, s in GENERATION.items()}
    given = {"temperature": body.get("temperature"), "top_p": body.get("top_p"),
             "top_k": body.get("top_k"), "repetition_penalty": body.get("repetition_penalty"),
             "max_new_tokens": body.get("max_completion_tokens", body.get("max_tokens"))}
    values.update({k: v for k, v in given.items() if v is not None})
    try:
        settings = GenerationSettings(**values)
    except SettingsError as exc:
        first = exc.problems[0].split(":")[0]
        param = "max_tokens" if first == "max_new_tokens" else first
        raise ApiError(400, str(exc).replace("max_new_tokens", "max_tokens"), param) from None
    settings.do_sample = settings.temperature > 0
    return settings, given["max_new_tokens"] is not None


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop: a string or a list of strings", "stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop: at most {MAX_STOPS} strings", "stop")
    return [s for s in stops if s]


def _common(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: required (GET /v1/models lists them)", "model")
    _refuse_unsupported(body)
    settings, given = _settings(body)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)
                             or not 0 <= seed < 2**63):
        raise ApiError(400, "seed: a whole number from 0", "seed")
    options = body.get("stream_options") or {}
    return dict(model=model, settings=settings, max_tokens_given=given,
                stop=_stops(body.get("stop")), seed=seed, stream=bool(body.get("stream")),
                include_usage=bool(isinstance(options, dict) and options.get("include_usage")))


def _content(message: dict[str, Any], i: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"messages[{i}].content: only text parts are supported, "
                               f"not {kind!r}", f"messages[{i}].content")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise ApiError(400, f"messages[{i}].content: text or a list of text parts",
                   f"messages[{i}].content")


def _message(message: Any, i: int) -> dict[str, Any]:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise ApiError(400, f"messages[{i}]: an object with a role ({', '.join(ROLES)})",
                       f"messages[{i}]")
    # "developer" is OpenAI's newer name for the system role; templates know "system".
    role = "system" if message["role"] == "developer" else message["role"]
    out: dict[str, Any] = {"role": role, "content": _content(message, i)}
    for key in ("tool_calls", "tool_call_id", "name"):
        if message.get(key) is not None:
            out[key] = message[key]
    if out.get("tool_calls"):
        # Templates (Qwen's, Hermes') read the arguments as a mapping; OpenAI sends text.
        out["tool_calls"] = [_call_for_template(c) for c in out["tool_calls"]]
    return out


def _call_for_template(call: Any) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = dict(call["function"])
    if isinstance(function.get("arguments"), str):
        try:
            function["arguments"] = json.loads(function["arguments"])
        except ValueError:
            pass
    return {**call, "function": function}


def parse_chat(body: Any) -> Request:
    common = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: a non-empty list", "messages")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list)
                              or not all(isinstance(t, dict) for t in tools)):
        raise ApiError(400, "tools: a list of tool objects", "tools")
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "none"):
        raise ApiError(400, "tool_choice: only 'auto' or 'none' is supported", "tool_choice")
    if choice == "none":  # no tool may be called: the template is not offered any
        tools = None
    return Request(messages=[_message(m, i) for i, m in enumerate(messages)],
                   tools=tools or None, **common)


def parse_completion(body: Any) -> Request:
    common = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt: one string (one prompt a request)", "prompt")
    return Request(prompt=prompt, **common)


class StopFilter:
    """Text as it streams, cut before the first stop string; the text that could still
    begin one is held back until the next piece shows whether it does."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.held, self.hit = stops, "", False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        text = self.held + piece
        cuts = [text.find(s) for s in self.stops if s in text]
        if cuts:
            self.hit, self.held = True, ""
            return text[:min(cuts)]
        keep = max((n for s in self.stops for n in range(1, len(s))
                    if text.endswith(s[:n])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        held, self.held = self.held, ""
        return "" if self.hit else held


def tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(the text outside tool calls, the calls) from a reply in the <tool_call>{json}
    </tool_call> convention of Qwen's and Hermes' templates; a block that is not JSON
    with a name stays text."""
    calls, kept, last = [], [], 0
    for match in TOOL_CALL.finditer(text):
        try:
            data = json.loads(match.group(1))
        except ValueError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            continue
        kept.append(text[last:match.start()])
        last = match.end()
        arguments = data.get("arguments", data.get("parameters", {}))
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": data["name"], "arguments": arguments
                                   if isinstance(arguments, str) else json.dumps(arguments)}})
    kept.append(text[last:])
    return "".join(kept).strip() if calls else text, calls


# -- responses ---------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_message(text: str, tools_given: bool) -> tuple[dict[str, Any], bool]:
    """The assistant message of a reply, and whether it calls tools."""
    content, calls = tool_calls(text) if tools_given else (text, [])
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = calls
    else:
        message["content"] = content
    return message, bool(calls)


def chat_response(rid: str, model: str, message: dict[str, Any], finish: str,
                  counts: dict[str, int]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": message,
                                         "finish_reason": finish, "logprobs": None}],
            "usage": counts}


def chat_chunk(rid: str, model: str, delta: dict[str, Any], finish: str | None = None,
               counts: dict[str, int] | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk",
                             "created": int(time.time()), "model": model,
                             "choices": [{"index": 0, "delta": delta,
                                          "finish_reason": finish, "logprobs": None}]}
    if counts is not None:  # the usage chunk of stream_options.include_usage: no choices
        chunk.update(choices=[], usage=counts)
    return chunk


def completion_response(rid: str, model: str, text: str, finish: str | None,
                        counts: dict[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": rid, "object": "text_completion", "created": int(time.time()),
                            "model": model, "choices": [{"index": 0, "text": text,
                                                         "finish_reason": finish,
                                                         "logprobs": None}]}
    if counts is not None:
        body["usage"] = counts
    return body
