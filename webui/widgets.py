"""Widgets derived from the settings schema (core.schema.config.SETTINGS).

A setting's label, default, bounds, choices and help text come from its `Setting`; the UI
never spells a setting out again. `SettingsForm` keeps the widgets by setting name, turns
their values into a `RunConfig` and back, and says which are visible for a method.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gradio as gr

from core.methods import METHODS
from core.schema.config import SETTINGS, ConfigError, RunConfig
from core.schema.setting import GROUPS, Setting
from webui.guard import browser_problems
from webui.i18n import I18n

# The top bar holds these; every other setting lives in the Train tab's groups.
TOP_BAR = ("model", "method", "quantization")
# Groups shown open; the others start collapsed.
OPEN_GROUPS = ("data", "train", "method")


def method_choices(lang: str = "en") -> list[tuple[str, str]]:
    return [(spec.label_zh if lang == "zh" else spec.label, mid) for mid, spec in METHODS.items()]


def layer_pickers() -> list[str]:
    """Method settings that name layers of the model (lora_target, ia3_target, ...):
    list settings without fixed choices. Their suggestions come from the model."""
    return [
        s.name for s in SETTINGS.values()
        if s.group == "method" and s.kind is list and s.item_type is str and not s.choices
    ]


def make(setting: Setting, i18n: I18n, **overrides: Any) -> Any:
    """The component for one setting, its label and help registered for translation."""
    s = setting
    common: dict[str, Any] = {"label": s.title, "info": s.help, "value": s.default,
                              "elem_id": f"setting-{s.name}"}
    common.update(overrides)
    if s.kind is bool:
        comp = gr.Checkbox(**common)
    elif s.kind is list:
        value = list(common.pop("value") or [])
        choices = common.pop("choices", None) or list(dict.fromkeys([*(s.choices or ()),
                                                                     *value]))
        comp = gr.Dropdown(choices=choices, value=value, multiselect=True,
                           allow_custom_value=s.choices is None or s.allow_custom, **common)
    elif s.choices is not None:
        choices = common.pop("choices", None) or list(s.choices)
        comp = gr.Dropdown(choices=choices, allow_custom_value=s.allow_custom, **common)
    elif s.kind is float and s.minimum == 0 and s.maximum is not None and s.maximum <= 1:
        comp = gr.Slider(minimum=0, maximum=s.maximum, step=0.01, **common)
    elif s.kind in (int, float):
        comp = gr.Number(minimum=s.minimum, maximum=s.maximum,
                         precision=0 if s.kind is int else None, **common)
    else:
        comp = gr.Textbox(**common)
    info = common.get("info")
    info_zh = s.help_zh if info == s.help else info
    return i18n.add(comp, s.title, s.label_zh or s.title, info, info_zh or info)


def plot_box(label: str, **kwargs: Any) -> gr.Plot:
    """A gr.Plot for our matplotlib figures (styled by the app's .ps-plot CSS)."""
    return gr.Plot(label=label, format="png", elem_classes="ps-plot", **kwargs)


class SettingsForm:
    """Every setting's widget, by name, plus the layout boxes whose visibility follows
    the method (a box is shown when any of its settings applies)."""

    def __init__(self) -> None:
        self.widgets: dict[str, Any] = {}
        self._boxes: list[tuple[Any, list[str]]] = []

    def add(self, name: str, component: Any) -> Any:
        if name not in SETTINGS:
            raise KeyError(f"{name!r} is not a setting")
        self.widgets[name] = component
        return component

    def add_box(self, box: Any, names: Iterable[str]) -> None:
        self._boxes.append((box, list(names)))

    @property
    def names(self) -> list[str]:
        return list(self.widgets)

    @property
    def components(self) -> list[Any]:
        return list(self.widgets.values())

    def missing(self) -> list[str]:
        return [n for n in SETTINGS if n not in self.widgets]

    # -- values ----------------------------------------------------------------------------
    def named(self, values: Sequence[Any]) -> dict[str, Any]:
        """Widget values (in `components` order) as {setting: value}."""
        return dict(zip(self.names, values, strict=True))

    def positional(self, values: dict[str, Any]) -> list[Any]:
        """{setting: value} in `components` order; absent settings keep their widget's
        value (gr.skip)."""
        return [values[n] if n in values else gr.skip() for n in self.names]

    # -- visibility ------------------------------------------------------------------------
    @property
    def visibility_targets(self) -> list[Any]:
        return self.components + [box for box, _ in self._boxes]

    def visibility(self, method: str, stage: str | None = None) -> list[Any]:
        """Updates for `visibility_targets`: a setting is shown when it applies to
        `method` and `stage`; a box when any of its settings is."""
        stage = stage or SETTINGS["stage"].default
        shown = {n: shown_for(SETTINGS[n], method, stage) for n in self.names}
        out = [gr.update(visible=shown[n]) for n in self.names]
        for _, names in self._boxes:
            out.append(gr.update(visible=any(shown[n] for n in names if n in shown)))
        return out


def shown_for(s: Setting, method: str, stage: str) -> bool:
    """Whether a setting's widget is in view for this method and stage."""
    return s.applies_to(method) and s.applies_to_stage(stage)


def config_values(values: dict[str, Any]) -> dict[str, Any]:
    """The widget values a run of the chosen method uses: settings of other methods are
    dropped (they stay in their hidden widgets, untouched). Widgets give "" or None for
    a cleared box; that means the default."""
    method = values.get("method") or SETTINGS["method"].default
    stage = values.get("stage") or SETTINGS["stage"].default
    out = {}
    for name, value in values.items():
        s = SETTINGS[name]
        if not (s.applies_to(method) and s.applies_to_stage(stage)):
            continue
        if value is None or (value == "" and s.kind is not str):
            continue
        if name == "model" and not value:
            value = s.default
        out[name] = value
    return out


def to_config(values: dict[str, Any]) -> RunConfig:
    """A validated RunConfig from widget values; raises core.schema.config.ConfigError. Also
    refuses what only the CLI may ask for (webui.guard), whatever the widgets showed."""
    usable = config_values(values)
    refused = browser_problems(usable)
    try:
        cfg = RunConfig(**usable)
    except ConfigError as exc:
        raise ConfigError(refused + exc.problems) from None
    if refused:
        raise ConfigError(refused)
    return cfg


def from_config(cfg: RunConfig) -> dict[str, Any]:
    """Widget values for a config: its own settings only (other methods' widgets keep
    what they hold)."""
    return {name: list(v) if isinstance(v, list) else v for name, v in cfg.to_dict().items()}


def group_title(group: str, lang: str = "en") -> str:
    en, zh = GROUPS[group]
    return zh if lang == "zh" else en


def grouped(names: Iterable[str] | None = None) -> dict[str, list[Setting]]:
    """Settings by group without the top bar's: the open groups first, then the rest, each
    part in GROUPS order."""
    wanted = set(SETTINGS if names is None else names) - set(TOP_BAR)
    order = [g for g in GROUPS if g in OPEN_GROUPS] + [g for g in GROUPS if g not in OPEN_GROUPS]
    out: dict[str, list[Setting]] = {g: [] for g in order}
    for s in SETTINGS.values():
        if s.name in wanted:
            out[s.group].append(s)
    return {g: items for g, items in out.items() if items}
