"""The Export tab's actions as plain functions, so tests call them without a browser: what
an export of a run would do (merge, reshard or adapter only, and why), starting one, and
following it to its checked result."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from core.export import job as ex
from core.jobs.runs import checkpoint_names, checkpoints, finished_runs, resolve_run
from core.methods import METHODS
from core.methods.result import read_manifest
from core.schema.jobs import EXPORT
from webui import guard
from webui.i18n import Text
from webui.live.progress import job_progress_html

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
    "{weights:.2g}; on {n} prompts ({source}), largest logit difference {rel:.2%} of the "
    "logit range, top-1 agreement {top1:.1%}, identical greedy answers {greedy:.0%}.",
    "已导出 `{file}` 到 `{path}`（{mb:.1f} MB，用时 {seconds:.0f} 秒），附 Ollama Modelfile 和 "
    "README。已用 transformers 重新读取并比较：权重误差 {weights:.2g}；在 {n} 个提示"
    "（{source}）上，"
    "logits 最大差异为取值范围的 "
    "{rel:.2%}，top-1 一致率 {top1:.1%}，贪心回答一致 {greedy:.0%}。")
T_PLAN = {
    "merge": Text("**Merge**: {why}.", "**合并**：适配器将合并进基础模型权重，得到普通的 "
                  "transformers 模型。"),
    "full": Text("**Reshard**: {why}.", "**重新分片**：全参数/冻结微调的结果本身就是完整模型。"),
    "adapter": Text("**Adapter only**: {why}", "**仅导出适配器**：{why}"),
}


def run_choices() -> list[str]:
    return [p.name for p in finished_runs()]


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


def default_name(run: str | None, adapter_only: bool) -> str:
    return f"{run}-{'adapter' if adapter_only else 'merged'}" if run else ""


def history(run: str | None) -> str:
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
                             ckpt or "final", str(shard or EXPORT["max_shard_size"].default),
                             bool(only), bool(over), fmt or "safetensors",
                             gguf_type or EXPORT["gguf_type"].default)
        return ex.start(spec), T_STARTED(lang)
    except (ex.ExportError, ValueError, OSError) as exc:  # OSError: a result deleted meanwhile
        return None, T_REFUSED(lang, error=exc)


def run_changed(run_: str | None, only: bool, lang: str) -> list[Any]:
    return [gr.update(choices=checkpoint_names(run_), value="final"),
            plan_text(run_, "final", only, lang), default_name(run_, only),
            history(run_)]


def refresh(run_: str | None) -> Any:
    runs_ = run_choices()
    return gr.update(choices=runs_, value=run_ if run_ in runs_ else
                     (runs_[0] if runs_ else None))


def adapter_only_changed(run_: str | None, ckpt: str, only: bool, name_: str,
                    lang: str) -> list[Any]:
    # Follow the default name only while the user has not typed their own.
    renamed = name_ in ("", default_name(run_, not only))
    return [plan_text(run_, ckpt, only, lang),
            default_name(run_, only) if renamed else gr.update()]


def start(run_: str | None, ckpt: str, name_: str, shard_: str, only: bool, over: bool,
          fmt_: str, type_: str, lang: str) -> list[Any]:
    path, note = start_export(run_, ckpt, name_, shard_, only, over, lang, fmt_, type_)
    if path is None:
        return ["", note, ""]
    return [job_progress_html(0, ex.STEPS, "starting"), note, str(path)]


def tick(job_path: str, run_: str, lang: str) -> list[Any]:
    if not job_path:
        return [gr.update(), gr.update(), gr.update()]
    state = ex.job_state(Path(job_path))
    bar = job_progress_html(state["done"], state["total"], state["message"], state["status"])
    if state["status"] == "running":
        return [bar, gr.update(), gr.update()]
    return [*finished(state, lang), history(run_)]


def finished(state: dict[str, Any], lang: str) -> tuple[str, str]:
    """(progress bar, message) of an export that has ended."""
    bar = job_progress_html(state["done"], state["total"], state["message"], state["status"])
    end = state["end"]
    if state["status"] == "done" and end.get("format") == "gguf":
        bar = job_progress_html(ex.STEPS, ex.STEPS, "done", "done")
        fig = end["figures"]
        text = T_DONE_GGUF(lang, file=end["gguf_file"], path=end["output_dir"],
                           mb=end["bytes"] / 1e6, seconds=end["seconds"],
                           weights=fig["max_weight_error"],
                           n=fig["greedy_prompts"], rel=fig["max_rel_logit_diff"],
                           source=fig.get("prompts_source", "the probe and the run's prompts"),
                           top1=fig["top1_agreement"], greedy=fig["greedy_agreement"])
    elif state["status"] == "done":
        bar = job_progress_html(ex.STEPS, ex.STEPS, "done", "done")
        text = T_DONE(lang, path=end["output_dir"], files=len(end["shards"]),
                      mb=end["bytes"] / 1e6, seconds=end["seconds"],
                      diff=end["max_abs_diff"])
    else:
        text = T_FAILED(lang, error=html.escape(str(end.get("error"))))
    return bar, text
