"""Method comparison: the same data and budget trained with several methods, one table. It
is a sweep over `method` (core.experiments.sweep) kept in saves/comparisons/: its runs
wait in the queue like any others, each an ordinary run in saves/ with its own curves,
each evaluated on a held-out split when one is given; a detached job follows them and
writes `results.json` with one row per method. It depends on no browser: close the page
and the queue goes on; the Train tab re-reads the table from the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.experiments import sweep
from core.jobs import queue
from core.paths import saves_dir
from core.schema.config import SETTINGS

SPEC_FILE = sweep.SPEC_FILE
RESULTS = sweep.RESULTS
SCORES = sweep.SCORES
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

    def sweep(self) -> sweep.SweepSpec:
        shared = {k: v for k, v in self.settings.items()
                  if k not in ("method", "run_name") and SETTINGS[k].methods is None}
        return sweep.SweepSpec(axes={"method": list(self.methods)}, settings=shared,
                               eval_dataset=self.eval_dataset,
                               eval_max_samples=self.eval_max_samples, prefix="compare")


def comparisons_dir() -> Path:
    return saves_dir() / "comparisons"


def start(spec: CompareSpec) -> Path:
    """Validate every method's settings up front, then queue the runs; return the
    comparison's folder."""
    if not spec.methods:
        raise ValueError("choose at least one method to compare")
    return sweep.start(spec.sweep(), comparisons_dir())


# A comparison of an earlier version: its own queue job, its table in results.json.
OLD_SPEC_FILE = "compare.yaml"


def table(job: Path) -> list[dict[str, Any]]:
    """One row per method, but those cancelled before they started: a comparison stopped
    part-way lists what it trained."""
    if not (job / SPEC_FILE).is_file() and (job / OLD_SPEC_FILE).is_file():
        try:
            return json.loads((job / RESULTS).read_text(encoding="utf-8"))["rows"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
    return [r for r in sweep.rows(job) if r["run"] or r["status"] != queue.CANCELLED]


def list_comparisons() -> list[Path]:
    """Every comparison, newest first (those of earlier versions too)."""
    root = comparisons_dir()
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir()
                   if (p / SPEC_FILE).is_file() or (p / OLD_SPEC_FILE).is_file()), reverse=True)
