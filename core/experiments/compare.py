"""Method comparison: the same data and budget trained with several methods, one table.

`start(spec)` spawns `python -m core.experiments.compare DIR/compare.yaml`, a detached job like a
training run: it trains each method in turn through the runner (so every run is an
ordinary run in saves/, with its own curves), evaluates it on a held-out split when one is
given, and writes `results.json` with one row per method. It depends on no browser: close
the page and the queue goes on; the Train tab re-reads the table from the files.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from core.fsutil import atomic_write_text
from core.jobs import runner
from core.jobs.device import BusyError
from core.jobs.events import EventWriter, read_events
from core.jobs.job import run_job
from core.jobs.process import ABORT_FILE, spawn
from core.jobs.runs import ABORTED, DONE, RUNNING, run_status
from core.paths import saves_dir
from core.schema.config import SETTINGS, RunConfig

SPEC_FILE = "compare.yaml"
RESULTS = "results.json"
SCORES = ("exact_match", "rouge_l")  # of core.evaluate.metrics.METRICS, the ones a comparison shows
# Table columns, in order, with the headers the UI shows.
COLUMNS = {
    "method": "Method",
    "status": "Status",
    "trainable_params": "Trainable params",
    "trainable_share": "Trainable %",
    "peak_memory_mb": "Peak memory (MB)",
    "seconds_per_step": "Seconds / step",
    "final_loss": "Final train loss",
    "final_eval_loss": "Final eval loss",
    "exact_match": "Exact match",
    "rouge_l": "ROUGE-L",
    "run": "Run",
}


@dataclass
class CompareSpec:
    methods: list[str]
    # Settings shared by every run (model, data, budget, ...); each method keeps its own
    # defaults for the settings that are its alone.
    settings: dict[str, Any] = field(default_factory=dict)
    eval_dataset: str | None = None
    eval_max_samples: int = 30

    def configs(self, name: str) -> list[RunConfig]:
        shared = {k: v for k, v in self.settings.items()
                  if k not in ("method", "run_name") and SETTINGS[k].methods is None}
        return [RunConfig(**shared, method=m, run_name=f"{name}-{m}") for m in self.methods]


def comparisons_dir() -> Path:
    return saves_dir() / "comparisons"


def start(spec: CompareSpec) -> Path:
    """Validate every method's settings up front, then start the queue; return its folder."""
    if not spec.methods:
        raise ValueError("choose at least one method to compare")
    name = f"compare-{datetime.now():%Y%m%d-%H%M%S}"
    spec.configs(name)  # raises ConfigError now, not half-way through the queue
    job = comparisons_dir() / name
    job.mkdir(parents=True)
    atomic_write_text(job / SPEC_FILE, yaml.safe_dump(asdict(spec), sort_keys=False))
    spawn(job, ["-m", "core.experiments.compare", str(job / SPEC_FILE)])
    return job


def row_for(run_dir: Path, method: str) -> dict[str, Any]:
    events, _ = read_events(run_dir)
    status, end = run_status(run_dir, events)
    start_event = next((e for e in events if e["type"] == "start"), {})
    share = start_event.get("trainable_share")
    return {
        "method": method,
        "status": status,
        "trainable_params": start_event.get("trainable_params"),
        "trainable_share": None if share is None else round(100 * share, 3),
        "peak_memory_mb": end.get("peak_memory_mb"),
        "seconds_per_step": end.get("seconds_per_step"),
        "final_loss": end.get("final_loss"),
        "final_eval_loss": end.get("final_eval_loss"),
        **dict.fromkeys(SCORES),
        "run": run_dir.name,
    }


def table(job: Path) -> list[dict[str, Any]]:
    try:
        return json.loads((job / RESULTS).read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return []


def list_comparisons() -> list[Path]:
    root = comparisons_dir()
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / SPEC_FILE).is_file()), reverse=True)


def _start_when_free(cfg: RunConfig, stop: dict[str, bool], events: EventWriter, done: int,
                     total: int) -> Path | None:
    # Someone may train by hand between two of our runs: wait for the machine, never
    # fight over it, and say for whom we wait.
    told = None
    while not stop["requested"]:
        try:
            return runner.start(cfg)
        except BusyError as exc:
            if str(exc) != told:
                events.emit("progress", done=done, total=total, message=f"waiting: {exc}")
                told = str(exc)
            time.sleep(2)
    return None


def _wait(job_dir: Path, stop: dict[str, bool], on_stop: Any) -> str:
    while True:
        status, _ = run_status(job_dir)
        if status != RUNNING:
            return status
        if stop["requested"]:
            on_stop(job_dir)
            return run_status(job_dir)[0]
        time.sleep(1)


def _evaluate(run_dir: Path, spec: CompareSpec, stop: dict[str, bool]) -> dict[str, Any]:
    from core.evaluate import job as evaluate

    eval_spec = evaluate.EvalSpec(run_dir=str(run_dir), dataset=[spec.eval_dataset],
                                  max_samples=spec.eval_max_samples, include_base=False)
    job = evaluate.start(eval_spec)
    _wait(job, stop, lambda d: runner.abort(d, timeout=10))
    state = evaluate.job_state(job)
    scores = (state.results or {}).get("models", {}).get("fine_tuned", {})
    return {key: scores.get(key) for key in SCORES}


def run(job: Path) -> list[dict[str, Any]]:
    spec = CompareSpec(**yaml.safe_load((job / SPEC_FILE).read_text()))
    events = EventWriter(job)
    stop = {"requested": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_signal)
    rows: list[dict[str, Any]] = []
    configs = spec.configs(job.name)
    for i, cfg in enumerate(configs):
        events.emit("progress", done=i, total=len(configs), message=f"training {cfg.method}")
        run_dir = _start_when_free(cfg, stop, events, i, len(configs))
        if run_dir is None:
            break
        events.emit("run", method=cfg.method, run=run_dir.name)
        status = _wait(run_dir, stop, runner.abort)
        row = row_for(run_dir, cfg.method)
        if status == DONE and spec.eval_dataset and not stop["requested"]:
            events.emit("progress", done=i, total=len(configs),
                        message=f"evaluating {cfg.method}")
            row.update(_evaluate(run_dir, spec, stop))
        rows.append(row)
        atomic_write_text(job / RESULTS, json.dumps({"rows": rows}, indent=1))
    events.emit("progress", done=len(rows), total=len(configs), message="finished")
    return rows


def _job(spec: dict[str, Any], job: Path, events: EventWriter) -> dict[str, Any]:
    rows = run(job)
    failed = [r["method"] for r in rows if r["status"] != DONE]
    stopped = (job / ABORT_FILE).exists()  # runner.abort (Stop, the CLI) leaves it
    status = ABORTED if stopped or len(rows) < len(spec["methods"]) else DONE
    return {"status": status, "error": f"not done: {', '.join(failed)}" if failed else None}


def main(argv: list[str] | None = None) -> int:
    # Each run of the queue takes the device itself: the queue holds none.
    return run_job(argv, "python -m core.experiments.compare JOB_DIR/compare.yaml",
                   lambda path: yaml.safe_load(path.read_text()), _job)


if __name__ == "__main__":
    sys.exit(main())
