"""English and Chinese labels that switch with the language radio in the top bar.

Components register their two labels once, where they are built; one handler (wired in
`webui.app`) then returns an update for every registered component. Texts used inside
handlers are `Text` constants, so a misspelt one fails at import, not in front of a user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

LANGS = ("en", "zh")


@dataclass(frozen=True)
class Text:
    en: str
    zh: str

    def __call__(self, lang: str, **fields: Any) -> str:
        text = self.zh if lang == "zh" else self.en
        return text.format(**fields) if fields else text


@dataclass
class _Entry:
    component: Any
    label: Text
    info: Text | None


# Components whose visible text is their value rather than a label. (Upload and download
# buttons are not among them: their value is a file, their text is their label.)
_VALUE_TEXT = (gr.Button, gr.Markdown)
_LABEL_ONLY = (gr.Tab, gr.Accordion, gr.UploadButton, gr.DownloadButton)


class I18n:
    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._custom: list[tuple[Any, Callable[[str], Any]]] = []

    def add(self, component: Any, en: str, zh: str, info_en: str | None = None,
            info_zh: str | None = None) -> Any:
        """Register `component`'s label (and info) in both languages; returns it."""
        info = None
        if info_en is not None or info_zh is not None:
            info = Text(info_en or info_zh or "", info_zh or info_en or "")
        self._entries.append(_Entry(component, Text(en, zh), info))
        return component

    def on_switch(self, component: Any, update: Callable[[str], Any]) -> Any:
        """For text a label cannot carry (choice labels, help that depends on a value):
        `update(lang)` returns the component's update."""
        self._custom.append((component, update))
        return component

    @property
    def components(self) -> list[Any]:
        return [e.component for e in self._entries] + [c for c, _ in self._custom]

    def updates(self, lang: str) -> list[Any]:
        """One update per component, in the order of `components`."""
        out = [self._update(e, lang) for e in self._entries]
        return out + [fn(lang) for _, fn in self._custom]

    @staticmethod
    def _update(entry: _Entry, lang: str) -> Any:
        label = entry.label(lang)
        if isinstance(entry.component, _LABEL_ONLY):
            return gr.update(label=label)
        if isinstance(entry.component, _VALUE_TEXT):
            return gr.update(value=label)
        if entry.info is not None:
            return gr.update(label=label, info=entry.info(lang))
        return gr.update(label=label)
