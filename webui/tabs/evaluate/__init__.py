"""Evaluate tab: score a run against its base model on a held-out split or any dataset
(preference accuracy on pairwise data). Layout and wiring only; the actions are in
webui.tabs.evaluate.handlers."""

from __future__ import annotations

import gradio as gr

from core.schema.jobs import EVALUATION
from webui import widgets
from webui.live import wake
from webui.shared import Shared
from webui.tabs.evaluate import handlers as ev_ui


def build(shared: Shared) -> None:
    i18n = shared.i18n
    runs = ev_ui.run_names()
    first = runs[0] if runs else None
    datasets = ev_ui.dataset_choices(first)
    with gr.Row(equal_height=True):
        run = i18n.add(gr.Dropdown(runs, value=first, label="Run", scale=3), "Run", "训练结果")
        checkpoint = i18n.add(gr.Dropdown(ev_ui.checkpoint_names(first), value="final",
                                          label="Checkpoint", scale=1), "Checkpoint", "检查点")
        dataset = i18n.add(gr.Dropdown(datasets, value=ev_ui.default_dataset(first, datasets),
                                       label="Dataset", scale=3),
                           "Dataset", "数据集", "A held-out split tells whether the tuning "
                           "generalises", "留出的测试集能说明微调是否泛化")
        refresh = i18n.add(gr.Button("Refresh", scale=0, min_width=80), "Refresh", "刷新")
    with gr.Row(equal_height=True):
        max_samples, max_new_tokens, batch_size = (
            widgets.make(EVALUATION[name], i18n, elem_id=f"eval-{name.replace('_', '-')}")
            for name in ("max_samples", "max_new_tokens", "batch_size"))
        include_base = i18n.add(gr.Checkbox(True, label="Also evaluate the base model"),
                                "Also evaluate the base model", "同时评估基础模型")
    with gr.Row():
        start = i18n.add(gr.Button("Evaluate", variant="primary", elem_id="eval-start"),
                         "Evaluate", "开始评估")
        abort = i18n.add(gr.Button("Abort"), "Abort", "中止")
    progress = gr.HTML("", elem_id="eval-progress")
    message = gr.Markdown("")
    history = ev_ui.past_choices(first)
    latest = history[0][1] if history else None
    shown = ev_ui.show(latest)
    past = i18n.add(gr.Dropdown(history, label="Past evaluations of this run", value=latest),
                    "Past evaluations of this run", "该训练的历史评估")
    metrics = gr.HTML(shown[0], elem_id="eval-metrics")
    predictions = gr.HTML(shown[1], elem_id="eval-predictions")
    # The job this page follows, named in the page for its waker (webui.live.wake).
    job = gr.Textbox("", visible="hidden", elem_id="eval-job")
    news = wake.waker("eval-wake", wake.job_stamp, source="eval-job")

    run.change(ev_ui.on_run, run, [checkpoint, dataset, past])
    refresh.click(ev_ui.on_refresh, run, [run, dataset])
    shared.runs_changed.change(ev_ui.on_refresh, run, [run, dataset])
    shared.blocks.load(ev_ui.on_refresh, run, [run, dataset])
    shared.datasets_changed.change(ev_ui.on_refresh, run, [run, dataset])
    start.click(ev_ui.on_start, [run, checkpoint, dataset, max_samples, max_new_tokens,
                                 batch_size, include_base, shared.lang],
                [progress, message, job, past])
    news.change(ev_ui.on_tick, [job, run, shared.lang],
                [progress, message, metrics, predictions, past], show_progress="hidden",
                concurrency_limit=None, trigger_mode="always_last")
    abort.click(ev_ui.on_abort, job, None)
    past.change(ev_ui.show, past, [metrics, predictions])
