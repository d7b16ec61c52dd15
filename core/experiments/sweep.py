"""Sweeps: one set of settings expanded over a grid (every combination) or a list (the n-th
value of each axis together) of values of any numeric or choice settings, queued as
ordinary runs (core.jobs.queue), and one table of how each did.

`start(spec)` validates every run up front, queues them, and spawns `python -m
core.experiments.sweep DIR/sweep.yaml`, a light job that follows its entries through the
queue (it trains nothing: the queue's worker does), writes `results.json` as each run
settles and ends once all have. Stopping it (runner.abort, the CLI's `abort`) cancels the
entries not yet settled. The table is read from the queue and the runs' files, so a page
opened later, or after the UI restarted, shows the same.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from core.fsutil import atomic_write_text, unique_dir
from core.jobs import queue
from core.jobs.events import EventWriter, read_events
from core.jobs.job import run_job
from core.jobs.process import ABORT_FILE, spawn
from core.jobs.runs import ABORTED, CONFIG, DAMAGED, DONE, FAILED, run_status
from core.paths import saves_dir
from core.schema.config import SETTINGS, ConfigError, RunConfig

SPEC_FILE = "sweep.yaml"
RESULTS = "results.json"
GRID, LIST = "grid", "list"
MAX_RUNS = 64  # more is almost always a typo (a grid of 5 axes), and days of training
SCORES = ("exact_match", "rouge_l")  # of core.evaluate.metrics.METRICS, the ones shown
# Table columns after the swept settings, with the headers the UI shows.
COLUMNS = {
    "status": "Status",
    "final_loss": "Final train loss",
    "final_eval_loss": "Final eval loss",
    "exact_match": "Exact match",
    "rouge_l": "ROUGE-L",
    "seconds": "Time (s)",
    "peak_memory_mb": "Peak memory (MB)",
    "trainable_params": "Trainable params",
    "trainable_share": "Trainable %",
    "seconds_per_step": "Seconds / step",
    "run": "Run",
    "best": "Best",
}


@dataclass
class SweepSpec:
    # {setting: [values]}: the values as the setting takes them, or as text ("3e-4").
    axes: dict[str, list[Any]]
    # Settings every run shares (model, data, budget...); a method's own settings apply
    # to the runs of that method only.
    settings: dict[str, Any] = field(default_factory=dict)
    mode: str = GRID
    eval_dataset: str | None = None
    eval_max_samples: int = 30
    prefix: str = "sweep"  # of the sweep's name and its runs' names

    def combinations(self) -> list[dict[str, Any]]:
        """Each run's values of the swept settings; raises ConfigError naming every bad
        axis and value."""
        axes = check_axes(self.axes, self.mode)
        names = list(axes)
        if self.mode == GRID:
            return [dict(zip(names, combo, strict=True))
                    for combo in itertools.product(*axes.values())]
        return [dict(zip(names, combo, strict=True)) for combo in zip(*axes.values(), strict=True)]

    def configs(self, name: str) -> list[tuple[dict[str, Any], RunConfig]]:
        """(the swept values that apply, the run's settings) per run, in order. A value
        of a setting the run's method does not have is dropped, and so is a run that
        then repeats another (lora_rank x [lora, ia3] trains IA3 once)."""
        out: list[tuple[dict[str, Any], RunConfig]] = []
        seen: list[dict[str, Any]] = []
        problems: list[str] = []
        for combo in self.combinations():
            values = {k: v for k, v in {**self.settings, **combo}.items() if k != "run_name"}
            method = values.get("method", SETTINGS["method"].default)
            stage = values.get("stage", SETTINGS["stage"].default)
            values = {k: v for k, v in values.items()
                      if SETTINGS[k].applies_to(method) and SETTINGS[k].applies_to_stage(stage)}
            applied = {k: v for k, v in combo.items() if k in values}
            if applied in seen:
                continue
            seen.append(applied)
            try:
                cfg = RunConfig(**values, run_name=f"{name}-{_label(applied, len(seen))}")
            except ConfigError as exc:
                problems += [f"{_words(applied)}: {p}" for p in exc.problems]
                continue
            out.append((applied, cfg))
        if problems:
            raise ConfigError(list(dict.fromkeys(problems)))
        return out


def check_axes(axes: dict[str, list[Any]], mode: str = GRID) -> dict[str, list[Any]]:
    """The axes with their values as each setting takes them; raises ConfigError."""
    problems = []
    if mode not in (GRID, LIST):
        problems.append(f"mode {mode!r}: use {GRID} (every combination) or {LIST} (the n-th "
                        "value of each axis together)")
    if not axes:
        problems.append("nothing to sweep: give at least one setting and its values, e.g. "
                        "learning_rate=1e-4,3e-4")
    out: dict[str, list[Any]] = {}
    for name, values in axes.items():
        s = SETTINGS.get(name)
        if s is None or name in ("run_name", "model") or s.kind in (list, dict):
            why = "unknown setting" if s is None else "cannot be swept"
            problems.append(f"{name}: {why}; sweep numeric or choice settings such as "
                            "learning_rate, lora_rank, method")
            continue
        if not values:
            problems.append(f"{name}: no values")
        checked = []
        for v in values:
            value, error = s.check(v)
            if error:
                problems.append(f"{name}={v}: {error}")
            checked.append(value)
        if len(set(map(repr, checked))) != len(checked):
            problems.append(f"{name}: a value is given twice")
        out[name] = checked
    if mode == LIST and len({len(v) for v in out.values()}) > 1:
        sizes = ", ".join(f"{k} has {len(v)}" for k, v in out.items())
        problems.append(f"a list sweep takes the same number of values per setting ({sizes})")
    runs = 1
    for v in out.values():
        runs = runs * len(v) if mode == GRID else len(v)
    if runs > MAX_RUNS:
        problems.append(f"{runs} runs; a sweep takes at most {MAX_RUNS}: sweep fewer values")
    if problems:
        raise ConfigError(problems)
    return out


def parse_axis(text: str) -> tuple[str, list[str]]:
    """`learning_rate=1e-4,3e-4` (or `learning_rate = 1e-4, 3e-4`) as (name, values)."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        raise ConfigError([f"{text!r}: write a setting and its values, e.g. "
                           "learning_rate=1e-4,3e-4"])
    return name, [v.strip() for v in values.split(",") if v.strip()]


def parse_axes(text: str) -> dict[str, list[str]]:
    """One `setting=values` a line (blank lines skipped); raises ConfigError."""
    axes: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip():
            name, values = parse_axis(line)
            if name in axes:
                raise ConfigError([f"{name}: given on two lines; put its values on one"])
            axes[name] = values
    return axes


def _label(values: dict[str, Any], index: int) -> str:
    text = "-".join(str(v) for v in values.values()) or "base"
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    return text if len(text) <= 40 else f"{index:02d}"


def _words(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "every run"


def sweeps_dir() -> Path:
    return saves_dir() / "sweeps"


def start(spec: SweepSpec, parent: Path | None = None) -> Path:
    """Validate every run, queue them all and start following them; return the sweep's
    folder. Raises ConfigError (nothing queued) on any bad axis, value or setting."""
    spec.combinations()  # a bad axis refused before any folder exists
    job = unique_dir(parent or sweeps_dir(), f"{spec.prefix}-{datetime.now():%Y%m%d-%H%M%S}")
    evaluate = ({"dataset": spec.eval_dataset, "max_samples": spec.eval_max_samples}
                if spec.eval_dataset else None)
    try:
        runs = spec.configs(job.name)  # run names follow the folder's (suffix and all)
        atomic_write_text(job / SPEC_FILE, yaml.safe_dump(asdict(spec), sort_keys=False))
        queue.add([cfg for _, cfg in runs], saves=job_saves(job), sweep=sweep_id(job),
                  evaluate=evaluate, labels=[values for values, _ in runs])
    except (ConfigError, queue.QueueError):
        shutil.rmtree(job)
        raise
    spawn(job, ["-m", "core.experiments.sweep", str(job / SPEC_FILE)])
    return job


def list_sweeps(parent: Path | None = None) -> list[Path]:
    root = parent or sweeps_dir()
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / SPEC_FILE).is_file()), reverse=True)


def load_spec(job: Path) -> SweepSpec:
    return SweepSpec(**yaml.safe_load((job / SPEC_FILE).read_text(encoding="utf-8")))


def run_row(run_dir: Path) -> dict[str, Any]:
    """A run's numbers for a sweep's table, from its files."""
    events, _ = read_events(run_dir)
    status, end = run_status(run_dir, events)
    start_event = next((e for e in events if e["type"] == "start"), {})
    share = start_event.get("trainable_share")
    began = start_event.get("time")
    return {
        "status": status,
        "trainable_params": start_event.get("trainable_params"),
        "trainable_share": None if share is None else round(100 * share, 3),
        "peak_memory_mb": end.get("peak_memory_mb"),
        "seconds_per_step": end.get("seconds_per_step"),
        "seconds": round(end["time"] - began, 1) if began and end.get("time") else None,
        "final_loss": end.get("final_loss"),
        "final_eval_loss": end.get("final_eval_loss"),
        "run": run_dir.name,
    }


def rows(job: Path) -> list[dict[str, Any]]:
    """One row per run of the sweep, in the sweep's order (not the queue's): the swept
    values, the entry's status (queued, running, cancelled...) and the run's numbers; the
    best done row marked."""
    out = []
    for entry in sorted(queue.entries(job_saves(job)), key=lambda e: e["id"]):
        if entry.get("sweep") != sweep_id(job):
            continue
        row = {**entry["values"], **dict.fromkeys(COLUMNS), "status": entry["status"],
               "entry": entry["id"]}
        if entry.get("run"):
            row.update(run_row(job_saves(job) / entry["run"]))
            # A run cancelled part-way reads as its run ended (aborted); one cancelled while
            # it was evaluated, as cancelled.
            if entry["status"] in (queue.WAITING, queue.RUNNING) or (
                    entry["status"] == queue.CANCELLED and row["status"] == DONE):
                row["status"] = entry["status"]
        for key in SCORES:
            row[key] = (entry.get("scores") or {}).get(key)
        out.append(row)
    best_by = best_column(out)
    done = [r for r in out if r["status"] == DONE and r.get(best_by) is not None]
    if done:
        higher = best_by in SCORES
        best = (max if higher else min)(done, key=lambda r: r[best_by])
        best["best"] = "★"
    return out


def best_column(table: list[dict[str, Any]]) -> str:
    """What "best" means for this table: the lowest final eval loss when the runs have one,
    else the highest ROUGE-L, else the lowest final train loss."""
    for key in ("final_eval_loss", "rouge_l"):
        if any(r.get(key) is not None for r in table):
            return key
    return "final_loss"


def job_saves(job: Path) -> Path:
    """The saves/ folder a sweep's runs are in (the sweep is saves/sweeps/NAME, a
    comparison saves/comparisons/NAME)."""
    return job.parent.parent


def sweep_id(job: Path) -> str:
    """How the queue's entries name their sweep: its folder under saves/."""
    return job.relative_to(job_saves(job)).as_posix()


def settings_of(job: Path, run: str) -> RunConfig:
    """The settings a row of the sweep trained with ("use these settings")."""
    return RunConfig.load(job_saves(job) / run / CONFIG)


# -- the job following the sweep ------------------------------------------------------------
def follow(job: Path, events: EventWriter, stop: dict[str, bool]) -> list[dict[str, Any]]:
    """Wait for every entry of the sweep to settle, writing the table as they do; on a stop,
    cancel the ones left."""
    told: tuple[int, str] | None = None
    cancelled = False
    while True:
        table = rows(job)
        left = [r for r in table if r["status"] in (queue.WAITING, queue.RUNNING)]
        atomic_write_text(job / RESULTS, json.dumps({"rows": table}, indent=1))
        done = len(table) - len(left)
        now = (done, (left[0]["run"] or "") if left else "")
        if now != told:
            running = next((r for r in left if r["status"] == queue.RUNNING), None)
            message = (f"training {running['run'] or 'entry ' + str(running['entry'])}"
                       if running else "waiting in the queue" if left else "finished")
            if running and running["run"]:
                events.emit("run", run=running["run"], entry=running["entry"])
            events.emit("progress", done=done, total=len(table), message=message)
            told = now
        if not left:
            return table
        if stop["requested"] and not cancelled:
            for row in left:
                try:
                    queue.cancel(row["entry"])
                except queue.QueueError:
                    pass  # it ended meanwhile
            cancelled = True
        time.sleep(1.0)


def _job(spec: dict[str, Any], job: Path, events: EventWriter) -> dict[str, Any]:
    stop = {"requested": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_signal)
    table = follow(job, events, stop)
    failed = [r["run"] or f"entry {r['entry']}" for r in table
              if r["status"] in (FAILED, DAMAGED)]
    stopped = stop["requested"] or (job / ABORT_FILE).exists()
    return {"status": ABORTED if stopped else DONE,
            "error": f"not done: {', '.join(failed)}" if failed else None}


def main(argv: list[str] | None = None) -> int:
    # The queue's worker takes the device for each run; this job holds none.
    return run_job(argv, "python -m core.experiments.sweep JOB_DIR/sweep.yaml",
                   lambda path: yaml.safe_load(path.read_text()), _job)


if __name__ == "__main__":
    sys.exit(main())
