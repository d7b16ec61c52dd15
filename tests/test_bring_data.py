"""Issue 21's leftovers: the Train tab checks every row before Start, LLaMA-Factory's
num_samples, registering only the good rows on request, hub dataset ids offline, and the
Chat tab's tools box."""

from __future__ import annotations

import json
from pathlib import Path

from core.schema.config import SETTINGS


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def defaults(**changes) -> dict:
    values = {n: (list(s.default) if isinstance(s.default, list) else s.default)
              for n, s in SETTINGS.items()}
    return {**values, **changes}


def test_the_train_tab_checks_every_row_before_start(data, saves):
    from webui.tabs.train import handlers as training
    from webui.tabs.train import queue as queue_panel

    rows = [{"instruction": "q", "output": "a"}] * 30 + [{"instruction": "q", "output": ""}]
    bad = write(data / "bad.json", rows)
    for answer in (training.start(defaults(dataset=[str(bad)])).message,
                   queue_panel.add(defaults(dataset=[str(bad)]))):
        assert answer.startswith("**Cannot start: a dataset cannot train as it is**")
        assert f"- problem: {bad}, row 31, field 'output': empty" in answer
    assert not list(saves.iterdir())
