"""The OpenAI-compatible HTTP app of the studio engine: FastAPI routes in front of one
`Scheduler`, a thread that owns the chat Engine (core/chat/engine.py) and answers through
the same rendering and generation as the Chat tab.

Requests waiting for the same model (run or base) are answered together, as one padded
batch (core/serve/batch.py), up to --max-batch; those for different models take turns,
since the runs of one base share its weights as adapters switched per request (see
Engine). Requests beyond those answered wait in a bounded queue, and beyond that are
refused with 429 at once, so a burst never piles up unseen.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.requests import Request as HttpRequest

from core.chat.engine import Engine, Reply
from core.jobs.runs import Target
from core.serve import hosts, protocol
from core.serve.batch import Row, batchable
from core.serve.batch import generate as generate_batch
from core.serve.protocol import ApiError, Request, StopFilter


@dataclass
class Options:
    """How the app was started (the serving job's spec)."""

    host: str = "127.0.0.1"
    api_key: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    queue_size: int = 16
    max_request_mb: float = 4.0


@dataclass
class Work:
    """One request: waiting in the queue or being answered. The scheduler thread posts
    ("begin" | "text" | "end" | "error", fields) to `out`, in the app's event loop."""

    request: Request
    target: Target
    endpoint: str
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    queued: float = field(default_factory=time.time)

    def post(self, kind: str, **fields: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, (kind, fields))
        except RuntimeError:  # the server has stopped: nobody is left to tell
            self.cancel.set()


def context_length(engine: Engine, target: Target) -> int | None:
    """The longest sequence (prompt and reply) the model takes, when it says."""
    entry = engine.entry(target)
    config = getattr(entry.model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(entry.tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10**7 else None


# How long the first request waits for others to arrive with it: a batch started alone
# makes the ones a moment behind it wait for its whole reply.
BATCH_WAIT = 0.05


class Scheduler:
    """The thread that answers requests in the order they came: the first one waiting, and
    with it up to `max_batch - 1` others waiting for the same model, as one batch
    (core/serve/batch.py; a batch of one when it came alone). What cannot share a batch
    (a prompt-learning adapter; sampling on a model whose generation config adds warpers
    of its own) goes through the Chat tab's own streaming, one at a time."""

    def __init__(self, engine: Engine, models: dict[str, Target], queue_size: int,
                 on_done: Callable[[dict[str, Any]], None] = lambda record: None,
                 max_batch: int = 1) -> None:
        self.engine, self.models, self.on_done = engine, models, on_done
        self.queue_size, self.max_batch = queue_size, max(max_batch, 1)
        self.pending: deque[Work] = deque()
        self.ready = threading.Condition()
        self.closed = False
        self.current: list[Work] = []
        self.thread = threading.Thread(target=self._loop, name="serve-scheduler", daemon=True)
        self.thread.start()

    def submit(self, work: Work) -> None:
        with self.ready:
            busy = bool(self.current)
            if len(self.pending) >= max(self.queue_size, 1) or (self.queue_size == 0 and busy):
                raise queue.Full
            self.pending.append(work)
            self.ready.notify()

    def close(self) -> None:
        """Stop answering: the replies under way end at their next token, waiting ones get
        503."""
        with self.ready:
            self.closed = True
            for work in self.current:
                work.cancel.set()
            while self.pending:
                self.pending.popleft().post("error", error=ApiError(
                    503, "the server is stopping", kind="server_error"))
            self.ready.notify()

    def _next(self) -> list[Work]:
        """The next batch: the first request waiting, and those for the same model that
        arrive with it (clients sending at once are a few milliseconds apart)."""
        with self.ready:
            while not self.pending and not self.closed:
                self.ready.wait()
            if self.closed:
                return []
            batch = [self.pending.popleft()]
            deadline = time.time() + (BATCH_WAIT if self.max_batch > 1 else 0)
            while len(batch) < self.max_batch:
                same = [w for w in self.pending if w.target.key == batch[0].target.key]
                for work in same[:self.max_batch - len(batch)]:
                    self.pending.remove(work)
                    batch.append(work)
                left = deadline - time.time()
                if len(batch) >= self.max_batch or left <= 0:
                    break
                self.ready.wait(left)
            self.current = batch
            return batch

    def _loop(self) -> None:
        while batch := self._next():
            live = [w for w in batch if not w.cancel.is_set()]  # gone while they waited
            records = self._answer_all(live) if live else []
            with self.ready:
                self.current = []
            for work, record in zip(live, records, strict=True):
                self.on_done({"endpoint": work.endpoint, "model": work.request.model,
                              "waited": round(time.time() - work.queued, 3), **record})

    def _answer_all(self, batch: list[Work]) -> list[dict[str, Any]]:
        """One record per request: each refused on its own, the rest answered together
        where they can be."""
        records: dict[int, dict[str, Any]] = {}
        prepared: list[tuple[Work, str, int, Any]] = []
        for work in batch:
            try:
                prepared.append((work, *self._prepare(work)))
            except Exception as exc:
                records[id(work)] = _failed([work], exc)[0]
        together = [p for p in prepared
                    if batchable(self.engine.entry(p[0].target).model, p[3])]
        for p in prepared:
            if not any(p is q for q in together):
                try:
                    records[id(p[0])] = self._answer(*p)
                except Exception as exc:
                    records[id(p[0])] = _failed([p[0]], exc)[0]
        for group in self._fitting(together):
            try:
                answered = self._answer_batch(group)
            except Exception as exc:
                answered = _failed([p[0] for p in group], exc)
            records.update((id(p[0]), record) for p, record in zip(group, answered, strict=True))
        return [records[id(w)] for w in batch]

    def _fitting(self, prepared: list[tuple[Work, str, int, Any]]
                 ) -> list[list[tuple[Work, str, int, Any]]]:
        """Batches within the model's context: a batch runs as long as its longest reply,
        and every row's positions grow with it (past the end of a learned position table,
        GPT-2's, generate() would fail), so a prompt that cannot take that many more
        tokens is a batch of its own."""
        if not prepared:
            return []
        limit = context_length(self.engine, prepared[0][0].target)
        longest = max(p[3].max_new_tokens for p in prepared)
        fit = [p for p in prepared if limit is None or p[2] + longest <= limit]
        return ([fit] if fit else []) + [[p] for p in prepared
                                         if not any(p is q for q in fit)]

    def _prompt(self, work: Work) -> str:
        request = work.request
        if request.messages is None:
            # As the tokenizer would encode it by itself (vLLM does the same): a BOS first
            # for a model that wants one; the text is otherwise taken as written.
            tok = self.engine.entry(work.target).tokenizer
            bos = tok.bos_token if tok.bos_token and \
                tok("x")["input_ids"][:1] == [tok.bos_token_id] else ""
            return bos + request.prompt
        try:
            return self.engine.render(work.target, request.messages, request.tools)
        except Exception as exc:  # jinja's raise_exception: the conversation's fault
            raise ApiError(400, f"messages: the model's chat template cannot render this "
                           f"conversation: {exc}", "messages") from None

    def _bounded(self, work: Work, prompt_tokens: int) -> Any:
        """The request's settings with max_tokens fitted to the model's context."""
        settings, request = work.request.settings, work.request
        limit = context_length(self.engine, work.target)
        if limit is None:
            return settings
        room = limit - prompt_tokens
        if room <= 0 or (request.max_tokens_given and settings.max_new_tokens > room):
            asked = f" + max_tokens {settings.max_new_tokens}" if request.max_tokens_given else ""
            raise ApiError(400, f"this model's context is {limit} tokens; the prompt is "
                           f"{prompt_tokens}{asked}: shorten the prompt or ask for fewer "
                           "tokens", "max_tokens" if room > 0 else "messages",
                           code="context_length_exceeded")
        return replace(settings, max_new_tokens=min(settings.max_new_tokens, room))

    def _prepare(self, work: Work) -> tuple[str, int, Any]:
        """(prompt text, its token count, the settings fitted to the context)."""
        text = self._prompt(work)
        tokenizer = self.engine.entry(work.target).tokenizer
        prompt_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return text, prompt_tokens, self._bounded(work, prompt_tokens)

    def _answer(self, work: Work, text: str, prompt_tokens: int, settings: Any
                ) -> dict[str, Any]:
        import torch

        if work.request.seed is not None:
            torch.manual_seed(work.request.seed)
        work.post("begin", prompt_tokens=prompt_tokens)
        stops, reply = StopFilter(work.request.stop), Reply()
        for piece in self.engine.stream_text(work.target, text, settings, work.cancel, reply):
            shown = stops.feed(piece)
            if shown:
                work.post("text", text=shown)
            if stops.hit:
                work.cancel.set()  # and read on: generation ends at its next token
        return _finish(work, stops, prompt_tokens, reply.tokens, reply.seconds,
                       settings.max_new_tokens)

    def _answer_batch(self, prepared: list[tuple[Work, str, int, Any]]
                      ) -> list[dict[str, Any]]:
        entry = self.engine.entry(prepared[0][0].target)
        rows, stops = [], []
        for work, text, prompt_tokens, settings in prepared:
            stop = StopFilter(work.request.stop)
            rows.append(Row(entry.tokenizer(text, add_special_tokens=False)["input_ids"],
                            settings, work.request.seed, _shown(work, stop), work.cancel))
            stops.append(stop)
            work.post("begin", prompt_tokens=prompt_tokens)
        seconds = generate_batch(entry, rows)
        return [{**_finish(work, stop, prompt_tokens, row.tokens, seconds,
                           settings.max_new_tokens), "batch": len(rows)}
                for (work, _, prompt_tokens, settings), row, stop
                in zip(prepared, rows, stops, strict=True)]


def _failed(works: list[Work], exc: Exception) -> list[dict[str, Any]]:
    """Tell each of `works` why it failed; their records. The server stays up."""
    if isinstance(exc, ApiError):
        error, record = exc, {"code": exc.status, "error": exc.message}
    else:
        print(f"error answering a request: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        error = ApiError(500, f"{type(exc).__name__}: {exc}", kind="server_error")
        record = {"code": 500, "error": f"{type(exc).__name__}: {exc}"[:300]}
    for work in works:
        work.post("error", error=error)
    return [dict(record) for _ in works]


def _shown(work: Work, stops: StopFilter) -> Callable[[str], bool]:
    """A batch row's text handler: posts what its stop strings let through, and says
    when one was hit."""
    def on_text(piece: str) -> bool:
        shown = stops.feed(piece)
        if shown:
            work.post("text", text=shown)
        return stops.hit
    return on_text


def _finish(work: Work, stops: StopFilter, prompt_tokens: int, tokens: int, seconds: float,
            max_new_tokens: int) -> dict[str, Any]:
    """Tell the client the reply ended; its record for the request log."""
    tail = stops.flush()
    if tail:
        work.post("text", text=tail)
    finish = "length" if tokens >= max_new_tokens and not stops.hit else "stop"
    work.post("end", finish=finish, prompt_tokens=prompt_tokens, completion_tokens=tokens)
    rate = tokens / seconds if seconds > 0 else 0.0
    return {"code": 200, "prompt_tokens": prompt_tokens, "completion_tokens": tokens,
            "seconds": round(seconds, 3), "tokens_per_second": round(rate, 1),
            "finish": finish}


# -- the HTTP side -----------------------------------------------------------------------
class Gate:
    """ASGI middleware: Host and Origin as the web UI checks them (core/serve/hosts.py),
    then the API key, before any route sees a request."""

    def __init__(self, app: Any, options: Options) -> None:
        self.app, self.options = app, options

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        host, origin = headers.get("host", ""), headers.get("origin")
        o = self.options
        refusal = None
        if not hosts.host_allowed(host, o.host, o.allowed_hosts):
            refusal = ApiError(403, f"Host {host[:100]!r} is not one this server answers; "
                               "start it with --allowed-host NAME to serve that name")
        elif origin is not None and not hosts.origin_allowed(origin, host, o.allowed_origins):
            refusal = ApiError(403, f"requests from pages of {origin[:100]!r} are refused; "
                               "start the server with --allowed-origin to allow them")
        elif o.api_key and scope.get("path", "").startswith("/v1") \
                and scope.get("method") != "OPTIONS" \
                and not hmac.compare_digest(headers.get("authorization", "").encode(),
                                            f"Bearer {o.api_key}".encode()):
            refusal = ApiError(401, "a valid API key is needed: send the header "
                               "'Authorization: Bearer KEY' (the key the server was started "
                               "with)", code="invalid_api_key")
        if refusal is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps(refusal.body()).encode()
        await send({"type": "http.response.start", "status": refusal.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def read_json(request: Any, limit_mb: float) -> Any:
    """The body as JSON; 413 past the limit, counted as it arrives (a body sent in chunks
    has no Content-Length to trust)."""
    limit = int(limit_mb * 2**20)
    too_big = ApiError(413, f"the request is larger than {limit_mb:g} MB (the server's "
                       "--max-request-mb)", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise too_big
    try:
        return json.loads(bytes(data))
    except ValueError as exc:
        raise ApiError(400, f"the request body is not JSON: {exc}") from None


def build_app(scheduler: Scheduler, options: Options, created: int | None = None) -> Any:
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import JSONResponse

    app = FastAPI(title="PEFT Studio", docs_url=None, redoc_url=None, openapi_url=None)
    if options.allowed_origins:  # pages of these origins may call it from a browser
        app.add_middleware(CORSMiddleware, allow_origins=list(options.allowed_origins),
                           allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(Gate, options=options)
    created = created or int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_: Any, exc: ApiError) -> Any:
        extra = {"retry-after": "1"} if exc.status == 429 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=extra)

    @app.get("/health")
    async def _health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def _models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "peft-studio",
             "root": target.model, "parent": None if target.trained is None else target.model}
            for name, target in scheduler.models.items()]}

    @app.post("/v1/chat/completions")
    async def _chat(http: HttpRequest) -> Any:
        request = protocol.parse_chat(await read_json(http, options.max_request_mb))
        return await answer(scheduler, request, "chat")

    @app.post("/v1/completions")
    async def _completions(http: HttpRequest) -> Any:
        request = protocol.parse_completion(await read_json(http, options.max_request_mb))
        return await answer(scheduler, request, "completion")

    return app


async def answer(scheduler: Scheduler, request: Request, endpoint: str) -> Any:
    """Queue the request and answer it whole, or as server-sent events when it streams."""
    from fastapi.responses import StreamingResponse

    target = scheduler.models.get(request.model)
    if target is None:
        raise ApiError(404, f"model {request.model!r} is not served here; served: "
                       f"{', '.join(scheduler.models)}", "model", code="model_not_found")
    work = Work(request, target, endpoint, asyncio.get_running_loop())
    try:
        scheduler.submit(work)
    except queue.Full:
        print(f"refused a request for {request.model}: the queue is full", flush=True)
        raise ApiError(429, f"the server is busy: {scheduler.queue_size} requests are waiting "
                       "already; retry shortly", kind="rate_limit_error") from None
    try:
        kind, fields = await work.out.get()  # its turn: begun, or refused
    except asyncio.CancelledError:
        work.cancel.set()
        raise
    if kind == "error":
        raise fields["error"]
    if request.stream:
        return StreamingResponse(_events(work, fields["prompt_tokens"]),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})
    try:
        text, end = await _collect(work)
    finally:
        work.cancel.set()
    return _whole(work, text, end)


async def _collect(work: Work) -> tuple[str, dict[str, Any]]:
    pieces = []
    while True:
        kind, fields = await work.out.get()
        if kind == "text":
            pieces.append(fields["text"])
        elif kind == "end":
            return "".join(pieces), fields
        else:
            raise fields["error"]


def _whole(work: Work, text: str, end: dict[str, Any]) -> dict[str, Any]:
    rid = protocol.new_id("chatcmpl" if work.endpoint == "chat" else "cmpl")
    counts = protocol.usage(end["prompt_tokens"], end["completion_tokens"])
    model = work.request.model
    if work.endpoint == "completion":
        return protocol.completion_response(rid, model, text, end["finish"], counts)
    message, called = protocol.chat_message(text, bool(work.request.tools))
    return protocol.chat_response(rid, model, message, "tool_calls" if called
                                  else end["finish"], counts)


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


async def _events(work: Work, prompt_tokens: int) -> AsyncIterator[bytes]:
    """The reply as OpenAI's stream: a chunk per piece, the finish, usage if asked, [DONE].
    With tools offered the reply is sent whole at its end, as the calls it makes."""
    request, chat = work.request, work.endpoint == "chat"
    rid = protocol.new_id("chatcmpl" if chat else "cmpl")
    buffered = chat and bool(request.tools)
    pieces: list[str] = []
    try:
        if chat:
            yield _sse(protocol.chat_chunk(rid, request.model, {"role": "assistant",
                                                                 "content": ""}))
        while True:
            kind, fields = await work.out.get()
            if kind == "error":  # after the headers: said in the stream, as OpenAI does
                yield _sse(fields["error"].body())
                break
            if kind == "text":
                pieces.append(fields["text"])
                if not buffered:
                    yield _sse(protocol.chat_chunk(rid, request.model,
                                                   {"content": fields["text"]}) if chat
                               else protocol.completion_response(rid, request.model,
                                                                 fields["text"], None))
                continue
            finish = fields["finish"]
            if buffered:
                message, called = protocol.chat_message("".join(pieces), True)
                message.pop("role")
                finish = "tool_calls" if called else finish
                if called:
                    message["tool_calls"] = [{"index": i, **c}
                                             for i, c in enumerate(message["tool_calls"])]
                yield _sse(protocol.chat_chunk(rid, request.model, message))
            yield _sse(protocol.chat_chunk(rid, request.model, {}, finish) if chat
                       else protocol.completion_response(rid, request.model, "", finish))
            if request.include_usage:
                counts = protocol.usage(prompt_tokens, fields["completion_tokens"])
                yield _sse(protocol.chat_chunk(rid, request.model, {}, counts=counts) if chat
                           else {**protocol.completion_response(rid, request.model, "", None),
                                 "choices": [], "usage": counts})
            break
        yield b"data: [DONE]\n\n"
    finally:
        work.cancel.set()  # a client that went away stops the generation at its next token
