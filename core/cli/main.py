"""`peft-studio`: the same engine as the web UI, from a terminal.

Every run setting is a flag named after its field (see core.schema.config); `--config` reads a
YAML file first and flags override it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from core.chat import engine as chat
from core.cli import data as data_cli
from core.cli import queue as queue_cli
from core.data.registry import dataset_problems
from core.evaluate import job as evaluate
from core.export import job as export
from core.jobs import runner
from core.jobs.device import BusyError
from core.jobs.job import follow
from core.jobs.process import wait_for_exit
from core.jobs.runs import DAMAGED, FAILED, RUNNING, list_runs, resolve_run, run_status
from core.paths import saves_dir
from core.schema.config import ConfigError, add_arguments, config_from_args
from core.serve import cli as serve


def _train(args: argparse.Namespace) -> int:
    if args.resume:
        return _resume(args)
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    missing = dataset_problems(cfg.dataset)
    if missing:
        print(f"error: {ConfigError(missing)}", file=sys.stderr)
        return 2
    # Every row checked before a run folder exists: a bad file leaves no failed run.
    bad = data_cli.check_before_training(cfg.dataset, cfg.stage)
    if bad:
        print("\n".join(["error: a dataset cannot train as it is", *bad]), file=sys.stderr)
        return 2
    if args.queue:
        return queue_cli.queue_run(cfg)
    try:
        run_dir = runner.start(cfg)
    except BusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ConfigError as exc:  # what this machine lacks (GPUs, DeepSpeed)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run: {run_dir}", flush=True)
    if args.detach:
        return 0
    return _follow(run_dir, show_log=args.verbose)


def _resume(args: argparse.Namespace) -> int:
    from core.jobs.resume import resume
    from core.schema.config import given_settings

    try:
        run_dir = resolve_run(args.resume)
        event = resume(run_dir, given_settings(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in event["changed"].items())
    print(f"run: {run_dir} (resumed from step {event['step']}"
          f"{'; changed: ' + changed if changed else ''})", flush=True)
    if args.detach:
        return 0
    return _follow(run_dir, show_log=args.verbose)


def _follow(run_dir: Path, show_log: bool = False) -> int:
    """Print the run's events as they come; Ctrl-C aborts it (it still saves). Returns
    once every process of the run has exited, not at its end event: a script that runs
    the next command at once must find the device free."""
    follow(run_dir, _describe, show_log)
    if not wait_for_exit(run_dir):
        print(f"warning: processes of {run_dir.name} still run; see "
              f"{run_dir / 'log.txt'}", file=sys.stderr)
    status, end = run_status(run_dir)
    if status == FAILED:
        print(f"failed: {end.get('error')}\n(full log: {run_dir / 'log.txt'})", file=sys.stderr)
        return 1
    return 0


def _describe(e: dict) -> str:
    kind = e["type"]
    if kind == "start" and e.get("node_rank"):
        return (f"start: machine {e['node_rank']} of {e['nodes']} joined; "
                f"{e['processes']} processes in all")
    if kind == "start":
        spread = (f" in {e['processes']} processes" if e.get("processes", 1) > 1 else "")
        why = f": {e['precision_reason']}" if e.get("precision_reason") else ""
        return (f"start: {e.get('method')} on {e.get('device')} ({e.get('precision')}{why}), "
                f"{e.get('trainable_params') or 0:,} of {e.get('total_params') or 0:,} parameters "
                f"trainable, {e.get('total_steps')} steps, {e.get('train_samples')} samples"
                f"{spread}")
    if kind == "step":
        eta = f", eta {e['eta']:.0f}s" if e.get("eta") is not None else ""
        loss = f"loss {e['loss']:.4f}, " if e.get("loss") is not None else ""
        return (f"step {e['step']}/{e.get('total_steps', '?')}: {loss}"
                f"{e.get('tokens_per_second') or 0:.0f} tok/s{eta}")
    if kind == "eval":
        return f"eval at step {e['step']}: loss {e['eval_loss']:.4f}"
    if kind == "early_stop":
        return (f"stopped early at step {e['step']}, best at step {e.get('best_step')} "
                f"(eval loss {e['best_eval_loss']:.4f})")
    if kind == "checkpoint":
        return f"checkpoint: {e['path']}"
    if kind == "resume":
        return f"resume: from step {e['step']} ({e.get('checkpoint')})"
    if kind == "end":
        detail = e.get("output_dir") or e.get("error") or e.get("note") or ""
        return f"end: {e['status']} {detail}".rstrip()
    return f"{kind}: {e}"


def _runs(args: argparse.Namespace) -> int:
    runs = list_runs()
    if not runs:
        print(f"no runs in {saves_dir()}")
        return 0
    print(f"{'run':32} {'status':8} {'method':8} {'step':>11} {'loss':>8}  dataset")
    for r in runs:
        loss = f"{r.final_loss:.4f}" if r.final_loss is not None else "-"
        steps = f"{r.step}/{r.total_steps}"
        print(f"{r.name:32} {r.status:8} {r.method:8} {steps:>11} {loss:>8}  "
              f"{','.join(r.dataset)}")
        if r.status == DAMAGED:
            print(f"  {r.error}; the other runs are unaffected (move or delete this folder)")
    return 0


def _abort(args: argparse.Namespace) -> int:
    from core.experiments import compare, sweep

    # A comparison or a sweep stops like a run: its runs not yet ended are cancelled.
    found = [d / args.run for d in (compare.comparisons_dir(), sweep.sweeps_dir())
             if (d / args.run / sweep.SPEC_FILE).is_file()]
    try:
        run_dir = found[0] if found else resolve_run(args.run)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if run_status(run_dir)[0] != RUNNING:
        print(f"{run_dir.name} is not running")
        return 1
    print(f"{run_dir.name}: {runner.abort(run_dir, timeout=args.timeout)}")
    return 0


def _webui(args: argparse.Namespace) -> int:
    # Checked before Gradio is imported: a refused start binds nothing and is instant.
    from webui import guard

    try:
        logins = guard.logins(args.auth_file)
        guard.check_serving(args.host, logins)
    except guard.AccessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from webui.app import launch

    launch(host=args.host, port=args.port, share=False, logins=logins,
           allow_remote_code=args.allow_remote_code, allow_multi_node=args.allow_multi_node,
           allowed_hosts=tuple(args.allowed_host or ()),
           allowed_origins=tuple(args.allowed_origin or ()),
           models_dirs=tuple(Path(d) for d in args.models_dir or ()))
    return 0


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: use 1 to 65535")
    return int(text)


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad flag gets two lines (the problem, where help is), not
    the usage of a hundred flags, in which the one line that matters is lost."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="peft-studio", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (flags named after every run setting)")
    add_arguments(p)
    p.add_argument("--detach", action="store_true", help="start and return at once")
    p.add_argument("--queue", action="store_true", help="wait in the queue for its turn "
                   "instead of starting now (see peft-studio queue list)")
    p.add_argument("--verbose", action="store_true", help="also print the trainer's log")
    p.add_argument("--resume", metavar="RUN",
                   help="go on with a stopped run (its folder under saves/, or a path) from "
                   "its newest checkpoint; flags may change only how long it runs and how it "
                   "reports")
    p.add_argument("--print-config", action="store_true",
                   help="print the resulting YAML and exit without training")
    p.set_defaults(func=_train)

    p = sub.add_parser("runs", help="list runs in saves/ with their status")
    p.set_defaults(func=_runs)

    p = sub.add_parser("abort", help="stop a run at its next step; it saves what it has "
                       "(a comparison's or a sweep's name stops it)")
    p.add_argument("run", help="run name (folder under saves/) or path, or a comparison")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait before killing it")
    p.set_defaults(func=_abort)

    p = sub.add_parser("webui", help="open the browser app")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=7860)
    p.add_argument("--auth-file", metavar="FILE",
                   help="logins, one user:password a line (or set PEFT_STUDIO_AUTH="
                   "user:password); required to serve beyond 127.0.0.1")
    p.add_argument("--allow-remote-code", action="store_true",
                   help="let the browser switch on trust_remote_code (runs Python code "
                   "shipped with a hub model)")
    p.add_argument("--allow-multi-node", action="store_true",
                   help="let the browser start runs over several machines (the server then "
                   "connects to the machine-0 address a page gives)")
    p.add_argument("--models-dir", action="append", metavar="DIR",
                   help="let the browser use model folders (and .gguf files) under DIR; "
                   "repeatable. Without it a page may name only 'embedded' or a hub id")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="also answer requests for this host name (e.g. the machine's name "
                   "on the network); loopback names and IP addresses are always answered")
    p.add_argument("--allowed-origin", action="append", metavar="URL",
                   help="also accept requests from pages of this origin, e.g. "
                   "https://proxy.example:8443 (a reverse proxy with its own name)")
    p.set_defaults(func=_webui)

    for job in (chat, evaluate, export, serve):  # their subcommands live beside the job
        job.add_command(sub)
    data_cli.add_command(sub)
    queue_cli.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)

