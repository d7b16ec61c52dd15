"""The Train tab's sweep: the settings above expanded over a grid or a list of values of
some settings, queued as ordinary runs, one table with the best row marked, and "use these
settings" to fill the form with a row's. The sweep is a detached job following the queue
(core.experiments.sweep), so any page, or one opened after a restart, re-reads it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.experiments import sweep
from core.jobs import runner
from core.jobs.events import read_events
from core.jobs.runs import RUNNING, run_status
from core.schema.config import ConfigError
from webui import guard
from webui.live import wake
from webui.shared import Shared
from webui.tabs.train.handlers import problems_markdown
from webui.widgets import SettingsForm, config_values, from_config

EXAMPLE = "learning_rate = 1e-4, 3e-4\nlora_rank = 4, 8"


def start(values: dict[str, Any], axes_text: str, mode: str, eval_dataset: str | None,
          eval_samples: int, lang: str = "en") -> tuple[str, str | None]:
    """(message, sweep folder or None when refused). Refused what a run started from the
    browser is (webui.guard), for the base settings and every swept value."""
    settings = config_values(values)
    try:
        axes = sweep.check_axes(sweep.parse_axes(axes_text or ""), mode or sweep.GRID)
    except ConfigError as exc:
        return problems_markdown(exc, lang), None
    refused = guard.browser_problems(settings)
    for name, items in axes.items():
        for item in items:
            refused += [f"{name}={item}: {p}" for p in guard.browser_problems({name: item})]
    if eval_dataset:
        why = guard.browser_dataset_problem(eval_dataset)
        refused += [f"evaluation dataset: {why}"] if why else []
    if refused:
        return problems_markdown(ConfigError(refused), lang), None
    spec = sweep.SweepSpec(axes=axes, settings=settings, mode=mode or sweep.GRID,
                           eval_dataset=eval_dataset or None,
                           eval_max_samples=int(eval_samples or 30))
    try:
        job = sweep.start(spec)
    except ConfigError as exc:
        return problems_markdown(exc, lang), None
    n = len(sweep.rows(job))
    return f"Queued sweep **{job.name}**: {n} runs, one after another.", str(job)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    swept = [k for k in (rows[0] if rows else {}) if k not in sweep.COLUMNS and k != "entry"]
    return ["entry", *swept, *sweep.COLUMNS]


def view(job: str | None) -> tuple[str, pd.DataFrame]:
    """(progress line, table) of a sweep."""
    if not job or not Path(job).is_dir():
        return "", pd.DataFrame(columns=["Entry", *sweep.COLUMNS.values()])
    path = Path(job)
    events, _ = read_events(path)
    status, end = run_status(path, events)
    progress = next((e for e in reversed(events) if e["type"] == "progress"), {})
    rows = sweep.rows(path)
    line = f"**{path.name}**: {status}"
    if status == RUNNING and progress:
        line += f" · {progress['message']} ({progress['done']}/{progress['total']} ended)"
    if end.get("error"):
        line += f" · {end['error']}"
    if any(r.get("best") for r in rows):
        line += f" · ★ best by {sweep.best_column(rows).replace('_', ' ')}"
    frame = pd.DataFrame(rows, columns=_columns(rows)).rename(
        columns={"entry": "Entry", **sweep.COLUMNS})
    return line, frame


def use_settings(job: str | None, entry: float | None) -> tuple[dict[str, Any] | None, str]:
    """(widget values of a row's run, message): the best row's when no entry is given."""
    if not job:
        return None, "No sweep to take settings from."
    rows = sweep.rows(Path(job))
    pick = next((r for r in rows if entry and r["entry"] == int(entry)), None) if entry \
        else next((r for r in rows if r.get("best")), None)
    if pick is None:
        return None, ("No best row yet: wait for a run to finish, or give an entry."
                      if not entry else f"Entry {int(entry)} is not in this sweep.")
    if not pick.get("run"):
        return None, f"Entry {pick['entry']} has not started; it has no run to copy."
    try:
        cfg = sweep.settings_of(Path(job), pick["run"])
    except ConfigError as exc:
        return None, f"✗ {exc}"
    return from_config(cfg.replace(run_name="")), f"Settings of **{pick['run']}** loaded."


def stop(job: str | None) -> str:
    if not job or run_status(Path(job))[0] != RUNNING:
        return "No sweep is running."
    threading.Thread(target=runner.abort, args=(Path(job), 120), daemon=True).start()
    return f"Stopping **{Path(job).name}**: its runs not yet ended are cancelled."


def latest() -> str | None:
    found = sweep.list_sweeps()
    return str(found[0]) if found else None


def _layout(shared: Shared) -> dict[str, Any]:
    from core.data.registry import test_sets

    i18n = shared.i18n
    c: dict[str, Any] = {}
    with i18n.add(gr.Accordion("Sweep", open=False), "Sweep", "参数扫描"):
        gr.Markdown("Queue one run of the settings above per combination of the values below "
                    "(one setting a line: `name = value, value`), then compare them in one "
                    "table.")
        with gr.Row():
            c["axes"] = gr.Textbox(EXAMPLE, label="Settings and values", lines=3, scale=3)
            c["mode"] = gr.Radio([("every combination", sweep.GRID),
                                  ("n-th values together", sweep.LIST)],
                                 value=sweep.GRID, label="Sweep", scale=1)
        with gr.Row():
            c["eval_dataset"] = gr.Dropdown([("(no evaluation)", "")] +
                                            [(t, t) for t in test_sets()], value="",
                                            label="Evaluate each on")
            c["eval_samples"] = gr.Number(30, label="Evaluation samples", precision=0,
                                          minimum=1)
            c["go"] = i18n.add(gr.Button("Start sweep", variant="primary"),
                               "Start sweep", "开始扫描")
            c["halt"] = i18n.add(gr.Button("Stop sweep", variant="stop"), "Stop sweep",
                                 "停止扫描")
        c["message"] = gr.Markdown()
        c["progress"] = gr.Markdown()
        c["table"] = gr.Dataframe(interactive=False, wrap=True)
        with gr.Row():
            c["entry"] = gr.Number(None, label="Entry (empty: the best)", precision=0)
            c["use"] = i18n.add(gr.Button("Use these settings", size="sm"),
                                "Use these settings", "使用这组设置")
        c["job"] = gr.Textbox("", visible="hidden", elem_id="sweep-job")
        c["news"] = wake.waker("sweep-wake", wake.job_stamp, every_ms=3000,
                               source="sweep-job")
    return c


def build(form: SettingsForm, shared: Shared) -> None:
    c = _layout(shared)

    def on_start(lang: str, axes: str, mode: str, ds: str, n: float, *values: Any) -> list:
        text, folder = start(form.named(values), axes, mode, ds, int(n or 30), lang)
        return [text, folder, *view(folder)] if folder else [text, *[gr.skip()] * 3]

    c["go"].click(on_start, [shared.lang, c["axes"], c["mode"], c["eval_dataset"],
                             c["eval_samples"], *form.components],
                  [c["message"], c["job"], c["progress"], c["table"]])
    c["halt"].click(lambda j: [stop(j), *view(j)], c["job"],
                    [c["message"], c["progress"], c["table"]])
    c["news"].change(view, c["job"], [c["progress"], c["table"]], show_progress="hidden",
                     concurrency_limit=None, trigger_mode="always_last")

    def on_use(job: str, entry: float | None) -> list[Any]:
        values, text = use_settings(job, entry)
        fills = form.positional(values) if values else [gr.skip()] * len(form.components)
        return [*fills, text]

    c["use"].click(on_use, [c["job"], c["entry"]], [*form.components, c["message"]])

    def pick(evt: gr.SelectData) -> Any:
        return evt.row_value[0] if evt.row_value else gr.skip()

    c["table"].select(pick, None, c["entry"])

    def on_load() -> list[Any]:
        folder = latest()
        return [folder or "", *view(folder)]

    shared.blocks.load(on_load, None, [c["job"], c["progress"], c["table"]])
