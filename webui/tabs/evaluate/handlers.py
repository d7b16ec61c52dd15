"""The Evaluate tab's actions as plain functions, so tests call them without a browser.

An evaluation is a subprocess job (core.evaluate.job) writing into RUN/evals/<time>/; the tab
starts it, follows its events for the progress bar (webui.live.wake), and renders results.json:
the metrics side by side and every prediction against its reference with the words that
differ marked, or for pairwise data the preference accuracy and every pair with the
reply each model ranked higher.
"""

from __future__ import annotations

import difflib
import html
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr

from core.evaluate import job as ev
from core.evaluate.metrics import METRICS, PREFERENCE_METRICS
from core.jobs.runs import checkpoint_names, finished_runs, resolve_run, run_config
from core.schema.jobs import EVALUATION
from webui import guard
from webui.i18n import Text
from webui.live.progress import job_progress_html as progress_html

T_PICK_RUN = Text("Choose a finished run first.", "请先选择一个已完成的训练。")
T_PICK_DATA = Text("Choose a dataset to evaluate on.", "请选择用于评估的数据集。")
T_STARTED = Text("Evaluation started: {job}", "评估已开始：{job}")
T_FAILED = Text("Evaluation failed: {error}", "评估失败：{error}")
T_ABORTED = Text("Evaluation aborted.", "评估已中止。")
T_NO_PAST = Text("No evaluations of this run yet.", "该训练尚无评估记录。")
T_WAITING = Text("starting", "正在启动")
T_REFUSED = Text("Not started: {error}", "未开始：{error}")

def dataset_choices(run: str | None = None) -> list[tuple[str, str]]:
    """(label, name): held-out splits first, then every other registered dataset, then
    the run's own training data when it is not registered (a file it was trained on)."""
    from core.data.formats import DataError
    from core.data.registry import load_info

    try:
        info = load_info()
    except DataError:  # the Data tab says why; the run's own data is still offered
        info = {}
    tests = [(f"{n} (held-out split of {e.get('test_of', '?')})", n)
             for n, e in info.items() if e.get("split") == "test"]
    others = [(n, n) for n, e in info.items() if e.get("split") != "test"]
    own = [(f"{Path(d).name} (this run's training data)", d) for d in _trained_on(run)
           if d not in info]
    return tests + others + own


def _trained_on(run: str | None) -> list[str]:
    if not run:
        return []
    try:
        return list(run_config(resolve_run(run)).dataset)
    except Exception:
        return []


def metrics_html(results: dict[str, Any]) -> str:
    if results.get("kind") == "preference":
        return preference_html(results)
    models = results["models"]
    names = [n for n in ("base", "fine_tuned") if n in models]
    heads = {"base": "Base model", "fine_tuned": "Fine-tuned"}
    head = "".join(f"<th>{heads[n]}<br><small>{html.escape(models[n]['label'])}</small></th>"
                   for n in names)
    rows = []
    for key, label, lower_better in METRICS:
        cells = []
        values = [models[n].get(key) for n in names]
        for v in values:
            best = len(names) == 2 and v == (min if lower_better else max)(values) \
                and values[0] != values[1]
            style = ' style="font-weight:bold;color:#15803d"' if best else ""
            cells.append(f"<td{style}>{_fmt(v)}</td>")
        change = ""
        if len(names) == 2 and None not in values:
            delta = values[1] - values[0]
            change = f"<td>{'+' if delta > 0 else ''}{_fmt(delta)}</td>"
        rows.append(f"<tr><td>{label}</td>{''.join(cells)}{change}</tr>")
    change_head = "<th>Change</th>" if len(names) == 2 else ""
    when = datetime.fromtimestamp(results["time"]).strftime("%Y-%m-%d %H:%M")
    return (
        f"<div><b>{html.escape(results['run'])}</b> ({html.escape(results['checkpoint'])}) on "
        f"{html.escape(_names(results['dataset']))}: {results['samples']} sample(s), greedy "
        f"answers of at most {results['max_new_tokens']} tokens, {when}</div>"
        '<table class="ps-metrics" style="width:auto;margin-top:6px">'
        f"<tr><th>Metric</th>{head}{change_head}</tr>{''.join(rows)}</table>"
    )


def _names(datasets: list[str]) -> str:
    """Dataset names as shown: a file by its name, not its whole path."""
    return ", ".join(Path(d).name for d in datasets)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def diff_html(prediction: str, reference: str) -> str:
    """The prediction with words the reference lacks highlighted, and reference words it
    misses struck through: the difference is visible without reading both texts."""
    pred, ref = prediction.split(), reference.split()
    out = []
    matcher = difflib.SequenceMatcher(a=ref, b=pred, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            out.append(html.escape(" ".join(pred[b0:b1])))
            continue
        if a1 > a0:
            out.append('<del style="color:#b91c1c;opacity:.7">'
                       f'{html.escape(" ".join(ref[a0:a1]))}</del>')
        if b1 > b0:
            out.append('<span style="background:#fde68a;color:#111">'
                       f'{html.escape(" ".join(pred[b0:b1]))}</span>')
    if not pred:
        out.insert(0, "<i>(empty answer)</i>")
    return " ".join(out)


def preference_html(results: dict[str, Any]) -> str:
    """Base vs fine-tuned preference accuracy and mean margin on pairwise data."""
    models = results["models"]
    names = [n for n in ("base", "fine_tuned") if n in models]
    heads = "".join(f"<th>{'Base model' if n == 'base' else 'Fine-tuned'}<br><small>"
                    f"{html.escape(models[n]['label'])}</small></th>" for n in names)
    rows = []
    for key, label in PREFERENCE_METRICS:
        values = [models[n].get(key) for n in names]
        if all(v is None for v in values):
            continue
        shown = [f"{100 * v:.1f}%" if v is not None and "accuracy" in key else _fmt(v)
                 for v in values]
        change = ""
        if len(names) == 2 and None not in values:
            delta = values[1] - values[0]
            change = (f"{100 * delta:+.1f} points" if "accuracy" in key else f"{delta:+.4g}")
        rows.append(f"<tr><td>{label}</td>{''.join(f'<td>{v}</td>' for v in shown)}"
                    f"<td>{change}</td></tr>")
    when = datetime.fromtimestamp(results["time"]).strftime("%Y-%m-%d %H:%M")
    change_head = "<th>Change</th>" if len(names) == 2 else "<th></th>"
    return (
        f"<div><b>{html.escape(results['run'])}</b> ({html.escape(results['checkpoint'])}) on "
        f"{html.escape(_names(results['dataset']))}: {results['samples']} pair(s), each reply "
        f"scored by its log-likelihood given the prompt, {when}</div>"
        '<table class="ps-metrics" style="width:auto;margin-top:6px">'
        f"<tr><th>Metric</th>{heads}{change_head}</tr>{''.join(rows)}</table>"
    )


def _model_columns(results: dict[str, Any]) -> tuple[list[str], str]:
    """The models an evaluation scored, in table order, and their column heads."""
    names = [n for n in ("base", "fine_tuned") if n in results["models"]]
    heads = "".join(f"<th>{'Base model' if n == 'base' else 'Fine-tuned'}</th>" for n in names)
    return names, heads


def _short_prompt(prompt: str, limit: int = 300) -> str:
    return html.escape(prompt[:limit] + ("…" if len(prompt) > limit else ""))


def _more_note(results: dict[str, Any], limit: int) -> str:
    total = len(results["rows"])
    return f"<div>First {limit} of {total} shown; all are in results.json." if total > limit \
        else ""


def pairs_html(results: dict[str, Any], limit: int = 200) -> str:
    """Every pair: the prompt, both replies, and which one each model ranked higher."""
    names, heads = _model_columns(results)
    rows = []
    for i, row in enumerate(results["rows"][:limit], 1):
        cells = []
        for n in names:
            picked = ev.ranked(row, n)
            mark = '<span style="color:#15803d">✔ chosen</span>' if picked == "chosen" else \
                '<span style="color:#b91c1c">✘ rejected</span>'
            cells.append(f"<td>{mark}<br><small>margin {row[f'{n}_margin']:+.3g}</small></td>")
        prompt = _short_prompt(row["prompt"])
        rows.append(f"<tr><td>{i}</td><td style='max-width:420px'>{prompt}</td>"
                    f"<td>{html.escape(row['chosen'])}</td>"
                    f"<td>{html.escape(row['rejected'])}</td>{''.join(cells)}</tr>")
    more = _more_note(results, limit)
    legend = ("<div style='font-size:.9em;margin:4px 0'>Ranked higher: the reply the model "
              "finds likelier (✔ when it is the chosen one)</div>")
    return (f"{legend}<div style='max-height:560px;overflow:auto'>"
            "<table class='ps-pairs' style='font-size:.92em'><tr><th>#</th>"
            f"<th>Prompt</th><th>Chosen</th><th>Rejected</th>{heads}</tr>{''.join(rows)}"
            f"</table></div>{more}")


def predictions_html(results: dict[str, Any], limit: int = 200) -> str:
    if results.get("kind") == "preference":
        return pairs_html(results, limit)
    names, heads = _model_columns(results)
    rows = []
    for i, row in enumerate(results["rows"][:limit], 1):
        cells = []
        for n in names:
            ok = row[f"{n}_scores"]["exact_match"] > 0
            mark = '<span style="color:#15803d">✔</span>' if ok else \
                '<span style="color:#b91c1c">✘</span>'
            cells.append(f"<td>{mark} {diff_html(row[n], row['reference'])}</td>")
        prompt = _short_prompt(row["prompt"])
        rows.append(f"<tr><td>{i}</td><td style='max-width:420px'>{prompt}</td>"
                    f"<td>{html.escape(row['reference'])}</td>{''.join(cells)}</tr>")
    more = _more_note(results, limit)
    legend = ("<div style='font-size:.9em;margin:4px 0'>✔ exact match · "
              "<span style='background:#fde68a;color:#111'>words not in the reference</span> · "
              "<del style='color:#b91c1c'>reference words missing</del></div>")
    return (f"{legend}<div style='max-height:560px;overflow:auto'>"
            "<table class='ps-predictions' style='font-size:.92em'><tr><th>#</th>"
            f"<th>Prompt</th><th>Reference</th>{heads}</tr>{''.join(rows)}</table></div>{more}")


def past_choices(run: str | None) -> list[tuple[str, str]]:
    if not run:
        return []
    try:
        jobs = ev.past_evaluations(resolve_run(run))
    except ValueError:
        return []
    out = []
    for job in jobs:
        data = _names(job.spec.get("dataset", []))
        if job.results:
            m = job.results["models"]
            preference = job.results.get("kind") == "preference"
            key, what, scale = ("accuracy", "preference accuracy", 100) if preference \
                else ("exact_match", "exact match", 1)
            score = " vs ".join(f"{scale * m[n][key]:.0f}%" for n in ("base", "fine_tuned")
                                if n in m)
            label = f"{job.path.name} · {data} · {what} {score}"
        else:
            label = f"{job.path.name} · {data} · {job.status}"
        out.append((label, str(job.path)))
    return out


def show(job_path: str | None) -> tuple[str, str]:
    if not job_path:
        return "", ""
    state = ev.job_state(Path(job_path))
    if state.results:
        return metrics_html(state.results), predictions_html(state.results)
    if state.status == "failed":
        return f"<div style='color:#b91c1c'>{html.escape(state.error or 'failed')}</div>", ""
    return "", ""


def start_evaluation(run: str | None, ckpt: str | None, data: str | None, n: Any,
                     new_tokens: Any, batch: Any, base: bool,
                     lang: str = "en") -> tuple[Path | None, str]:
    """Start an evaluation from the tab's values: (job folder, message), or (None, why
    not). The browser may only name registered datasets or files under data/."""
    if not run:
        return None, T_PICK_RUN(lang)
    if not data:
        return None, T_PICK_DATA(lang)
    from core.schema.config import ConfigError

    try:
        run_dir = guard.existing_run(run)
    except ValueError as exc:
        return None, T_REFUSED(lang, error=exc)
    try:
        try:
            cfg = run_config(run_dir)
        except ConfigError:
            cfg = None
        cutoff = cfg.cutoff_len if cfg else EVALUATION["cutoff_len"].default
        # The run's own training files were chosen where the run was started (the CLI
        # may name any path); scoring on them reads nothing new.
        refused = None if cfg and data in cfg.dataset else guard.browser_dataset_problem(data)
        if refused:
            return None, T_REFUSED(lang, error=refused)
        spec = ev.EvalSpec(str(run_dir), [data], ckpt or "final", n if n is not None else 0,
                           new_tokens if new_tokens is not None
                           else EVALUATION["max_new_tokens"].default,
                           batch if batch is not None else EVALUATION["batch_size"].default,
                           cutoff, bool(base))
    except ValueError as exc:
        return None, T_REFUSED(lang, error=exc)
    path = ev.start(spec)
    return path, T_STARTED(lang, job=path)


def default_dataset(run: str | None, choices: list[tuple[str, str]]) -> str | None:
    """The held-out split of the run's data; else its own training data (a score on seen
    data, but about the right task); else the first dataset offered."""
    names = [n for _, n in choices]
    if run:
        try:
            test = ev.default_dataset(resolve_run(run))
        except ValueError:
            test = None
        if test in names:
            return test
        own = [d for d in _trained_on(run) if d in names]
        if own:
            return own[0]
    return names[0] if names else None


# -- the tab's events: values in, component updates out -----------------------------------
def on_run(run: str | None) -> list[Any]:
    """A run picked: its checkpoints, its datasets and its past evaluations."""
    choices = past_choices(run)
    datasets = dataset_choices(run)
    return [gr.update(choices=checkpoint_names(run), value="final"),
            gr.update(choices=datasets, value=default_dataset(run, datasets)),
            gr.update(choices=choices, value=choices[0][1] if choices else None)]


def run_names() -> list[str]:
    """The runs that can be evaluated: finished, with a result."""
    return [p.name for p in finished_runs()]


def on_refresh(run: str | None) -> list[Any]:
    """The finished runs again (keeping the picked one) and the datasets."""
    runs = run_names()
    value = run if run in runs else (runs[0] if runs else None)
    return [gr.update(choices=runs, value=value), gr.update(choices=dataset_choices(value))]


def on_start(run: str | None, ckpt: str | None, data: str | None, n: Any, new_tokens: Any,
             batch: Any, base: bool, lang: str = "en") -> list[Any]:
    """[progress, message, job, past]."""
    path, note = start_evaluation(run, ckpt, data, n, new_tokens, batch, base, lang)
    if path is None:
        return ["", note, "", gr.update()]
    return [progress_html(0, 1, T_WAITING(lang)), note, str(path), gr.update(value=None)]


def on_tick(job_path: str, run: str | None, lang: str = "en") -> list[Any]:
    """[progress, message, metrics, predictions, past]: the bar while the job runs, its
    results once it has ended (called when the job's stamp changed: webui.live.wake)."""
    if not job_path:
        return [gr.update()] * 5
    state = ev.job_state(Path(job_path))
    message = state.message if state.status == "running" else state.status
    bar = progress_html(state.done, state.total or 1, message, state.status)
    if state.status == "running":
        return [bar, gr.update(), gr.update(), gr.update(), gr.update()]
    note = {"done": "", "aborted": T_ABORTED(lang)}.get(
        state.status, T_FAILED(lang, error=state.error))
    return [bar, note, *show(job_path), gr.update(choices=past_choices(run), value=job_path)]


def on_abort(job_path: str) -> None:
    if job_path:
        from core.jobs.runner import abort as abort_job

        abort_job(Path(job_path), timeout=5)
