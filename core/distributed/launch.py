"""A distributed run: `python -m core.distributed.launch RUN_DIR/config.yaml`.

The runner starts this as the run's one detached process (its own session). It holds the
device lock, then runs torchrun in-process with the arguments from core.distributed, which
is the same as `python -m torch.distributed.run ARGS`, except that a rank's failure comes
back as torch's own ChildFailedError (which rank, its exit code) rather than as text.

Rank 0 writes events.jsonl; this process adds what no rank can say:
  - a rank that died (killed, out of memory, crashed): the run ends `failed`, naming the
    rank and its last line in log.txt. torchrun notices a dead worker within a fraction of
    a second and stops the others (SIGTERM, SIGKILL after 20 s).
  - on machines other than 0 (no rank 0 there): the start and end of this machine's part.
Abort: the runner's SIGTERM is not passed on to the ranks (torchrun would kill them);
they see the ABORT file, agree on the step to stop at, and rank 0 saves.
"""

from __future__ import annotations

import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from core import distributed
from core.distributed import ranks
from core.jobs.events import LOG, EventWriter, read_events
from core.schema.config import RunConfig


def last_line(run_dir: Path, rank: int) -> str:
    """The last non-empty line that `rank` wrote to log.txt, without its prefix."""
    prefix = distributed.RANK_PREFIX.replace("${rank}", str(rank))
    try:
        with open(run_dir / LOG, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - (1 << 20)))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln[len(prefix):].strip() for ln in text.splitlines() if ln.startswith(prefix)]
    lines = [ln for ln in lines if ln]
    if not lines:
        return ""
    return lines[-1] if len(lines[-1]) <= 300 else lines[-1][:297] + "..."


def describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def failure_message(run_dir: Path, rank: int, exitcode: int) -> str:
    line = last_line(run_dir, rank)
    said = f"; its last log line: {line}" if line else "; it wrote nothing to the log"
    return f"rank {rank} {describe_exit(exitcode)}{said}"


def _has_end(run_dir: Path) -> bool:
    return any(e["type"] == "end" for e in read_events(run_dir)[0])


def supervise(cfg: RunConfig, config_path: Path) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    run_dir = config_path.parent
    events = EventWriter(run_dir)
    node = cfg.node_rank
    args = distributed.torchrun_args(cfg, config_path)
    print("launch: python -m torch.distributed.run " + " ".join(args), flush=True)
    if node > 0:
        events.emit("start", total_steps=0, processes=distributed.processes(cfg) * cfg.nnodes,
                    nodes=cfg.nnodes, node_rank=node, method=cfg.method,
                    device=f"machine {node} of {cfg.nnodes}")
    try:
        run(parse_args(args))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        message = failure_message(run_dir, rank, failure.exitcode)
        print(f"launch: {message}", flush=True)
        if not _has_end(run_dir):
            events.emit("end", status="failed", error=message, failed_rank=rank,
                        final_loss=None, output_dir=None)
        return 1
    except Exception as exc:  # the rendezvous itself (a port taken, machine 0 unreachable)
        traceback.print_exc()
        if not _has_end(run_dir):
            events.emit("end", status="failed", final_loss=None, output_dir=None,
                        error=f"torchrun could not start the processes: "
                              f"{type(exc).__name__}: {exc}")
        return 1
    if not _has_end(run_dir):
        if node > 0:
            events.emit("end", status="done", error=None, final_loss=None, output_dir=None,
                        note=f"this machine's processes finished; machine 0 "
                             f"({cfg.master_addr}) holds the result")
        else:
            events.emit("end", status="failed", final_loss=None, output_dir=None,
                        error="the processes ended without reporting; see the log")
    return 0


def _hold(run_dir: Path, events: EventWriter) -> Any:
    from core.jobs.device import hold_device
    from core.jobs.process import ABORT_FILE

    return hold_device(run_dir.name, cancelled=lambda: (run_dir / ABORT_FILE).exists(),
                       on_wait=lambda holder: events.emit("waiting", holder=holder),
                       saves=run_dir.parent, job=run_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m core.distributed.launch RUN_DIR/config.yaml", file=sys.stderr)
        return 2
    config_path = Path(argv[0])
    run_dir = config_path.parent
    events = EventWriter(run_dir)

    def on_abort(signum: int, frame: Any) -> None:
        print("launch: abort requested; the ranks stop together at their next step",
              flush=True)

    signal.signal(signal.SIGTERM, on_abort)
    signal.signal(signal.SIGINT, on_abort)
    try:
        cfg = RunConfig.load(config_path)
    except Exception as exc:
        events.emit("end", status="failed", error=str(exc), final_loss=None, output_dir=None)
        return 1
    lock = _hold(run_dir, events)
    if lock is None:
        events.emit("end", status="aborted", error=None, final_loss=None, output_dir=None)
        return 0
    import os

    # The ranks inherit it: they neither take the device lock (this process holds it for
    # the whole job) nor outlive torchrun.
    os.environ[ranks.LAUNCHED_ENV] = "1"
    return supervise(cfg, config_path)


if __name__ == "__main__":
    sys.exit(main())
