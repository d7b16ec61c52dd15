"""Export tab: write a finished run as a standalone model folder under saves/exports/.

The export is a subprocess job (core.export.job) so merging and writing gigabytes never block
the UI; the tab checks the request first (name, overwrite, what can be merged), starts the
job, and follows its progress events (webui.live.wake). Layout and wiring only: what each
control does is in webui/tabs/export/handlers.py."""

from __future__ import annotations

import gradio as gr

from core.export import job as ex
from core.schema.jobs import EXPORT
from webui import widgets
from webui.live import wake
from webui.shared import Shared
from webui.tabs.export import handlers as exporting


def build(shared: Shared) -> None:
    i18n = shared.i18n
    runs = exporting.run_choices()
    first = runs[0] if runs else None
    with gr.Row(equal_height=True):
        run = i18n.add(gr.Dropdown(runs, value=first, label="Run", scale=3), "Run", "训练结果")
        checkpoint = i18n.add(gr.Dropdown(exporting.checkpoint_names(first), value="final",
                                          label="Checkpoint", scale=1), "Checkpoint", "检查点")
        refresh = i18n.add(gr.Button("Refresh", scale=0, min_width=80), "Refresh", "刷新")
    plan = gr.Markdown(exporting.plan_text(first, "final", False, "en"), elem_id="export-plan")
    with gr.Row(equal_height=True):
        name = i18n.add(gr.Textbox(exporting.default_name(first, False), label="Export name",
                                   elem_id="export-name", scale=3),
                        "Export name", "导出名称",
                        f"A folder in {ex.exports_dir()}", f"{ex.exports_dir()} 下的文件夹名")
        shard = widgets.make(EXPORT["max_shard_size"], i18n, scale=1)
        adapter_only = i18n.add(gr.Checkbox(False, label="Adapter only", scale=1),
                                "Adapter only", "仅导出适配器",
                                "Skip merging: write the small adapter folder",
                                "不合并：只写出小体积的适配器")
        overwrite = i18n.add(gr.Checkbox(False, label="Overwrite an existing export", scale=1),
                             "Overwrite an existing export", "覆盖同名导出",
                             "Replaced only once the new export is complete and checked",
                             "新导出完成并通过校验后才替换")
    with gr.Row(equal_height=True):
        fmt = i18n.add(gr.Radio(list(ex.FORMATS), value="safetensors", label="Format",
                                elem_id="export-format", scale=2),
                       "Format", "格式",
                       "safetensors: a transformers folder. gguf: one file for llama.cpp, "
                       "Ollama and LM Studio, with a Modelfile (merged or whole models only)",
                       "safetensors：transformers 模型文件夹。gguf：供 llama.cpp、Ollama 和 "
                       "LM Studio 使用的单个文件，附 Modelfile（仅限合并后或完整模型）")
        gguf_type = widgets.make(EXPORT["gguf_type"], i18n, elem_id="export-gguf-type",
                                 scale=2)
    start = i18n.add(gr.Button("Export", variant="primary", elem_id="export-start"),
                     "Export", "导出")
    progress = gr.HTML("", elem_id="export-progress")
    result = gr.Markdown("", elem_id="export-result")
    history = gr.Markdown(exporting.history(first))
    # The job this page follows, named in the page for its waker (webui.live.wake).
    job = gr.Textbox("", visible="hidden", elem_id="export-job")
    news = wake.waker("export-wake", wake.job_stamp, source="export-job")

    plan_inputs = [run, checkpoint, adapter_only, shared.lang]
    run.change(exporting.run_changed, [run, adapter_only, shared.lang],
               [checkpoint, plan, name, history])
    checkpoint.change(exporting.plan_text, plan_inputs, plan)
    adapter_only.change(exporting.adapter_only_changed,
                        [run, checkpoint, adapter_only, name, shared.lang], [plan, name])
    shared.lang.change(exporting.plan_text, plan_inputs, plan)
    for event in (refresh.click, shared.runs_changed.change, shared.blocks.load):
        event(exporting.refresh, run, run)
    start.click(exporting.start, [run, checkpoint, name, shard, adapter_only, overwrite, fmt,
                                  gguf_type, shared.lang], [progress, result, job])
    news.change(exporting.tick, [job, run, shared.lang], [progress, result, history],
                show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")
