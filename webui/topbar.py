"""The top bar every tab shares: model, method, quantization and language."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from core import models
from core.methods import METHODS
from core.schema.config import SETTINGS
from webui.guard import browser_model_problem, offered_models
from webui.i18n import I18n, Text
from webui.shared import Shared
from webui.widgets import make, method_choices

KINDS = {
    "embedded": Text("✓ Bundled {label} (works offline)", "✓ 内置模型 {label}（离线可用）"),
    "gguf": Text("✓ GGUF file {label} (converted to safetensors once, on first use)",
                 "✓ GGUF 文件 {label}（首次使用时转换一次）"),
    "local": Text("✓ Local folder {label}", "✓ 本地文件夹 {label}"),
    "hub": Text("↓ Hub id {label}: downloaded on first use (needs internet unless cached)",
                "↓ Hub 模型 {label}：首次使用时下载（未缓存时需要联网）"),
}


def describe_model(model: str | None, lang: str = "en") -> str:
    """What the model box names, without loading any weights. A model the browser may not
    use is refused before the disk is looked at: the answer must not tell a page which
    of the server's folders exist."""
    refused = browser_model_problem(model)
    if refused:
        return f"✗ {refused}"
    try:
        source = models.resolve(model or SETTINGS["model"].default)
    except models.ModelSourceError as exc:
        return f"✗ {exc}"
    text = KINDS[source.kind](lang, label=f"**{source.label}**")
    if source.kind == "local":
        arch = _architecture(Path(source.location))
        if arch:
            text += f" · {arch}"
    return text


def _architecture(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    parts = [config.get("model_type", "")]
    if config.get("num_hidden_layers"):
        parts.append(f"{config['num_hidden_layers']} layers")
    if config.get("hidden_size"):
        parts.append(f"hidden {config['hidden_size']}")
    return ", ".join(p for p in parts if p)


def method_help(method: str | None, lang: str = "en") -> str:
    spec = METHODS.get(method or "")
    if spec is None:
        return ""
    if lang == "zh":
        return f"**{spec.label_zh}**：{spec.help_zh or spec.help}"
    return f"**{spec.label}**: {spec.help}"


def build(i18n: I18n, blocks: gr.Blocks) -> Shared:
    default_method = SETTINGS["method"].default
    with gr.Row(equal_height=False, elem_classes="ps-topbar"):
        with gr.Column(scale=4, min_width=320):
            model = make(SETTINGS["model"], i18n,
                         choices=[*SETTINGS["model"].choices, *offered_models()])
            model_status = gr.Markdown(describe_model(None), elem_classes="ps-note")
        with gr.Column(scale=4, min_width=320):
            method = make(SETTINGS["method"], i18n, choices=method_choices(), info=None)
            help_md = gr.Markdown(method_help(default_method), elem_classes="ps-note",
                                  elem_id="method-help")
        with gr.Column(scale=2, min_width=160):
            quantization = make(SETTINGS["quantization"], i18n,
                                visible=SETTINGS["quantization"].applies_to(default_method))
        with gr.Column(scale=1, min_width=120):
            lang = gr.Radio([("English", "en"), ("中文", "zh")], value="en",
                            label="Language / 语言", elem_id="ps-lang")
    shared = Shared(model=model, method=method, quantization=quantization, lang=lang,
                    i18n=i18n, blocks=blocks, runs_changed=gr.State(0),
                    datasets_changed=gr.State(0))
    model.change(describe_model, [model, lang], model_status, show_progress="hidden")
    method.change(method_help, [method, lang], help_md, show_progress="hidden")
    i18n.on_switch(method, lambda lg: gr.update(choices=method_choices(lg)))
    # These follow the language through their own inputs, so they re-render on switch.
    lang.change(describe_model, [model, lang], model_status, show_progress="hidden")
    lang.change(method_help, [method, lang], help_md, show_progress="hidden")
    return shared
