"""The Chat tab's actions as plain functions, so tests call them without a browser:
which panes show which model, loading and unloading the chat worker, and streaming one
message to every pane.

The weights live in a chat worker subprocess (core.chat.engine.ChatClient), one per UI process:
model memory belongs to the machine, not to a browser tab, and "Unload" ends the worker,
which gives every byte back. Models load on the first message unless loaded before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from core.chat.engine import ChatClient, ChatError, GenerationSettings, with_system
from core.jobs.runs import (
    Target,
    base_target,
    checkpoint_names,
    finished_runs,
    resolve_run,
    run_target,
)
from webui.guard import check_browser_model
from webui.i18n import Text

CLIENT = ChatClient()
BASE_ONLY = "(base model only)"
NONE = "(none)"
PANES = 3  # base, fine-tuned, a second run

T_NOT_LOADED = Text("No model loaded. Models load on the first message, or press Load.",
                    "尚未加载模型。发送第一条消息时自动加载，或点击“加载”。")
T_LOADING = Text("Loading {label} ...", "正在加载 {label} ...")
T_WAITING = Text("Waiting for {holder} to finish: one job uses the device at a time "
                 "(Stop gives up waiting).", "正在等待 {holder} 结束：设备一次只运行一个任务"
                 "（点停止可放弃等待）。")
T_LOADED = Text("Loaded: {names}. Worker process {pid}, {mb} MB of memory.",
                "已加载：{names}。工作进程 {pid}，占用内存 {mb} MB。")
T_UNLOADED = Text("Unloaded: the worker process {pid} ended and its memory is freed.",
                  "已卸载：工作进程 {pid} 已结束，内存已释放。")
T_NOTHING = Text("Nothing was loaded.", "没有已加载的模型。")
T_STREAMING = Text("{label} is answering ...", "{label} 正在回答 ...")
T_DONE = Text("{tokens} tokens in {seconds:.1f} s ({rate:.1f} tokens/s){stopped}.",
              "{tokens} 个词元，用时 {seconds:.1f} 秒（{rate:.1f} 词元/秒）{stopped}。")
T_STOPPED = Text(", stopped", "，已停止")
T_NOTE = Text("Note: {note}.", "注意：{note}。")
T_ERROR = Text("Error: {error}", "错误：{error}")
T_EMPTY = Text("Type a message first.", "请先输入消息。")


def run_choices() -> list[str]:
    return [p.name for p in finished_runs()]


def checkpoint_choices(run: str | None) -> list[str]:
    return checkpoint_names(None if run in (BASE_ONLY, NONE) else run)


def targets(model: str | None, run: str, checkpoint: str, compare: bool,
            second: str) -> list[Target | None]:
    """One target per pane (base, fine-tuned, second run); None for an unused pane."""
    panes: list[Target | None] = [None] * PANES
    if run and run != BASE_ONLY:
        tuned = run_target(resolve_run(run), checkpoint or "final")
        panes[1] = tuned
        if compare:
            panes[0] = base_target(tuned.model)
    else:
        check_browser_model(model)  # the box is free text: a page could name any folder
        panes[0] = base_target(model or "embedded")
    if second and second != NONE:
        panes[2] = run_target(resolve_run(second), "final")
    return panes


def first_panes(run: str) -> list[Target | None]:
    """The panes a page opens with: the chosen run's, else the embedded model alone."""
    try:
        return targets("embedded", run, "final", False, NONE)
    except ValueError:
        return [base_target("embedded"), None, None]


def load_order(panes: list[Target | None]) -> list[Target]:
    """Fine-tuned first: the base can then answer through the same weights with the
    adapter switched off, instead of a second copy."""
    order = [panes[1], panes[0], panes[2]]
    return [t for t in order if t is not None]


def status(lang: str) -> str:
    if not CLIENT.alive or not CLIENT.loaded:
        return T_NOT_LOADED(lang)
    names = ", ".join(info["label"] for info in CLIENT.loaded.values())
    return T_LOADED(lang, names=names, pid=CLIENT.pid, mb=_rss_mb(CLIENT.pid))


def _rss_mb(pid: int | None) -> str:
    import psutil  # works where there is no /proc (macOS, Windows)

    if pid is None:
        return "?"
    try:
        return f"{psutil.Process(pid).memory_info().rss / 2**20:,.0f}"
    except (psutil.Error, TypeError, ValueError):
        return "?"


def _text(content: Any) -> str:
    """A Chatbot message's content as plain text (Gradio hands back a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    if isinstance(content, list):
        return "".join(_text(c) for c in content)
    return ""


def _messages(history: list[dict]) -> list[dict[str, str]]:
    """The conversation the model is sent: a pane's messages without the ones shown only
    to the reader (the tool calls set out under a reply, which holds them as written)."""
    return [{"role": m["role"], "content": _text(m["content"])} for m in history or []
            if not m.get("metadata")]


def parse_tools(text: str | None) -> list[dict]:
    """The Chat tab's tools box: tool definitions as JSON (OpenAI's list of {"type":
    "function", "function": {...}}, or the bare functions); empty for none. A ValueError
    says what is wrong."""
    from core.data.tools import definitions

    return definitions((text or "").strip() or None,
                       lambda why: ValueError(f"the tools box: {why}"))


def shown_calls(reply: str) -> list[dict]:
    """Messages setting out the tool calls in a reply (the <tool_call> blocks the serving
    API reads too), shown under it; none when it calls nothing."""
    import json

    from core.serve.protocol import tool_calls

    out = []
    for call in tool_calls(reply)[1]:
        function = call["function"]
        try:
            arguments = json.dumps(json.loads(function["arguments"]), indent=2,
                                   ensure_ascii=False)
        except ValueError:
            arguments = function["arguments"]
        out.append({"role": "assistant", "content": f"```json\n{arguments}\n```",
                    "metadata": {"title": f"🔧 Tool call: {function['name']}"}})
    return out


ROLES = ("Base model", "Fine-tuned", "Second run")


def pane_label(i: int, t: Target | None) -> str:
    return f"{ROLES[i]}: {t.label.removeprefix('base: ')}" if t else ""


def pane_updates(panes: list[Target | None]) -> list[Any]:
    return [gr.update(visible=t is not None, label=pane_label(i, t))
            for i, t in enumerate(panes)]


def show_panes(model: str | None, run_: str, ckpt: str, compare_: bool, second_: str,
               lang: str) -> list[Any]:
    try:
        panes = targets(model, run_, ckpt, compare_, second_)
    except ValueError as exc:
        return [gr.update()] * PANES + [T_ERROR(lang, error=exc)]
    return pane_updates(panes) + [status(lang)]


def checkpoints_of(run_: str) -> Any:
    choices = checkpoint_choices(run_)
    return gr.update(choices=choices, value=choices[0])


def refresh(run_: str, second_: str, known_: list[str]) -> list[Any]:
    runs_ = run_choices()
    if run_ not in runs_:
        # A run that just finished is what the person wants to talk to; a choice they
        # made among the runs they already had stays.
        fresh = [r for r in runs_ if r not in known_]
        run_ = fresh[0] if fresh else BASE_ONLY
    return [gr.update(choices=[BASE_ONLY, *runs_], value=run_),
            gr.update(choices=[NONE, *runs_], value=second_ if second_ in runs_ else NONE),
            runs_]


def loading(panes: list[Target | None], lang: str) -> Iterator[str]:
    """Status lines while the panes' models load (those not loaded yet)."""
    for t in load_order(panes):
        if t.key not in CLIENT.loaded:
            yield T_LOADING(lang, label=t.label)
            for event in CLIENT.load_events(t):
                if event["type"] == "waiting":
                    yield T_WAITING(lang, holder=event["holder"])


def load(model: str | None, run_: str, ckpt: str, compare_: bool, second_: str,
         lang: str) -> Iterator[str]:
    try:
        yield from loading(targets(model, run_, ckpt, compare_, second_), lang)
    except (ChatError, ValueError) as exc:
        yield T_ERROR(lang, error=exc)
        return
    yield status(lang)


def unload(lang: str) -> str:
    pid = CLIENT.pid
    CLIENT.unload()
    return T_UNLOADED(lang, pid=pid) if pid else T_NOTHING(lang)


def send(text: str, model: str | None, run_: str, ckpt: str, compare_: bool, second_: str,
         system_: str, max_new: int, greedy_: bool, temp: float, top_p_: float, top_k_: int,
         rep: float, lang: str, *histories: list[dict]) -> Iterator[list[Any]]:
    """Send `text` to every pane in turn, streaming each reply into its history; yields
    [message box, *histories, status]."""
    yield from send_with_tools("", text, model, run_, ckpt, compare_, second_, system_,
                               max_new, greedy_, temp, top_p_, top_k_, rep, lang, *histories)


def send_with_tools(tools_: str, text: str, model: str | None, run_: str, ckpt: str,
                    compare_: bool, second_: str, system_: str, max_new: int, greedy_: bool,
                    temp: float, top_p_: float, top_k_: int, rep: float, lang: str,
                    *histories: list[dict]) -> Iterator[list[Any]]:
    """`send`, offering the models the tool definitions of the tools box (JSON); the
    calls a reply makes are set out under it."""
    histories = tuple(list(h or []) for h in histories)
    if not (text or "").strip():
        yield [gr.update(), *histories, T_EMPTY(lang)]
        return
    try:
        tools = parse_tools(tools_)
    except ValueError as exc:
        yield [gr.update(), *histories, T_ERROR(lang, error=exc)]
        return
    try:  # the sliders bound these, but an API client can send anything
        settings = GenerationSettings(max_new, not greedy_, temp, top_p_, top_k_, rep)
    except ValueError as exc:
        yield [gr.update(), *histories, T_ERROR(lang, error=exc)]
        return
    try:
        panes = targets(model, run_, ckpt, compare_, second_)
        for line in loading(panes, lang):
            yield ["", *histories, line]
        answering = [i for i, target in enumerate(panes) if target is not None]
        for i in answering:
            for line in _reply(panes[i], text, system_, settings, histories[i], lang,
                               last=i == answering[-1], tools=tools):
                yield ["", *histories, line]
    except (ChatError, ValueError) as exc:
        yield ["", *histories, T_ERROR(lang, error=exc)]


def _reply(target: Target, text: str, system: str, settings: GenerationSettings,
           history: list[dict], lang: str, last: bool,
           tools: list[dict] | None = None) -> Iterator[str]:
    """Stream one pane's reply into `history`, yielding the status line as it grows. Only
    the `last` pane to answer says done: the status must not read finished while another
    pane has yet to answer."""
    prompt = with_system(_messages(history) + [{"role": "user", "content": text}], system)
    history += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
    yield T_STREAMING(lang, label=target.label)
    for event in CLIENT.events(target, prompt, settings, tools):
        if event["type"] == "chunk":
            history[-1]["content"] += event["text"]
            yield T_STREAMING(lang, label=target.label)
        elif event["type"] == "done" and tools:
            history += shown_calls(history[-1]["content"])
        if event["type"] == "done" and last:
            rate = event["tokens"] / max(event["seconds"], 1e-6)
            last = T_DONE(lang, tokens=event["tokens"], seconds=event["seconds"], rate=rate,
                          stopped=T_STOPPED(lang) if event["stopped"] else "")
            notes = "".join(f"  \n{T_NOTE(lang, note=n)}" for n in event.get("notes") or ())
            yield f"{status(lang)}  \n{last}{notes}"
