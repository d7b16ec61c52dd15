"""The chat worker: `python -m core.chat.worker`, an Engine behind JSON lines.

Requests on stdin, one JSON object a line:
  {"id": 1, "op": "load", "target": {"model", "trained", "label"}}
  {"id": 2, "op": "generate", "target": {...}, "messages": [...], "settings": {...}}
  {"op": "stop"}                        end the reply being generated, at its next token
  {"id": 3, "op": "status"}
Replies on stdout carry the request's id; the last reply to a request has "last": true:
  {"type": "waiting", "holder"} (another job has the device) {"type": "loading"}
  {"type": "loaded", "info"} {"type": "chunk", "text"}
  {"type": "done", "text", "tokens", "seconds", "stopped"} {"type": "error", "message"}
End of input ends the worker; the UI unloads models by closing its stdin.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import traceback
from typing import IO, Any

from core.chat.engine import Engine, GenerationSettings, Reply
from core.jobs.device import hold_device
from core.jobs.runs import Target


def _protocol_stream() -> IO[str]:
    """stdout for replies only: whatever else writes to fd 1 (library prints, C code)
    goes to stderr, so it can never corrupt a reply line."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _reader(requests: queue.Queue, stop: threading.Event) -> None:
    """Read stdin in its own thread, so a stop arrives while a reply is generated."""
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            continue
        if request.get("op") == "stop":
            stop.set()
            continue
        if request.get("op") == "generate":
            stop.clear()  # in order: a stop that follows this request still counts
        requests.put(request)
    requests.put(None)


def _handle(engine: Engine, request: dict[str, Any], stop: threading.Event,
            send: Any) -> None:
    op = request.get("op")
    if op == "status":
        send(type="status", loaded=list(engine.loaded), last=True)
        return
    # The device is one job's at a time (core.jobs.device): a run training holds it, and the
    # chat waits, saying for whom, until it is free or the person presses Stop.
    device = hold_device("chat", on_wait=lambda holder: send(type="waiting", holder=holder),
                         cancelled=stop.is_set)
    if device is None:
        raise RuntimeError("stopped while waiting for the device")
    with device:
        _use_device(engine, request, stop, send, op)


def _use_device(engine: Engine, request: dict[str, Any], stop: threading.Event, send: Any,
                op: str) -> None:
    target = Target.from_dict(request["target"])
    first_load = target.key not in engine.loaded
    if first_load:
        send(type="loading", label=target.label)
    info = engine.load(target)
    if op == "load":
        send(type="loaded", info=info, last=True)
        return
    if first_load:
        send(type="loaded", info=info)
    if op != "generate":
        raise ValueError(f"unknown op {op!r}")
    settings = GenerationSettings(**request.get("settings", {}))
    reply = Reply()
    for piece in engine.stream(target, request["messages"], settings, stop, reply,
                               tools=request.get("tools")):
        send(type="chunk", text=piece)
    send(type="done", text=reply.text, tokens=reply.tokens, seconds=round(reply.seconds, 3),
         stopped=reply.stopped, notes=reply.notes, last=True)


def main() -> int:
    out = _protocol_stream()

    def send(**fields: Any) -> None:
        out.write(json.dumps({"id": request_id, **fields}) + "\n")
        out.flush()

    requests: queue.Queue = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=_reader, args=(requests, stop), daemon=True).start()
    engine = Engine()
    while (request := requests.get()) is not None:
        request_id = request.get("id")
        try:
            _handle(engine, request, stop, send)
        except Exception as exc:  # the UI shows it; the worker stays up for the next one
            traceback.print_exc()
            send(type="error", message=f"{type(exc).__name__}: {exc}", last=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
