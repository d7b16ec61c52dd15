"""What every tab gets from the app: the top bar's components and the translator.

Contract for tab modules (webui/tabs/<name>.py):

- A tab module exposes `build(shared: Shared) -> None`. `webui.app.build_app()` calls it
  inside `with gr.Tab(label):`, so `build` only creates components and wires events.
  Tabs appear in the order of `webui.app.TABS`.
- `shared.model` (gr.Dropdown, free text allowed: "embedded", a local folder or .gguf, or
  a hub id), `shared.method` (gr.Dropdown of method ids from core.methods.METHODS) and
  `shared.quantization` (gr.Dropdown: "none", "8bit", "4bit") are the top bar. Use them as
  event inputs; listen to their `.change` to follow the user's choice. Their values are
  plain strings (the model may be None or "" when cleared: treat that as "embedded").
- `shared.lang` is a gr.Radio with value "en" or "zh". Pass it as an input to handlers
  whose messages are worth translating.
- `shared.i18n.add(component, en, zh, info_en=None, info_zh=None)` registers a component
  whose label (and info) switches with the language; it returns the component, so
  `i18n.add(gr.Button("Load"), "Load", "加载")` works inline. Buttons and Markdown switch
  their value, Tabs and Accordions their label, other components label and info.
  `shared.i18n.on_switch(component, fn)` registers `fn(lang) -> gr.update(...)` for text
  that is not a label (choice labels, for example).
- `shared.blocks` is the app's gr.Blocks: `shared.blocks.load(fn, inputs, outputs)` runs on
  every page load (a reload or a second browser), to refresh lists from disk.
- `shared.runs_changed` and `shared.datasets_changed` are gr.State counters: a tab that
  creates a run or registers a dataset returns `value + 1` to them; a tab that lists runs
  or datasets listens to their `.change` and refreshes.
- Never import torch or transformers at module level, nor in `build`: the UI process stays
  light (load models in a subprocess, see webui.probe, core.chat.worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.i18n import I18n


@dataclass
class Shared:
    model: gr.Dropdown
    method: gr.Dropdown
    quantization: gr.Dropdown
    lang: gr.Radio
    i18n: I18n
    # The app itself, for `shared.blocks.load(...)` (runs on every page load).
    blocks: gr.Blocks
    runs_changed: gr.State
    datasets_changed: gr.State
    # The Data tab's "what the model sees" controls, which the Train tab keeps in step
    # with its own cut-off, prompt-loss and system prompt settings (None until the Data
    # tab sets them).
    preview_cutoff: Any = None
    preview_train_on_prompt: Any = None
    preview_system_prompt: Any = None
