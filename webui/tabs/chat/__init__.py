"""Chat tab: talk to the base model or a finished run, or to both side by side. Layout and
wiring only; what each button does is in webui/tabs/chat/handlers.py."""

from __future__ import annotations

from typing import Any

import gradio as gr

from core.schema.jobs import GENERATION
from webui import widgets
from webui.live import wake
from webui.shared import Shared
from webui.tabs.chat import handlers as chatting
from webui.tabs.chat import serve as serving
from webui.tabs.chat.handlers import BASE_ONLY, NONE

TOOLS_LABEL = ("Tool definitions (JSON, OpenAI's layout): offered to the model with its chat "
               "template, as in training; the calls a reply makes are shown under it")

def _generation_controls(i18n: Any) -> list[Any]:
    """The Generation settings accordion: max new tokens, greedy, temperature, top-p,
    top-k, repetition penalty, in that order; bounds and defaults are the schema's
    (core.schema.jobs.GENERATION), as for the chat CLI's flags."""
    def make(name: str, **overrides: Any) -> Any:
        return widgets.make(GENERATION[name], i18n, info=None, **overrides)

    with i18n.add(gr.Accordion("Generation settings", open=False),
                  "Generation settings", "生成参数"):
        with gr.Row():
            max_new_tokens = make("max_new_tokens", elem_id="chat-max-new-tokens")
            greedy = i18n.add(gr.Checkbox(False, label="Greedy (no sampling)",
                                          elem_id="chat-greedy"),
                              "Greedy (no sampling)", "贪心解码（不采样）",
                              "Always the most likely token: the same prompt gives the same "
                              "answer", "总是选择概率最高的词元：同一提示得到同一回答")
            temperature = make("temperature")
        with gr.Row():
            top_p, top_k, repetition_penalty = (
                make(n) for n in ("top_p", "top_k", "repetition_penalty"))
    return [max_new_tokens, greedy, temperature, top_p, top_k, repetition_penalty]


def _serve_panel(shared: Shared, runs: list[str]) -> None:
    """Serve: the chosen runs over an OpenAI-compatible API (webui/tabs/chat/serve.py)."""
    i18n = shared.i18n
    with i18n.add(gr.Accordion("Serve to other programs (OpenAI-compatible API)", open=False,
                               elem_id="serve-panel"),
                  "Serve to other programs (OpenAI-compatible API)",
                  "提供给其他程序（OpenAI 兼容接口）"):
        with gr.Row(equal_height=True):
            served = i18n.add(gr.Dropdown(runs, value=runs[:1], multiselect=True, scale=3,
                                          label="Runs to serve", elem_id="serve-runs"),
                              "Runs to serve", "要提供服务的训练结果",
                              "Runs of one base share its weights",
                              "同一基础模型的训练结果共享其权重")
            base = i18n.add(gr.Checkbox(True, label="Also the base model", scale=1),
                            "Also the base model", "同时提供基础模型")
            host = i18n.add(gr.Textbox("127.0.0.1", label="Host", scale=1), "Host", "地址",
                            "Beyond 127.0.0.1 an API key is required",
                            "非 127.0.0.1 时必须设置 API 密钥")
            port = i18n.add(gr.Number(8000, label="Port", precision=0, scale=1), "Port", "端口")
        with gr.Row(equal_height=True):
            key = i18n.add(gr.Textbox("", label="API key", scale=3, elem_id="serve-key"),
                           "API key", "API 密钥", "Empty: none (loopback only)",
                           "留空表示不需要（仅限本机）")
            make_key = i18n.add(gr.Button("New key", scale=0, min_width=100), "New key",
                                "生成密钥")
            start = i18n.add(gr.Button("Start serving", variant="primary", scale=0,
                                       min_width=140, elem_id="serve-start"),
                             "Start serving", "开始服务")
            stop = i18n.add(gr.Button("Stop", scale=0, min_width=80, elem_id="serve-stop"),
                            "Stop", "停止")
        status = gr.Markdown(serving.T_IDLE("en"), elem_id="serve-status")
        with gr.Row():
            # Shown once a server answers: empty boxes read like a broken panel.
            curl = gr.Code("", language="shell", label="curl", elem_id="serve-curl",
                           visible=False)
            python = gr.Code("", language="python", label="Python", elem_id="serve-python",
                             visible=False)
        log = gr.Markdown("", elem_id="serve-log")
    job = gr.Textbox(serving.attached, visible="hidden", elem_id="serve-job")
    news = wake.waker("serve-wake", wake.job_stamp, source="serve-job")
    make_key.click(serving.new_key, None, key)
    start.click(serving.on_start, [served, base, shared.model, host, port, key, shared.lang],
                [job, status])
    stop.click(serving.on_stop, job, None)
    news.change(serving.on_tick, [job, key, shared.lang], [status, curl, python, log],
                show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")
    shared.runs_changed.change(lambda: gr.update(choices=chatting.run_choices()), None, served)


def build(shared: Shared) -> None:
    i18n = shared.i18n
    runs = chatting.run_choices()
    with gr.Row(equal_height=True):
        run = i18n.add(gr.Dropdown([BASE_ONLY, *runs], value=runs[0] if runs else BASE_ONLY,
                                   label="Run", scale=3, elem_id="chat-run"),
                       "Run", "训练结果", "A finished run, or the base model chosen at the top",
                       "已完成的训练，或顶部选择的基础模型")
        checkpoint = i18n.add(gr.Dropdown(chatting.checkpoint_choices(runs[0] if runs else None),
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
        status = gr.Markdown(chatting.T_NOT_LOADED("en"), elem_id="chat-status")
    system = i18n.add(gr.Textbox(label="System prompt", lines=1, placeholder=(
        "Optional. Empty: a run's own system prompt setting (a base model: the chat "
        "template's default).")),
        "System prompt", "系统提示词")
    with i18n.add(gr.Accordion("Tools", open=False), "Tools", "工具"):
        tools = i18n.add(gr.Code(language="json", label=TOOLS_LABEL, lines=4,
                                 elem_id="chat-tools"), TOOLS_LABEL,
                         "工具定义（JSON，OpenAI 格式）：以模型的对话模板提供给模型，与训练时相同；"
                         "回复中的工具调用显示在回复下方")
    max_new_tokens, greedy, temperature, top_p, top_k, repetition_penalty = \
        _generation_controls(i18n)
    initial = chatting.first_panes(run.value)
    with gr.Row():
        bots = [gr.Chatbot(height=420, label=chatting.pane_label(i, t),
                           elem_id=f"chat-pane-{i}", buttons=["copy"], visible=t is not None)
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

    pane_outputs = [*bots, status]
    for trigger in (run.change, checkpoint.change, compare.change, second.change,
                    shared.model.change):
        trigger(chatting.show_panes, [*selection, shared.lang], pane_outputs)
    run.change(chatting.checkpoints_of, run, checkpoint)
    for event in (refresh.click, shared.runs_changed.change, shared.blocks.load):
        event(chatting.refresh, [run, second, known], [run, second, known])
    load.click(chatting.load, [*selection, shared.lang], status)
    unload.click(chatting.unload, shared.lang, status)
    inputs = [tools, message, *selection, system, max_new_tokens, greedy, temperature, top_p,
              top_k, repetition_penalty, shared.lang, *bots]
    outputs = [message, *bots, status]
    send.click(chatting.send_with_tools, inputs, outputs)
    message.submit(chatting.send_with_tools, inputs, outputs)
    stop.click(chatting.CLIENT.stop, None, None)
    clear.click(lambda: [[] for _ in bots], None, bots)
    shared.lang.change(chatting.show_panes, [*selection, shared.lang], pane_outputs)
    _serve_panel(shared, runs)
