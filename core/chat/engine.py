"""Chat with a base model or a finished run: the engine, its out-of-process client, and
`peft-studio chat`.

`Engine` holds models and streams replies; it runs wherever the weights should live. The
web UI never holds weights itself: `ChatClient` starts `python -m core.chat.worker`, an
Engine behind JSON lines on stdin/stdout, so unloading is ending that process and every
byte it held goes back to the system (freeing CUDA and allocator caches from inside a
long-lived process is never complete). The terminal command needs no such care and runs
an Engine in its own process.

Which run and checkpoint to load is found by core/jobs/runs.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from core.chat.limits import PromptTooLong, Stopped, context_length, room_for_reply, stoppable
from core.jobs.runs import Target, base_target, resolve_run, run_target
from core.paths import ROOT, cache_dir, child_env
from core.schema.jobs import GENERATION
from core.schema.setting import add_flags, check_fields


@dataclass
class GenerationSettings:
    """Defaults and bounds from core.schema.jobs.GENERATION; building one with a value out of
    bounds raises SettingsError (a ValueError) naming it."""

    max_new_tokens: int = GENERATION["max_new_tokens"].default
    do_sample: bool = True
    temperature: float = GENERATION["temperature"].default
    top_p: float = GENERATION["top_p"].default
    top_k: int = GENERATION["top_k"].default
    repetition_penalty: float = GENERATION["repetition_penalty"].default

    def __post_init__(self) -> None:
        check_fields(self, GENERATION.values())

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(self.max_new_tokens),
            "repetition_penalty": float(self.repetition_penalty),
            "do_sample": bool(self.do_sample and self.temperature > 0),
        }
        if kwargs["do_sample"]:
            kwargs.update(temperature=float(self.temperature), top_p=float(self.top_p),
                          top_k=int(self.top_k))
        else:
            # Unset, not left at the model's sampling defaults: transformers warns about
            # (and some versions reject) sampling flags on a greedy call.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


def with_system(messages: list[dict[str, str]], system: str) -> list[dict[str, str]]:
    system = (system or "").strip()
    rest = [m for m in messages if m["role"] != "system"]
    return ([{"role": "system", "content": system}] if system else []) + rest


# -- the engine (where the weights live) -------------------------------------------------
THINKING_OFF = ("the reply is asked for after the template's empty reasoning block (thinking "
                "off), as this run's replies were trained: its data had no reasoning")


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    # The base answers through a loaded peft model with its adapter switched off, so
    # compare mode holds the base weights once.
    adapter_off: bool = False
    seconds: float = 0.0
    base: str = ""
    # A LoRA-family adapter on an unquantized base answers with its update merged into
    # the base weights: one matmul per layer instead of three.
    merge: bool = False
    # Several LoRA runs of one base share its weights as named adapters of one peft model
    # (switched per reply, never merged: merging and unmerging in turn would drift the
    # base weights by rounding). "" for a model of its own.
    adapter: str = ""
    shareable: bool = False
    # How the run's replies were rendered in training, so that its prompts are rendered
    # the same (core.methods.result.chat_settings): its system prompt choice and the
    # chat template switches. A base model: the template's defaults.
    system_prompt: str = "default"
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def renderer(self) -> Any:
        """The tokenizer rendering prompts as the run was trained (core.data.system)."""
        from core.data.system import rendering

        return rendering(self.tokenizer, self.system_prompt)

    @contextmanager
    def active(self) -> Iterator[Any]:
        """The module to call: the model, or its base with the adapter switched off.
        The base module is called directly because a prompt-learning PeftModel would
        still add its virtual tokens in its own generate()."""
        if self.adapter_off:
            # peft unmerges a merged adapter before answering without it.
            with self.model.disable_adapter():
                yield self.model.get_base_model()
        else:
            if self.adapter and self.model.active_adapter != self.adapter:
                self.model.set_adapter(self.adapter)
            if self.merge and not _merged(self.model):
                self.model.merge_adapter()
            yield self.model


def _merged(model: Any) -> bool:
    return any(getattr(m, "merged", False) for m in model.modules()
               if hasattr(m, "merged_adapters"))


def _mergeable(trained: str | Path) -> bool:
    from core.methods import METHODS
    from core.methods.result import read_manifest

    manifest = read_manifest(trained)
    spec = METHODS.get(manifest.get("method", ""))
    settings = manifest.get("settings", {})
    return bool(spec and spec.mergeable and settings.get("quantization", "none") == "none")


def _shareable(trained: str | Path) -> bool:
    """Whether this run's adapter can sit beside other LoRA adapters on one base: a plain
    LoRA on an unquantized base (PiSSA-style starts rewrite the base weights themselves)."""
    try:
        config = json.loads((Path(trained) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return False
    return (_mergeable(trained) and config.get("peft_type") == "LORA"
            and config.get("init_lora_weights") in (True, False, "gaussian"))


@dataclass
class Reply:
    text: str = ""
    tokens: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0
    stopped: bool = False
    notes: list[str] = field(default_factory=list)  # how the prompt was rendered


class Engine:
    def __init__(self) -> None:
        self.loaded: dict[str, _Loaded] = {}

    def load(self, target: Target) -> dict[str, Any]:
        if target.key not in self.loaded:
            self.loaded[target.key] = self._load(target)
        entry = self.loaded[target.key]
        from core.methods.common import count_parameters

        _, total = count_parameters(entry.model)
        return {"key": target.key, "label": target.label, "seconds": round(entry.seconds, 2),
                "parameters": total, "device": str(entry.model.device),
                "shared_base": entry.adapter_off}

    def entry(self, target: Target) -> _Loaded:
        self.load(target)
        return self.loaded[target.key]

    def unload(self, target: Target) -> None:
        """Forget a model (its memory is freed once nothing else refers to it)."""
        self.loaded.pop(target.key, None)
        import gc

        gc.collect()

    def _load(self, target: Target) -> _Loaded:
        from core import models
        from core.methods.result import chat_settings, load_trained

        t0 = time.time()
        if target.trained:
            shared = self._beside(target)
            if shared is not None:
                shared.system_prompt, shared.template_kwargs = chat_settings(target.trained)
                return shared
            # Quantized as in training: a QLoRA adapter answers as it was trained, in the
            # memory it was trained in.
            model, tokenizer = load_trained(target.trained, quantized=True)
            model = _to_gpu(model).eval()
            merge = hasattr(model, "merge_adapter") and _mergeable(target.trained)
            system, switches = chat_settings(target.trained)
            return _Loaded(model, tokenizer, seconds=time.time() - t0, base=target.model,
                           merge=merge, shareable=_shareable(target.trained),
                           system_prompt=system, template_kwargs=switches)
        for other in self.loaded.values():
            if other.base == target.model and not other.adapter_off \
                    and hasattr(other.model, "disable_adapter"):
                return _Loaded(other.model, other.tokenizer, adapter_off=True, base=target.model)
        model = _to_gpu(models.load_model(target.model)).eval()
        return _Loaded(model, models.load_tokenizer(target.model), seconds=time.time() - t0,
                       base=target.model)

    def _beside(self, target: Target) -> _Loaded | None:
        """This run's adapter added to a loaded peft model of the same base, when both
        can share it; None to load it on a base of its own."""
        from core.methods.result import trained_tokenizer

        if not _shareable(target.trained):
            return None
        host = next((e for e in self.loaded.values() if e.shareable and not e.adapter_off
                     and e.base == target.model), None)
        if host is None:
            return None
        t0 = time.time()
        if not host.adapter:  # the first run on this base becomes one adapter of several
            if _merged(host.model):
                host.model.unmerge_adapter()
            for entry in self.loaded.values():
                if entry.model is host.model and not entry.adapter_off:
                    entry.merge, entry.adapter = False, host.model.active_adapter
        name = f"run{len(host.model.peft_config)}"
        host.model.load_adapter(target.trained, adapter_name=name)
        host.model.eval()
        return _Loaded(host.model, trained_tokenizer(target.trained),
                       seconds=time.time() - t0, base=target.model, adapter=name,
                       shareable=True)

    def render(self, target: Target, messages: list[dict[str, Any]],
               tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text a chat becomes: the model's own template, as in training (tools
        folded into plain turns where the template does not render them, a system prompt
        into the first user turn where it takes no system role, as in training)."""
        return self.prompt(target, messages, tools)[0]

    def prompt(self, target: Target, messages: list[dict[str, Any]],
               tools: list[dict[str, Any]] | None = None) -> tuple[str, list[str]]:
        """(`render`'s text, what was folded to render it: core.data.roles' notes)."""
        from core.data.encode import as_rendered, chat_template

        entry = self.entry(target)
        tok = entry.renderer
        messages, tools, notes = as_rendered(tok, messages, tools)
        extra = {"tools": tools, **entry.template_kwargs} if tools else \
            dict(entry.template_kwargs)
        if entry.template_kwargs.get("enable_thinking") is False:
            notes = [*notes, THINKING_OFF]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                       chat_template=chat_template(tok), **extra), notes

    def stream(self, target: Target, messages: list[dict[str, Any]],
               settings: GenerationSettings, stop: threading.Event | None = None,
               reply: Reply | None = None,
               tools: list[dict[str, Any]] | None = None) -> Iterator[str]:
        """Yield the reply as it is generated; `reply` (if given) gets the totals."""
        text, notes = self.prompt(target, messages, tools)
        if reply is not None:
            reply.notes = notes
        yield from self.stream_text(target, text, settings, stop, reply)

    def stream_text(self, target: Target, text: str, settings: GenerationSettings,
                    stop: threading.Event | None = None,
                    reply: Reply | None = None) -> Iterator[str]:
        """`stream` for a prompt already rendered (or a plain completion's text)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        from core.methods.result import generate_extras

        entry = self.entry(target)
        tok, model = entry.tokenizer, entry.model
        # The template already has its special tokens; training encoded it the same way.
        inputs = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        room = room_for_reply(int(inputs["input_ids"].shape[1]), context_length(model, tok),
                              int(settings.max_new_tokens))  # raises PromptTooLong
        # Not cleared here: the worker clears it when the request arrives, so a stop sent
        # while the model was still loading is not lost.
        stop = stop or threading.Event()
        decoding = threading.Event()  # set at the first token: the prefill is over

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                decoding.set()
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        counted: dict[str, Any] = {}
        kwargs = {**inputs, **settings.generate_kwargs(), "max_new_tokens": room,
                  "streamer": streamer,
                  "stopping_criteria": StoppingCriteriaList([_Stop()]),
                  "pad_token_id": tok.pad_token_id or tok.eos_token_id}

        def run() -> None:
            try:
                with entry.active() as module, torch.inference_mode(), stoppable(
                        module, lambda: stop.is_set() and not decoding.is_set()):
                    out = module.generate(**kwargs, **generate_extras(module))
                counted["tokens"] = int(out.shape[1] - inputs["input_ids"].shape[1])
            except Stopped:  # during the prefill: no token yet
                streamer.on_finalized_text("", stream_end=True)
            except Exception as exc:  # reaches the caller, not a silent thread death
                counted["error"] = exc
                streamer.on_finalized_text("", stream_end=True)

        t0 = time.time()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        pieces = []
        for piece in streamer:
            if piece:
                pieces.append(piece)
                yield piece
        thread.join()
        if "error" in counted:
            raise counted["error"]
        if reply is not None:
            reply.text, reply.tokens = "".join(pieces), counted.get("tokens", 0)
            reply.prompt_tokens = int(inputs["input_ids"].shape[1])
            reply.seconds, reply.stopped = time.time() - t0, stop.is_set()


def _to_gpu(model: Any) -> Any:
    """Models load on the CPU; answer on the GPU when there is one (a quantized model
    was already placed there by bitsandbytes)."""
    import torch

    if torch.cuda.is_available() and model.device.type == "cpu" \
            and not getattr(model, "is_quantized", False):
        return model.to("cuda")
    return model


# -- the client (in the UI process) ------------------------------------------------------
class ChatError(RuntimeError):
    pass


class ChatClient:
    """Talks to a chat worker subprocess; safe to share between UI threads (one request
    at a time). The worker starts on first use and loads each model on first use."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        # One log per UI process: several apps (or test sessions) may run side by side.
        self.log_path = cache_dir() / f"chat-worker-{os.getpid()}.log"
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._ids = 0
        self.loaded: dict[str, dict[str, Any]] = {}

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive else None

    def _start(self) -> None:
        if self.alive:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = child_env()
        with open(self.log_path, "wb") as log:
            # stderr to a file, never a pipe: nobody drains it between replies.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "core.chat.worker"], cwd=str(ROOT), env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                text=True, encoding="utf-8", bufsize=1,
            )
        self.loaded = {}

    def _send(self, request: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        with self._write_lock:
            try:
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise ChatError(self._died()) from exc

    def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise ChatError(self._died())
        return json.loads(line)

    def _died(self) -> str:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        try:
            tail = self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            tail = ""
        self.proc = None
        return f"the chat worker stopped unexpectedly; the end of its log:\n{tail}"

    def _request(self, op: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Send one request and yield its replies up to and including the last one. A
        caller that stops early (a closed browser tab) still leaves the stream in step:
        generation is told to stop and the rest of the reply is read and dropped."""
        with self._lock:
            self._start()
            self._ids += 1
            self._send({"id": self._ids, "op": op, **fields})
            finished = False
            try:
                while True:
                    msg = self._read()
                    finished = bool(msg.get("last"))
                    if msg["type"] == "error":
                        raise ChatError(msg["message"])
                    yield msg
                    if finished:
                        return
            finally:
                if not finished and self.alive:
                    self._send({"op": "stop"})
                    while not self._read().get("last"):
                        pass

    def load(self, target: Target) -> dict[str, Any]:
        return list(self.load_events(target))[-1]["info"]

    def load_events(self, target: Target) -> Iterator[dict[str, Any]]:
        """Replies of one load: {"type": "waiting", "holder"} while another job has the
        device, {"type": "loading"}, then {"type": "loaded", "info", "last": true}."""
        for msg in self._request("load", target=asdict(target)):
            if msg["type"] == "loaded":
                self.loaded[target.key] = msg["info"]
            yield msg

    def events(self, target: Target, messages: list[dict[str, str]],
               settings: GenerationSettings,
               tools: list[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
        """Replies of one generation: {"type": "loading"} and {"type": "loaded", "info"} if
        the model was not loaded yet, {"type": "chunk", "text"} per piece, then
        {"type": "done", "text", "tokens", "seconds", "stopped", "last": true}. `tools`:
        definitions the model is offered (rendered as in training, core.data.tools)."""
        for msg in self._request("generate", target=asdict(target), messages=messages,
                                 settings=asdict(settings), tools=tools or None):
            if msg["type"] == "loaded":
                self.loaded[target.key] = msg["info"]
            yield msg

    def stream(self, target: Target, messages: list[dict[str, str]],
               settings: GenerationSettings) -> Iterator[str]:
        for msg in self.events(target, messages, settings):
            if msg["type"] == "chunk":
                yield msg["text"]

    def stop(self) -> None:
        """Ask the reply being generated to end at the next token."""
        if self.alive:
            self._send({"op": "stop"})

    def unload(self, timeout: float = 10.0) -> None:
        """End the worker: the only way to give all of a model's memory back."""
        proc, self.proc, self.loaded = self.proc, None, {}
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.stdin.close()  # the worker exits at end of input
            except OSError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:  # busy generating: do not wait for it
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except (OSError, AttributeError):
                pass


# -- `peft-studio chat` ------------------------------------------------------------------
def add_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "chat", help="talk to a finished run (or a base model) in the terminal",
        description="Talk to a run's fine-tuned model. With --prompt, answer once and exit; "
        "otherwise read prompts until an empty line or Ctrl-D (/reset clears the history).")
    p.add_argument("run", nargs="?", help="run name (folder under saves/) or path; "
                   "leave out to talk to --model")
    p.add_argument("--checkpoint", default="final", help="'final' or step-N (default final)")
    p.add_argument("--model", default="embedded",
                   help="base model when no run is given (default: embedded)")
    p.add_argument("--base-only", action="store_true",
                   help="talk to the run's base model, without its training")
    p.add_argument("--prompt", help="answer this one prompt and exit")
    p.add_argument("--system", default="", help="system prompt (default: the run's own "
                   "system_prompt setting; for a base model the template's)")
    add_flags(p, GENERATION.values())
    p.add_argument("--greedy", action="store_true",
                   help="no sampling: the same prompt gives the same reply")
    p.set_defaults(func=_main)


def _first_line(exc: Exception) -> str:
    if isinstance(exc, TemplateError):
        return f"the model's chat template cannot render this conversation: {exc}"
    return str(exc)


def _check_model(model: str) -> None:
    """A model written as a path must exist; a hub id (org/name) is left to the loader."""
    looks_like_path = model.startswith(("/", "./", "../", "~")) or model.endswith(".gguf")
    if looks_like_path and not Path(model).expanduser().exists():
        raise ValueError(f"no model at {model}: give a local model folder or .gguf file, "
                         "'embedded', or a hub id such as Qwen/Qwen2.5-0.5B-Instruct")


def _main(args: argparse.Namespace) -> int:
    try:
        if args.run:
            run_dir = resolve_run(args.run)
            target = run_target(run_dir, args.checkpoint)
            if args.base_only:
                target = base_target(target.model)
        else:
            target = base_target(args.model)
        settings = GenerationSettings(
            max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            repetition_penalty=args.repetition_penalty)
        _check_model(target.model)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    engine = Engine()
    print(f"loading {target.label} ...", file=sys.stderr, flush=True)
    try:
        engine.load(target)
    except Exception as exc:  # a model that will not load is the user's input: say why
        print(f"error: cannot load {target.label}: {type(exc).__name__}: {exc}"
              .splitlines()[0], file=sys.stderr)
        return 1
    history: list[dict[str, str]] = []
    interactive = args.prompt is None
    while True:
        if interactive:
            try:
                prompt = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return 0
            if not prompt:
                return 0
            if prompt == "/reset":
                history = []
                continue
        else:
            prompt = args.prompt
        history.append({"role": "user", "content": prompt})
        if interactive:
            print("model> ", end="", flush=True)
        pieces: list[str] = []
        stop, reply = threading.Event(), Reply()
        try:
            for piece in engine.stream(target, with_system(history, args.system), settings,
                                       stop=stop, reply=reply):
                pieces.append(piece)
                print(piece, end="", flush=True)
        except KeyboardInterrupt:  # Ctrl-C ends this reply, not the session
            stop.set()
        except (PromptTooLong, TemplateError) as exc:
            print(f"\nerror: {_first_line(exc)}" + (" (/reset clears it)" if interactive
                                                    else ""), file=sys.stderr)
            history.pop()
            if not interactive:
                return 2
            continue
        print(flush=True)
        for note in reply.notes if len(history) == 1 else ():  # said once, at the start
            print(f"note: {note}", file=sys.stderr, flush=True)
        history.append({"role": "assistant", "content": "".join(pieces)})
        if not interactive:
            return 0
