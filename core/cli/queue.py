"""`peft-studio queue list|cancel|move|clear` and `peft-studio sweep`: the run queue
(core.jobs.queue) and sweeps over it (core.experiments.sweep); `train --queue` lands here
too."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from core.jobs import queue
from core.jobs.runs import DONE, RUNNING, run_status
from core.schema.config import ConfigError, RunConfig, add_arguments, given_settings


def add_command(subparsers: Any) -> None:
    p = subparsers.add_parser("queue", help="the runs waiting their turn: list, cancel, "
                              "reorder")
    sub = p.add_subparsers(dest="queue_command", required=True)
    sub.add_parser("list", help="every entry: id, status, run, what it trains").set_defaults(
        func=_list)
    c = sub.add_parser("cancel", help="take an entry out of the queue (a running one stops "
                       "at its next step and saves)")
    c.add_argument("id", type=int, help="the entry's id (see queue list)")
    c.set_defaults(func=_cancel)
    m = sub.add_parser("move", help="put a waiting entry at another place in the queue")
    m.add_argument("id", type=int, help="the entry's id (see queue list)")
    m.add_argument("--to", type=int, required=True, metavar="N",
                   help="its new place among the waiting entries (1 = next)")
    m.set_defaults(func=_move)
    sub.add_parser("clear", help="forget the entries that ended (their runs stay in "
                   "saves/)").set_defaults(func=_clear)

    s = subparsers.add_parser("sweep", help="queue one run per combination of values of "
                              "some settings, then print one table")
    add_arguments(s)
    s.add_argument("--axis", action="append", required=True, metavar="SETTING=V1,V2",
                   help="a swept setting and its values, e.g. learning_rate=1e-4,3e-4; "
                   "repeat for more settings")
    s.add_argument("--list", dest="as_list", action="store_true",
                   help="pair the n-th values of the axes instead of every combination")
    s.add_argument("--eval-dataset", help="evaluate each run on this registered dataset")
    s.add_argument("--eval-samples", type=int, default=30, help="evaluation samples")
    s.add_argument("--detach", action="store_true", help="queue and return at once")
    s.set_defaults(func=_sweep)


def queue_run(cfg: RunConfig) -> int:
    """`train --queue`: the run waits its turn instead of starting now."""
    try:
        entry = queue.add([cfg])[0]
    except (ConfigError, queue.QueueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ahead = queue.position(entry["id"])
    print(f"queued: entry {entry['id']} ({ahead} ahead of it); see peft-studio queue list")
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        queue.ensure_worker()  # after a reboot, looking at the queue starts it again
        items = queue.entries()
    except queue.QueueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not items:
        print("the queue is empty")
        return 0
    print(f"{'id':>4} {'status':10} {'run':36} what")
    for e in items:
        note = " (cancelling)" if e.get("cancel") and e["status"] == queue.RUNNING else ""
        print(f"{e['id']:>4} {e['status'] + note:10} {e.get('run') or '-':36} "
              f"{queue.describe(e)}")
        if e.get("waiting") or e.get("error"):
            print(f"{'':16}{e.get('waiting') or e.get('error')}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    try:
        entry = queue.cancel(args.id)
    except queue.QueueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if entry["status"] == queue.RUNNING:
        print(f"entry {args.id}: {entry.get('run') or 'its run'} stops at its next step and "
              "saves")
    else:
        print(f"entry {args.id}: cancelled")
    return 0


def _move(args: argparse.Namespace) -> int:
    try:
        place = queue.move(args.id, args.to)
    except queue.QueueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"entry {args.id}: now number {place} of the waiting")
    return 0


def _clear(args: argparse.Namespace) -> int:
    print(f"{queue.clear()} ended entries forgotten")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from core.experiments import sweep

    try:
        axes = dict(sweep.parse_axis(a) for a in args.axis)
        base = RunConfig.load(args.config).to_dict() if args.config else {}
        spec = sweep.SweepSpec(axes=axes, settings={**base, **given_settings(args)},
                               mode=sweep.LIST if args.as_list else sweep.GRID,
                               eval_dataset=args.eval_dataset,
                               eval_max_samples=args.eval_samples)
        job = sweep.start(spec)
    except (ConfigError, queue.QueueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = sweep.rows(job)
    print(f"sweep: {job} ({len(runs)} runs queued)", flush=True)
    if args.detach:
        return 0
    return _wait_and_print(job)


def _wait_and_print(job: Path) -> int:
    from core.experiments import sweep
    from core.jobs import runner

    try:
        while run_status(job)[0] == RUNNING:
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping the sweep: its runs not yet ended are cancelled ...", file=sys.stderr)
        runner.abort(job, timeout=120)
    print(table_text(sweep.rows(job)))
    return 0 if run_status(job)[0] == DONE else 1


def table_text(rows: list[dict[str, Any]]) -> str:
    """A sweep's table as plain text, one run a line, the best marked."""
    from core.experiments import sweep

    if not rows:
        return "(no runs)"
    columns = [k for k in rows[0] if k not in sweep.COLUMNS and k != "entry"]
    columns += ["status", "final_loss", "final_eval_loss", *sweep.SCORES, "seconds",
                "peak_memory_mb", "run", "best"]
    shown = [c for c in columns if any(r.get(c) is not None for r in rows)]

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [[c for c in shown], *[[cell(r.get(c)) for c in shown] for r in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(shown))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True))
                     for line in lines) + f"\n(best by {sweep.best_column(rows)})"
