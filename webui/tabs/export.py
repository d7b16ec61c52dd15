"""Export tab: write a finished run as a standalone model folder under saves/exports/.

The export is a subprocess job (core.export) so merging and writing gigabytes never block
the UI; this tab checks the request first (name, overwrite, what can be merged), starts
the job, and follows its progress events with a timer.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from core import export as ex
from core import export_gguf as gg
from core.chat import checkpoint_names, checkpoints, finished_runs, resolve_run
from core.methods import METHODS
from core.methods.common import read_manifest
from webui import guard
from webui.i18n import Text
from webui.shared import Shared
from webui.tabs.evaluate import progress_html

SHARD_SIZES = ["200MB", "500MB", "1GB", "2GB", "5GB"]
T_PICK_RUN = Text("Choose a finished run first.", "请先选择一个已完成的训练。")
T_REFUSED = Text("Not started: {error}", "未开始：{error}")
T_STARTED = Text("Export started ...", "导出已开始 ...")
T_FAILED = Text("Export failed: {error}", "导出失败：{error}")
T_DONE = Text(
    "Exported to `{path}`: {files} safetensors file(s), {mb:.1f} MB in {seconds:.0f} s. "
    "Reloaded and checked against the trained model: largest logit difference {diff:.2g}.",
    "已导出到 `{path}`：{files} 个 safetensors 文件，{mb:.1f} MB，用时 {seconds:.0f} 秒。"
    "已重新加载并与训练结果核对：logits 最大差异 {diff:.2g}。")
T_DONE_GGUF = Text(
    "Exported `{file}` to `{path}` ({mb:.1f} MB in {seconds:.0f} s), with an Ollama "
    "Modelfile and a README. Read back with transformers and compared: weight error "
    "{weights:.2g}; on {n} prompts, largest logit difference {rel:.2%} of the logit range, "
    "top-1 agreement {top1:.1%}, identical greedy answers {greedy:.0%}.",
    "已导出 `{file}` 到 `{path}`（{mb:.1f} MB，用时 {seconds:.0f} 秒），附 Ollama Modelfile 和 "
    "README。已用 transformers 重新读取并比较：权重误差 {weights:.2g}；在 {n} 个提示上，"
    "logits 最大差异为取值范围的 "
    "{rel:.2%}，top-1 一致率 {top1:.1%}，贪心回答一致 {greedy:.0%}。")
T_PLAN = {
    "merge": Text("**Merge**: {why}.", "**合并**：适配器将合并进基础模型权重，得到普通的 "
                  "transformers 模型。"),
    "full": Text("**Reshard**: {why}.", "**重新分片**：全参数/冻结微调的结果本身就是完整模型。"),
    "adapter": Text("**Adapter only**: {why}", "**仅导出适配器**：{why}"),
}


def plan_text(run: str | None, ckpt: str, adapter_only: bool, lang: str) -> str:
    if not run:
        return T_PICK_RUN(lang)
    try:
        trained = checkpoints(resolve_run(run))[ckpt or "final"]
        method = read_manifest(trained)["method"]
        how, why = ex.plan(method, adapter_only)
    except (KeyError, ValueError, OSError) as exc:
        return f"⚠️ {exc}"
    label = METHODS[method].label if method in METHODS else method
    text = T_PLAN[how](lang, why=why)
    if how == "adapter" and not adapter_only:
        text = "⚠️ " + text  # the user did not ask for it: say why it is so
    return f"{label} — {text}"


def _default_name(run: str | None, adapter_only: bool) -> str:
    return f"{run}-{'adapter' if adapter_only else 'merged'}" if run else ""


def _history(run: str | None) -> str:
    if not run:
        return ""
    try:
        jobs = ex.past_exports(resolve_run(run))
    except ValueError:
        return ""
    lines = []
    for job in jobs[:10]:
        end, spec = job["end"], job["spec"]
        if job["status"] == "done":
            kind = end.get("gguf_file") or end["plan"]
            lines.append(f"- {job['path'].name}: `{end['output_dir']}` ({kind}, "
                         f"max diff {end['max_abs_diff']:.2g})")
        else:
            lines.append(f"- {job['path'].name}: {spec.get('name')} — {job['status']}"
                         + (f": {end['error']}" if end.get("error") else ""))
    return ("**Past exports of this run**\n\n" + "\n".join(lines)) if lines else ""


def start_export(run: str | None, ckpt: str | None, name: str | None, shard: str | None,
                 only: bool, over: bool, lang: str = "en", fmt: str | None = None,
                 gguf_type: str | None = None) -> tuple[Path | None, str]:
    """Check and start an export from the tab's values: (job folder, message), or
    (None, why not)."""
    if not run:
        return None, T_PICK_RUN(lang)
    try:
        spec = ex.ExportSpec(str(guard.existing_run(run)), (name or "").strip(),
                             ckpt or "final", str(shard or "2GB"), bool(only), bool(over),
                             fmt or "safetensors", gguf_type or "q8_0")
        return ex.start(spec), T_STARTED(lang)
    except (ex.ExportError, ValueError, OSError) as exc:  # OSError: a result deleted meanwhile
        return None, T_REFUSED(lang, error=exc)


def build(shared: Shared) -> None:
    i18n = shared.i18n
    runs = [p.name for p in finished_runs()]
    first = runs[0] if runs else None
    with gr.Row(equal_height=True):
        run = i18n.add(gr.Dropdown(runs, value=first, label="Run", scale=3), "Run", "训练结果")
        checkpoint = i18n.add(gr.Dropdown(checkpoint_names(first), value="final",
                                          label="Checkpoint", scale=1), "Checkpoint", "检查点")
        refresh = i18n.add(gr.Button("Refresh", scale=0, min_width=80), "Refresh", "刷新")
    plan = gr.Markdown(plan_text(first, "final", False, "en"), elem_id="export-plan")
    with gr.Row(equal_height=True):
        name = i18n.add(gr.Textbox(_default_name(first, False), label="Export name",
                                   elem_id="export-name", scale=3),
                        "Export name", "导出名称",
                        f"A folder in {ex.exports_dir()}", f"{ex.exports_dir()} 下的文件夹名")
        shard = i18n.add(gr.Dropdown(SHARD_SIZES, value="2GB", allow_custom_value=True,
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
    history = gr.Markdown(_history(first))
    job = gr.State("")
    timer = gr.Timer(1.0, active=False)

    def on_run(run_: str | None, only: bool, lang: str) -> list[Any]:
        return [gr.update(choices=checkpoint_names(run_), value="final"),
                plan_text(run_, "final", only, lang), _default_name(run_, only),
                _history(run_)]

    def on_refresh(run_: str | None) -> Any:
        runs_ = [p.name for p in finished_runs()]
        return gr.update(choices=runs_, value=run_ if run_ in runs_ else
                         (runs_[0] if runs_ else None))

    def on_adapter_only(run_: str | None, ckpt: str, only: bool, name_: str,
                        lang: str) -> list[Any]:
        # Follow the default name only while the user has not typed their own.
        renamed = name_ in ("", _default_name(run_, not only))
        return [plan_text(run_, ckpt, only, lang),
                _default_name(run_, only) if renamed else gr.update()]

    def on_start(run_, ckpt, name_, shard_, only, over, fmt_, type_, lang) -> list[Any]:
        path, note = start_export(run_, ckpt, name_, shard_, only, over, lang, fmt_, type_)
        if path is None:
            return ["", note, "", gr.Timer(active=False)]
        return [progress_html(0, ex.STEPS, "starting"), note, str(path), gr.Timer(active=True)]

    def on_tick(job_path: str, run_: str, lang: str) -> list[Any]:
        if not job_path:
            return [gr.update(), gr.update(), gr.update(), gr.Timer(active=False)]
        state = ex.job_state(Path(job_path))
        bar = progress_html(state["done"], state["total"], state["message"], state["status"])
        if state["status"] == "running":
            return [bar, gr.update(), gr.update(), gr.Timer()]
        end = state["end"]
        if state["status"] == "done" and end.get("format") == "gguf":
            bar = progress_html(ex.STEPS, ex.STEPS, "done", "done")
            fig = end["figures"]
            text = T_DONE_GGUF(lang, file=end["gguf_file"], path=end["output_dir"],
                               mb=end["bytes"] / 1e6, seconds=end["seconds"],
                               weights=fig["max_weight_error"],
                               n=fig["greedy_prompts"], rel=fig["max_rel_logit_diff"],
                               top1=fig["top1_agreement"], greedy=fig["greedy_agreement"])
        elif state["status"] == "done":
            bar = progress_html(ex.STEPS, ex.STEPS, "done", "done")
            text = T_DONE(lang, path=end["output_dir"], files=len(end["shards"]),
                          mb=end["bytes"] / 1e6, seconds=end["seconds"],
                          diff=end["max_abs_diff"])
        else:
            text = T_FAILED(lang, error=html.escape(str(end.get("error"))))
        return [bar, text, _history(run_), gr.Timer(active=False)]

    run.change(on_run, [run, adapter_only, shared.lang], [checkpoint, plan, name, history])
    checkpoint.change(plan_text, [run, checkpoint, adapter_only, shared.lang], plan)
    adapter_only.change(on_adapter_only, [run, checkpoint, adapter_only, name, shared.lang],
                        [plan, name])
    shared.lang.change(plan_text, [run, checkpoint, adapter_only, shared.lang], plan)
    refresh.click(on_refresh, run, run)
    shared.runs_changed.change(on_refresh, run, run)
    shared.blocks.load(on_refresh, run, run)
    start.click(on_start, [run, checkpoint, name, shard, adapter_only, overwrite, fmt, gguf_type,
                           shared.lang],
                [progress, result, job, timer])
    timer.tick(on_tick, [job, run, shared.lang], [progress, result, history, timer])
