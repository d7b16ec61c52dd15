"""Export tab: write a finished run as a standalone model folder under saves/exports/.

The export is a subprocess job (core.export.job) so merging and writing gigabytes never block
the UI; the tab checks the request first (name, overwrite, what can be merged), starts the
job, and follows its progress events with a timer. Layout and wiring only: what each
control does is in webui/tabs/export/handlers.py."""

from __future__ import annotations

import gradio as gr

from core.export import gguf as gg
from core.export import job as ex
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
        shard = i18n.add(gr.Dropdown(exporting.SHARD_SIZES, value="2GB", allow_custom_value=True,
                                     label="Max shard size", scale=1),
                         "Max shard size", "最大分片大小", "e.g. 200MB, 2GB", "例如 200MB、2GB")
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
        gguf_type = i18n.add(gr.Dropdown(list(gg.TYPES), value="q8_0", label="GGUF type",
                                         elem_id="export-gguf-type", scale=2),
                             "GGUF type", "GGUF 类型",
                             "f16/bf16 keep the weights; q8_0 is close and half the size; "
                             "q5_*/q4_* are smaller and lossier (checked against bounds "
                             "per type). For Q4_K_M and other k-quants, export f16 and run "
                             "llama.cpp's llama-quantize on it",
                             "f16/bf16 保留权重；q8_0 接近原模型、体积减半；q5_*/q4_* 更小、"
                             "损失更大（按类型设定容差校验）。Q4_K_M 等 k-quant 类型："
                             "导出 f16 后用 llama.cpp 的 llama-quantize 转换")
    start = i18n.add(gr.Button("Export", variant="primary", elem_id="export-start"),
                     "Export", "导出")
    progress = gr.HTML("", elem_id="export-progress")
    result = gr.Markdown("", elem_id="export-result")
    history = gr.Markdown(exporting.history(first))
    job = gr.State("")
    timer = gr.Timer(1.0, active=False)

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
                                  gguf_type, shared.lang], [progress, result, job, timer])
    timer.tick(exporting.tick, [job, run, shared.lang], [progress, result, history, timer])
