"""The Chat tab's Serve panel: start and stop `peft-studio serve` for the chosen runs, show
where it answers, copyable curl and Python snippets, and the request log with tokens/s.

The endpoint is a job (core/serve/job.py): closing the page leaves it serving, and a page
opened later finds it again. Its events are the log; the page follows them with a waker
(webui.live.wake), never a timer.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import gradio as gr

from core.jobs.process import process_alive
from core.jobs.runs import RUNNING, run_status
from core.serve import job as serving
from webui import guard
from webui.i18n import Text

T_IDLE = Text("Not serving. Choose runs and press Start serving.",
              "未在提供服务。选择训练结果后点击“开始服务”。")
T_STARTING = Text("Starting: loading {models} ...", "正在启动：加载 {models} ...")
T_READY = Text("Serving **{models}** at `{url}` (engine: {engine}{key}).",
               "正在提供服务：**{models}**，地址 `{url}`（引擎：{engine}{key}）。")
T_KEY = Text("; API key required", "；需要 API 密钥")
T_ENDED = Text("Stopped ({status}). {note}", "已停止（{status}）。{note}")
T_ERROR = Text("Error: {error}", "错误：{error}")
T_NO_RUNS = Text("Choose at least one run (or tick the base model).",
                 "请至少选择一个训练结果（或勾选基础模型）。")
LOG_ROWS = 20


def attached() -> str:
    """The serving job a page opens with: the newest one still serving, if any."""
    jobs = serving.running()
    return str(jobs[0]) if jobs else ""


def new_key() -> str:
    return f"sk-studio-{secrets.token_urlsafe(18)}"


def on_start(runs: list[str] | None, base: bool, model: str | None, host: str, port: Any,
             key: str, lang: str = "en") -> list[Any]:
    """[job, status]."""
    try:
        folders = [str(guard.existing_run(r)) for r in runs or []]
        if not folders and not base:
            return ["", T_NO_RUNS(lang)]
        spec = serving.ServeSpec(runs=folders, base=base, model=model or "embedded",
                                 host=(host or "127.0.0.1").strip(), port=int(port or 0))
        job = serving.start(spec, (key or "").strip() or None)
    except (ValueError, TypeError) as exc:
        return ["", T_ERROR(lang, error=exc)]
    return [str(job), T_STARTING(lang, models=", ".join(serving.served_models(spec)))]


def on_stop(job: str) -> None:
    if job and process_alive(Path(job)):
        serving.stop(Path(job), timeout=10)


def examples(url: str, model: str, needs_key: bool, key: str = "") -> tuple[str, str]:
    """(curl, Python) calling the endpoint, as a user pastes them; a key this page does
    not know is written as the variable it is usually kept in."""
    shown = (key or "$PEFT_STUDIO_API_KEY") if needs_key else "none"
    auth = f'  -H "Authorization: Bearer {shown}" \\\n' if needs_key else ""
    curl = (f"curl {url}/chat/completions \\\n  -H \"Content-Type: application/json\" \\\n"
            f"{auth}  -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", "
            "\"content\": \"Hello!\"}]}'")
    python = ("from openai import OpenAI\n\n"
              f"client = OpenAI(base_url=\"{url}\", api_key=\"{shown}\")\n"
              "reply = client.chat.completions.create(\n"
              f"    model=\"{model}\",\n"
              "    messages=[{\"role\": \"user\", \"content\": \"Hello!\"}])\n"
              "print(reply.choices[0].message.content)")
    return curl, python


def _log(events: list[dict[str, Any]]) -> str:
    rows = [e for e in events if e["type"] == "request"][-LOG_ROWS:]
    if not rows:
        return ""
    lines = ["| time | model | status | prompt | reply | tokens/s | batch |",
             "|---|---|---|---|---|---|---|"]
    for e in reversed(rows):
        when = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        lines.append(f"| {when} | {e.get('model', '')} | {e.get('code', '')} | "
                     f"{e.get('prompt_tokens', '')} | {e.get('completion_tokens', '')} | "
                     f"{e.get('tokens_per_second') or ''} | {e.get('batch', '')} |")
    return "\n".join(lines)


def on_tick(job: str, key: str, lang: str = "en") -> list[Any]:
    """[status, curl, python, log] of the followed job (when its stamp changed)."""
    if not job:
        return [T_IDLE(lang), gr.update(), gr.update(), ""]
    from core.jobs.events import read_events

    path = Path(job)
    events = read_events(path)[0]
    status, end = run_status(path)
    ready = next((e for e in reversed(events) if e["type"] == "ready"), None)
    if status != RUNNING:
        text = T_ENDED(lang, status=status, note=end.get("note") or end.get("error") or "")
        return [text, gr.update(visible=False), gr.update(visible=False), _log(events)]
    if ready is None:
        loading = next((e["message"] for e in reversed(events) if e["type"] == "progress"), "")
        return [T_STARTING(lang, models=loading.removeprefix("loading ")), gr.update(),
                gr.update(), ""]
    text = T_READY(lang, models=", ".join(ready["models"]), url=ready["url"],
                   engine=ready["engine"], key=T_KEY(lang) if ready.get("key") else "")
    curl, python = examples(ready["url"], ready["models"][0], bool(ready.get("key")), key)
    return [text, gr.update(value=curl, visible=True), gr.update(value=python, visible=True),
            _log(events)]
