"""The Train tab's method comparison: the current settings queued across several methods,
one table and overlaid loss curves. The queue is a detached job (core.experiments.compare),
so like a run it goes on with the page closed, and any page re-reads it from its files."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.experiments import compare
from core.jobs import runner
from core.jobs.events import read_events
from core.jobs.plots import loss_figure
from core.jobs.runs import RUNNING, run_status
from core.methods import METHODS
from core.schema.config import ConfigError
from webui import guard
from webui.live import wake
from webui.shared import Shared
from webui.tabs.train import history
from webui.tabs.train.handlers import problems_markdown
from webui.widgets import SettingsForm, config_values

# A comparison trains its runs one after another for minutes each: its panel asks for news
# every few seconds, not every second (each ask costs the page and the server a little,
# taken from the trainer on a small machine).
FOLLOW_EVERY_MS = 3000


def start(values: dict[str, Any], methods: list[str], eval_dataset: str | None,
          eval_samples: int, lang: str = "en") -> tuple[str, str | None]:
    """(message, comparison folder or None when refused). The queue is started from the
    browser like a run from the Train tab, so it is refused what a run is (webui.guard):
    remote code without --allow-remote-code, and datasets outside data/."""
    settings = config_values(values)
    refused = guard.browser_problems(settings)
    if eval_dataset:
        why = guard.browser_dataset_problem(eval_dataset)
        refused += [f"evaluation dataset: {why}"] if why else []
    if refused:
        return problems_markdown(ConfigError(refused), lang), None
    spec = compare.CompareSpec(methods=list(methods or []), settings=settings,
                               eval_dataset=eval_dataset or None,
                               eval_max_samples=int(eval_samples or 30))
    try:
        job = compare.start(spec)
    except ConfigError as exc:
        return problems_markdown(exc, lang), None
    except ValueError as exc:
        return f"✗ {exc}", None
    return f"Queued **{job.name}**: {', '.join(methods)}, one after another.", str(job)


def view(job: str | None) -> tuple[str, pd.DataFrame, Any]:
    """(progress line, table, overlaid loss curves) of a comparison."""
    if not job or not Path(job).is_dir():
        return "", pd.DataFrame(columns=list(compare.COLUMNS.values())), None
    path = Path(job)
    events, _ = read_events(path)
    status, end = run_status(path, events)
    progress = next((e for e in reversed(events) if e["type"] == "progress"), {})
    line = f"**{path.name}**: {status}"
    if status == RUNNING and progress:
        line += f" · {progress['message']} ({progress['done']}/{progress['total']} done)"
    if end.get("error"):
        line += f" · {end['error']}"
    rows = compare.table(path)
    frame = pd.DataFrame(rows, columns=list(compare.COLUMNS)).rename(columns=compare.COLUMNS)
    runs = list(dict.fromkeys(e["run"] for e in events if e["type"] == "run"))
    curves, _, _ = history.curves(runs)
    return line, frame, loss_figure(curves, "loss by method")


def stop(job: str | None) -> str:
    """Stop the queue: the run it trains stops at its next step and saves, the methods
    not yet trained are not started."""
    if not job or run_status(Path(job))[0] != RUNNING:
        return "No comparison is running."
    # In the background, like the Train tab's Abort: the run saves first, which takes a
    # while, and the page shows the queue ending.
    threading.Thread(target=runner.abort, args=(Path(job), 120), daemon=True).start()
    return f"Stopping **{Path(job).name}**: the current run stops at its next step and saves."


def latest() -> str | None:
    found = compare.list_comparisons()
    return str(found[0]) if found else None


def build(form: SettingsForm, shared: Shared) -> None:
    from core.data.registry import test_sets

    i18n = shared.i18n
    with i18n.add(gr.Accordion("Compare methods", open=False), "Compare methods", "方法对比"):
        gr.Markdown("Train the settings above once per chosen method (same data and step "
                    "budget; each method keeps its own defaults), then compare them in one "
                    "table.")
        with gr.Row():
            methods = i18n.add(gr.CheckboxGroup(
                [(spec.label.split(" (")[0], mid) for mid, spec in METHODS.items()],
                value=["lora", "ia3", "adapter"], label="Methods"), "Methods", "方法")
        with gr.Row():
            eval_dataset = i18n.add(gr.Dropdown(
                [("(no evaluation)", "")] + [(t, t) for t in test_sets()], value="",
                label="Evaluate each on"), "Evaluate each on", "评估数据集")
            eval_samples = i18n.add(gr.Number(30, label="Evaluation samples", precision=0,
                                              minimum=1), "Evaluation samples", "评估样本数")
            go = i18n.add(gr.Button("Start comparison", variant="primary"),
                          "Start comparison", "开始对比")
            halt = i18n.add(gr.Button("Stop comparison", variant="stop"),
                            "Stop comparison", "停止对比")
        message = gr.Markdown()
        progress = gr.Markdown()
        table = gr.Dataframe(interactive=False, wrap=True)
        plot = gr.Plot(show_label=False)
        job = gr.State(None)
        news = wake.waker("compare-wake", wake.comparison_stamp, every_ms=FOLLOW_EVERY_MS)

    def on_start(lang: str, m: list[str], ds: str, n: float, *values: Any) -> list[Any]:
        text, folder = start(form.named(values), m, ds, int(n or 30), lang)
        return [text, folder or gr.skip(), *view(folder)] if folder else \
            [text, gr.skip(), gr.skip(), gr.skip(), gr.skip()]

    go.click(on_start, [shared.lang, methods, eval_dataset, eval_samples, *form.components],
             [message, job, progress, table, plot])
    halt.click(lambda j: [stop(j), *view(j)], job, [message, progress, table, plot])
    # Redrawn when the comparison or the run it trains wrote something (webui.live.wake), not
    # on a timer: each Gradio event costs this page's browser a quarter of a CPU-second.
    news.change(lambda j: view(j), job, [progress, table, plot], show_progress="hidden",
                concurrency_limit=None, trigger_mode="always_last")

    def on_load() -> list[Any]:
        folder = latest()
        return [folder, *view(folder)]

    shared.blocks.load(on_load, None, [job, progress, table, plot])
