"""Serving as a job: `python -m core.serve JOB/serve.yaml`, a folder under saves/serving/,
started, followed and stopped like an evaluation or an export (core/jobs/), holding the
device for as long as it serves.

Its events: progress while models load, `ready` (url, engine, models) once it answers,
one `request` per request answered (tokens, seconds, tokens/s, the size of the batch it
was answered in: the Serve panel's log), and the end when it is stopped. The API key
never touches the disk: the job gets it in its environment (PEFT_STUDIO_API_KEY).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from core.fsutil import atomic_write_text, unique_dir
from core.jobs import runner
from core.jobs.events import EventWriter, read_events
from core.jobs.process import ABORT_FILE, spawn
from core.jobs.runs import DONE, RUNNING, Target, base_target, resolve_run, run_status, run_target
from core.paths import saves_dir
from core.schema.jobs import SERVING
from core.schema.setting import check_fields
from core.serve.hosts import WILDCARDS, is_loopback

SPEC_FILE = "serve.yaml"
KEY_ENV = "PEFT_STUDIO_API_KEY"
MIN_KEY = 8
ENGINES = ("studio", "vllm", "llama.cpp")


@dataclass
class ServeSpec:
    runs: list[str] = field(default_factory=list)  # run folders
    base: bool = False  # also serve the runs' base model
    model: str = ""  # a base model served alone, when no run is given
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the ready event says which)
    engine: str = "studio"
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    queue_size: int = SERVING["queue_size"].default
    max_request_mb: float = SERVING["max_request_mb"].default
    max_batch: int = SERVING["max_batch"].default

    def __post_init__(self) -> None:
        check_fields(self, SERVING.values())


def serving_dir() -> Path:
    return saves_dir() / "serving"


def base_name(model: str) -> str:
    return Path(model).name if model.startswith(("/", ".", "~")) else model


def served_models(spec: ServeSpec) -> dict[str, Target]:
    """Model id -> what answers it: each run under its folder's name, and with `base` (or
    no run) its base model as "base" and under its own name. ValueError names a run that
    has no result."""
    models: dict[str, Target] = {}
    for run in spec.runs:
        run_dir = resolve_run(run)
        if run_dir.name in models:
            raise ValueError(f"run {run_dir.name!r} is named twice")
        models[run_dir.name] = run_target(run_dir)
    bases = list(dict.fromkeys(t.model for t in models.values()))
    if not spec.runs:
        bases = [spec.model or "embedded"]
    if spec.base or not spec.runs:
        for model in bases:
            models.setdefault(base_name(model), base_target(model))
        if len(bases) == 1:
            models.setdefault("base", base_target(bases[0]))
    return models


def access_problem(host: str, key: str | None) -> str | None:
    """Why the endpoint must not start on `host` with this key, or None."""
    if is_loopback(host):
        return None
    if not key:
        return (f"refusing to serve on {host} without an API key: anyone who can reach it "
                f"could use the models; pass --api-key KEY (or set {KEY_ENV}), or serve "
                "on 127.0.0.1")
    if len(key) < MIN_KEY:
        return f"the API key is shorter than {MIN_KEY} characters; choose a longer one"
    return None


def engine_problem(engine: str) -> str | None:
    """Why `engine` cannot serve here, or None. Only the studio engine answers through the
    Chat tab's code path; the others are named so that asking for one says what it takes."""
    import importlib.util
    import shutil

    if engine == "studio":
        return None
    if engine == "vllm":
        if importlib.util.find_spec("vllm") is None:
            return ("vLLM is not installed (it needs a CUDA GPU: pip install vllm); use "
                    "--engine studio")
        return "serving through vLLM is not wired in yet; use --engine studio"
    if engine == "llama.cpp":
        if shutil.which("llama-server") is None:
            return ("llama.cpp's llama-server is not on PATH; export the run as GGUF and run "
                    "llama-server -m FILE.gguf yourself, or use --engine studio")
        return ("serving through llama.cpp is not wired in yet: run llama-server -m "
                "FILE.gguf on the run's GGUF export, or use --engine studio")
    return f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}"


def start(spec: ServeSpec, api_key: str | None = None) -> Path:
    """Start serving in the background; return the job's folder. Refuses (ValueError)
    what could never serve, before any process starts."""
    problem = access_problem(spec.host, api_key) or engine_problem(spec.engine)
    if problem:
        raise ValueError(problem)
    served_models(spec)  # every run named has a result
    job = unique_dir(serving_dir(), f"{datetime.now():%Y%m%d-%H%M%S}")
    atomic_write_text(job / SPEC_FILE, yaml.safe_dump(asdict(spec), sort_keys=False))
    spawn(job, ["-m", "core.serve", str(job / SPEC_FILE)],
                 {KEY_ENV: api_key} if api_key else {KEY_ENV: ""})
    return job


def ready_event(job: Path) -> dict[str, Any] | None:
    return next((e for e in reversed(read_events(job)[0]) if e["type"] == "ready"), None)


def running() -> list[Path]:
    """Serving jobs whose process still serves, newest first."""
    folder = serving_dir()
    if not folder.is_dir():
        return []
    jobs = [p for p in folder.iterdir() if (p / SPEC_FILE).is_file()]
    return sorted((p for p in jobs if run_status(p)[0] == RUNNING),
                  key=lambda p: p.name, reverse=True)


def stop(job: Path, timeout: float = 20.0) -> str:
    """End a serving job: it stops taking requests, ends the one under way, and exits."""
    return runner.abort(job, timeout=timeout)


# -- the job's process -------------------------------------------------------------------
def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the models load: a port in use is said at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port} ({exc.strerror}); is another "
                           "server using that port? choose another with --port") from None
    sock.listen(128)
    return sock


def _url(host: str, port: int) -> str:
    shown = socket.gethostname() if host in WILDCARDS else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/v1"


def _load_all(engine: Any, models: dict[str, Target], events: EventWriter) -> None:
    """Fine-tuned models first: a base then answers through their weights, and runs of
    one base share it (core/chat/engine.py)."""
    order = sorted(dict.fromkeys(models.values()), key=lambda t: t.trained is None)
    for i, target in enumerate(order):
        events.emit("progress", done=i, total=len(order), message=f"loading {target.label}")
        print(f"loading {target.label} ...", flush=True)
        engine.load(target)


def work(spec: ServeSpec, job: Path, events: EventWriter) -> dict[str, Any]:
    import uvicorn

    from core.chat.engine import Engine
    from core.serve.app import Options, Scheduler, build_app

    key = os.environ.get(KEY_ENV) or None
    problem = access_problem(spec.host, key) or engine_problem(spec.engine)
    if problem:
        raise ValueError(problem)
    models = served_models(spec)
    sock = _bind(spec.host, spec.port)
    # Stopped while it loads: ended as an abort is (run_job writes the end event).
    signal.signal(signal.SIGTERM, _interrupt)
    engine = Engine()
    _load_all(engine, models, events)
    answered = {"requests": 0}

    def on_done(record: dict[str, Any]) -> None:
        answered["requests"] += 1
        events.emit("request", **record)
        rate = record.get("tokens_per_second")
        print(f"{record['code']} {record['endpoint']} {record['model']}: "
              f"{record.get('completion_tokens', 0)} tokens"
              + (f", {rate} tokens/s" if rate else "") + f" {record.get('error') or ''}",
              flush=True)

    scheduler = Scheduler(engine, models, spec.queue_size, on_done, spec.max_batch)
    options = Options(spec.host, key, tuple(spec.allowed_hosts), tuple(spec.allowed_origins),
                      spec.queue_size, spec.max_request_mb)
    server = uvicorn.Server(uvicorn.Config(build_app(scheduler, options), log_level="warning",
                                           timeout_graceful_shutdown=3))
    threading.Thread(target=_watch_abort, args=(job, server), daemon=True).start()
    # uvicorn stops on SIGTERM, then raises it again once it has; this handler takes that
    # second one, so the job still writes its end event.
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    port = sock.getsockname()[1]
    # How many copies of weights the models hold: runs of one base share one.
    copies = len({id(entry.model) for entry in engine.loaded.values()})
    events.emit("ready", url=_url(spec.host, port), port=port, engine=spec.engine,
                models=list(models), key=bool(key), copies=copies, max_batch=spec.max_batch)
    print(f"serving {', '.join(models)} at {_url(spec.host, port)} (engine: {spec.engine})",
          flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        scheduler.close()
    return {"status": DONE, "output_dir": None,
            "note": f"stopped after {answered['requests']} requests"}


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _watch_abort(job: Path, server: Any) -> None:
    """Stop serving when the job is aborted by its file (a stop from another process that
    could not signal this one)."""
    import time

    while not server.should_exit:
        if (job / ABORT_FILE).exists():
            server.should_exit = True
        time.sleep(0.5)


def load_spec(path: Path) -> ServeSpec:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return ServeSpec(**data)


def main(argv: list[str] | None = None) -> int:
    from core.jobs.job import run_job

    return run_job(argv, "python -m core.serve JOB/serve.yaml", load_spec, work,
                   device_for=lambda spec: "serving")


if __name__ == "__main__":
    sys.exit(main())
