"""Chat tab: talk to the base model or a finished run, or to both side by side.

The weights live in a chat worker subprocess (core.chat.ChatClient), one per UI process:
model memory belongs to the machine, not to a browser tab, and "Unload" ends the worker,
which gives every byte back. Models load on the first message unless loaded before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from core.chat import (
    ChatClient,
    ChatError,
    GenerationSettings,
    Target,
    base_target,
    checkpoint_names,
    finished_runs,
    resolve_run,
    run_target,
    with_system,
)
from webui.i18n import Text
from webui.shared import Shared

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
T_ERROR = Text("Error: {error}", "错误：{error}")
T_EMPTY = Text("Type a message first.", "请先输入消息。")


def run_choices() -> list[str]:
    return [p.name for p in finished_runs()]


def _checkpoint_choices(run: str | None) -> list[str]:
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
        panes[0] = base_target(model or "embedded")
    if second and second != NONE:
        panes[2] = run_target(resolve_run(second), "final")
    return panes


def load_order(panes: list[Target | None]) -> list[Target]:
    """Fine-tuned first: the base can then answer through the same weights with the
    adapter switched off, instead of a second copy."""
    order = [panes[1], panes[0], panes[2]]
    return [t for t in order if t is not None]


def _status(lang: str) -> str:
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
    return [{"role": m["role"], "content": _text(m["content"])} for m in history or []]


ROLES = ("Base model", "Fine-tuned", "Second run")


def _pane_label(i: int, t: Target | None) -> str:
    return f"{ROLES[i]}: {t.label.removeprefix('base: ')}" if t else ""


def _pane_updates(panes: list[Target | None]) -> list[Any]:
    return [gr.update(visible=t is not None, label=_pane_label(i, t))
            for i, t in enumerate(panes)]


def build(shared: Shared) -> None:
    i18n = shared.i18n
    runs = run_choices()
    with gr.Row(equal_height=True):
        run = i18n.add(gr.Dropdown([BASE_ONLY, *runs], value=runs[0] if runs else BASE_ONLY,
                                   label="Run", scale=3, elem_id="chat-run"),
                       "Run", "训练结果", "A finished run, or the base model chosen at the top",
                       "已完成的训练，或顶部选择的基础模型")
        checkpoint = i18n.add(gr.Dropdown(_checkpoint_choices(runs[0] if runs else None),
                                          value="final", label="Checkpoint", scale=1),
                              "Checkpoint", "检查点")
        compare = i18n.add(gr.Checkbox(False, label="Compare with the base model", scale=1,
                                       elem_id="chat-compare"),
                           "Compare with the base model", "与基础模型对比")
        second = i18n.add(gr.Dropdown([NONE, *runs], value=NONE, label="Also compare with",
                                      scale=2), "Also compare with", "再对比另一个训练结果")
        refresh = i18n.add(gr.Button("Refresh", scale=0, min_width=80), "Refresh", "刷新")
    known = gr.State(runs)  # the finished runs this page has listed
    with gr.Row(equal_height=True):
        load = i18n.add(gr.Button("Load", variant="secondary", scale=0, min_width=100,
                                  elem_id="chat-load"),
                        "Load", "加载")
        unload = i18n.add(gr.Button("Unload", scale=0, min_width=100, elem_id="chat-unload"),
                          "Unload", "卸载")
        status = gr.Markdown(T_NOT_LOADED("en"), elem_id="chat-status")
    system = i18n.add(gr.Textbox(label="System prompt", lines=1, placeholder=(
        "Optional. Leave empty to use the chat template's default.")),
        "System prompt", "系统提示词")
    with i18n.add(gr.Accordion("Generation settings", open=False),
                  "Generation settings", "生成参数"):
        with gr.Row():
            max_new_tokens = i18n.add(gr.Slider(1, 4096, 256, step=1, label="Max new tokens",
                                                elem_id="chat-max-new-tokens"),
                                      "Max new tokens", "最大生成词元数")
            greedy = i18n.add(gr.Checkbox(False, label="Greedy (no sampling)",
                                          elem_id="chat-greedy"),
                              "Greedy (no sampling)", "贪心解码（不采样）",
                              "Always the most likely token: the same prompt gives the same "
                              "answer", "总是选择概率最高的词元：同一提示得到同一回答")
            temperature = i18n.add(gr.Slider(0.05, 2.0, 0.7, step=0.05, label="Temperature"),
                                   "Temperature", "温度")
        with gr.Row():
            top_p = i18n.add(gr.Slider(0.05, 1.0, 0.9, step=0.05, label="Top-p"),
                             "Top-p", "Top-p")
            top_k = i18n.add(gr.Slider(0, 200, 50, step=1, label="Top-k (0 = off)"),
                             "Top-k (0 = off)", "Top-k（0 表示不限）")
            repetition_penalty = i18n.add(gr.Slider(1.0, 2.0, 1.1, step=0.05,
                                                    label="Repetition penalty"),
                                          "Repetition penalty", "重复惩罚")
    try:
        initial = targets("embedded", run.value, "final", False, NONE)
    except ValueError:
        initial = [base_target("embedded"), None, None]
    with gr.Row():
        bots = [gr.Chatbot(height=420, label=_pane_label(i, t), elem_id=f"chat-pane-{i}",
                           buttons=["copy"], visible=t is not None)
                for i, t in enumerate(initial)]
    with gr.Row(equal_height=True):
        message = i18n.add(gr.Textbox(label="Message", placeholder="Type a message, press "
                                      "Enter", scale=6, elem_id="chat-message"),
                           "Message", "消息")
        send = i18n.add(gr.Button("Send", variant="primary", scale=0, min_width=90,
                                  elem_id="chat-send"), "Send", "发送")
        stop = i18n.add(gr.Button("Stop", scale=0, min_width=80), "Stop", "停止")
        clear = i18n.add(gr.Button("Clear", scale=0, min_width=80), "Clear", "清空")

    selection = [shared.model, run, checkpoint, compare, second]

    def show_panes(model: str | None, run_: str, ckpt: str, compare_: bool, second_: str,
                   lang: str) -> list[Any]:
        try:
            panes = targets(model, run_, ckpt, compare_, second_)
        except ValueError as exc:
            return [gr.update()] * PANES + [T_ERROR(lang, error=exc)]
        return _pane_updates(panes) + [_status(lang)]

    def on_run(run_: str) -> Any:
        choices = _checkpoint_choices(run_)
        return gr.update(choices=choices, value=choices[0])

    def on_refresh(run_: str, second_: str, known_: list[str]) -> list[Any]:
        runs_ = run_choices()
        if run_ not in runs_:
            # A run that just finished is what the person wants to talk to; a choice they
            # made among the runs they already had stays.
            fresh = [r for r in runs_ if r not in known_]
            run_ = fresh[0] if fresh else BASE_ONLY
        return [gr.update(choices=[BASE_ONLY, *runs_], value=run_),
                gr.update(choices=[NONE, *runs_], value=second_ if second_ in runs_ else NONE),
                runs_]

    def on_load(model, run_, ckpt, compare_, second_, lang) -> Iterator[str]:
        try:
            for t in load_order(targets(model, run_, ckpt, compare_, second_)):
                if t.key not in CLIENT.loaded:
                    yield T_LOADING(lang, label=t.label)
                    for event in CLIENT.load_events(t):
                        if event["type"] == "waiting":
                            yield T_WAITING(lang, holder=event["holder"])
        except (ChatError, ValueError) as exc:
            yield T_ERROR(lang, error=exc)
            return
        yield _status(lang)

    def on_unload(lang: str) -> str:
        pid = CLIENT.pid
        CLIENT.unload()
        return T_UNLOADED(lang, pid=pid) if pid else T_NOTHING(lang)

    def on_send(text, model, run_, ckpt, compare_, second_, system_, max_new, greedy_,
                temp, top_p_, top_k_, rep, lang, *histories) -> Iterator[list[Any]]:
        histories = [list(h or []) for h in histories]
        if not (text or "").strip():
            yield [gr.update(), *histories, T_EMPTY(lang)]
            return
        try:  # the sliders bound these, but an API client can send anything
            settings = GenerationSettings(max_new, not greedy_, temp, top_p_, top_k_, rep)
        except ValueError as exc:
            yield [gr.update(), *histories, T_ERROR(lang, error=exc)]
            return
        try:
            panes = targets(model, run_, ckpt, compare_, second_)
            for t in load_order(panes):
                if t.key not in CLIENT.loaded:
                    yield ["", *histories, T_LOADING(lang, label=t.label)]
                    for event in CLIENT.load_events(t):
                        if event["type"] == "waiting":
                            yield ["", *histories, T_WAITING(lang, holder=event["holder"])]
            for i, target in enumerate(panes):
                if target is None:
                    continue
                prompt = with_system(_messages(histories[i]) +
                                     [{"role": "user", "content": text}], system_)
                histories[i] += [{"role": "user", "content": text},
                                 {"role": "assistant", "content": ""}]
                yield ["", *histories, T_STREAMING(lang, label=target.label)]
                for event in CLIENT.events(target, prompt, settings):
                    if event["type"] == "chunk":
                        histories[i][-1]["content"] += event["text"]
                        yield ["", *histories, T_STREAMING(lang, label=target.label)]
                    elif event["type"] == "done":
                        done = event
            rate = done["tokens"] / max(done["seconds"], 1e-6)
            last = T_DONE(lang, tokens=done["tokens"], seconds=done["seconds"], rate=rate,
                          stopped=T_STOPPED(lang) if done["stopped"] else "")
            yield ["", *histories, f"{_status(lang)}  \n{last}"]
        except (ChatError, ValueError) as exc:
            yield ["", *histories, T_ERROR(lang, error=exc)]

    pane_outputs = [*bots, status]
    for trigger in (run.change, checkpoint.change, compare.change, second.change,
                    shared.model.change):
        trigger(show_panes, [*selection, shared.lang], pane_outputs)
    run.change(on_run, run, checkpoint)
    for event in (refresh.click, shared.runs_changed.change, shared.blocks.load):
        event(on_refresh, [run, second, known], [run, second, known])
    load.click(on_load, [*selection, shared.lang], status)
    unload.click(on_unload, shared.lang, status)
    inputs = [message, *selection, system, max_new_tokens, greedy, temperature, top_p, top_k,
              repetition_penalty, shared.lang, *bots]
    outputs = [message, *bots, status]
    send.click(on_send, inputs, outputs)
    message.submit(on_send, inputs, outputs)
    stop.click(CLIENT.stop, None, None)
    clear.click(lambda: [[] for _ in bots], None, bots)
    shared.lang.change(show_panes, [*selection, shared.lang], pane_outputs)
