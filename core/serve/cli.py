"""`peft-studio serve RUN [RUN ...]`: start serving, say where, and stop on Ctrl-C; with
--status, what is serving now; with --stop, end it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from core.jobs.job import follow
from core.jobs.runs import FAILED, run_status
from core.schema.jobs import SERVING
from core.schema.setting import SettingsError, add_flags
from core.serve import job as serving


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: use 1 to 65535 (0: any "
                                         "free port)")
    return int(text)


def add_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="serve runs to other programs over an OpenAI-compatible API",
        description="Serve finished runs at http://HOST:PORT/v1 (GET /v1/models, POST "
        "/v1/chat/completions, POST /v1/completions), each under its run name, answering "
        "as the Chat tab does. Ctrl-C stops it.")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run names (folders under saves/) "
                   "or paths; runs of one base share its weights")
    p.add_argument("--base", action="store_true",
                   help="also serve the runs' base model, as 'base' and under its name")
    p.add_argument("--model", default="", help="with no RUN: serve this base model "
                   "(default: embedded)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; beyond 127.0.0.1 an --api-key is required")
    p.add_argument("--port", type=_port, default=8000, help="default 8000; 0: any free port")
    p.add_argument("--api-key", metavar="KEY", default=os.environ.get(serving.KEY_ENV),
                   help="require 'Authorization: Bearer KEY' (or set "
                   f"{serving.KEY_ENV})")
    p.add_argument("--engine", choices=serving.ENGINES, default="studio",
                   help="what answers: studio (the Chat tab's engine; default)")
    p.add_argument("--allowed-host", action="append", metavar="NAME", default=[],
                   help="also answer requests for this host name (loopback names and IP "
                   "addresses always are)")
    p.add_argument("--allowed-origin", action="append", metavar="URL", default=[],
                   help="let pages of this origin call the API from a browser")
    add_flags(p, SERVING.values())
    p.add_argument("--detach", action="store_true", help="start and return at once")
    p.add_argument("--status", action="store_true", help="list what is serving and exit")
    p.add_argument("--stop", nargs="?", const="all", metavar="JOB",
                   help="stop serving (every serving job, or the one named) and exit")
    p.set_defaults(func=_main)


def describe(event: dict[str, Any]) -> str | None:
    kind = event["type"]
    if kind == "ready":
        key = "API key required" if event.get("key") else "no API key"
        return (f"serving {', '.join(event['models'])} at {event['url']} (engine: "
                f"{event['engine']}; {key}); Ctrl-C or `peft-studio serve --stop` stops it")
    if kind == "progress":
        return event["message"]
    if kind == "request":
        rate = event.get("tokens_per_second")
        return (f"{event['code']} {event['endpoint']} {event['model']}: "
                f"{event.get('prompt_tokens', 0)} + {event.get('completion_tokens', 0)} tokens"
                + (f", {rate} tokens/s" if rate else "")
                + (f" (a batch of {event['batch']})" if event.get("batch", 1) > 1 else "")
                + (f": {event['error']}" if event.get("error") else ""))
    if kind == "end":
        return f"end: {event['status']} {event.get('note') or event.get('error') or ''}"
    return None


def _status() -> int:
    jobs = serving.running()
    if not jobs:
        print("nothing is serving")
    for job in jobs:
        ready = serving.ready_event(job)
        where = (f"{ready['url']}: {', '.join(ready['models'])}" if ready
                 else "starting (loading models)")
        print(f"{job.name}  {where}")
    return 0


def _stop(name: str) -> int:
    jobs = serving.running()
    chosen = jobs if name == "all" else [j for j in jobs if j.name == name]
    if not chosen:
        print("nothing is serving" if name == "all" else f"{name} is not serving")
        return 1 if name != "all" else 0
    for job in chosen:
        print(f"{job.name}: {serving.stop(job)}")
    return 0


def _main(args: argparse.Namespace) -> int:
    if args.status:
        return _status()
    if args.stop:
        return _stop(args.stop)
    try:
        spec = serving.ServeSpec(
            runs=args.runs, base=args.base, model=args.model, host=args.host, port=args.port,
            engine=args.engine, allowed_hosts=args.allowed_host,
            allowed_origins=args.allowed_origin, queue_size=args.queue_size,
            max_request_mb=args.max_request_mb, max_batch=args.max_batch)
        job = serving.start(spec, args.api_key or None)
    except (ValueError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving job: {job}", flush=True)
    if args.detach:
        return 0
    status = follow(job, describe, abort_timeout=20)
    if status == FAILED:
        print(f"failed: {run_status(job)[1].get('error')}\n(full log: "
              f"{job / 'log.txt'})", file=sys.stderr)
        return 1
    return 0
