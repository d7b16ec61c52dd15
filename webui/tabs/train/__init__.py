"""The Train tab: every setting (from the schema), parameter count, command and YAML,
start/abort, the live run and the run history. Layout and wiring only; the actions are in
webui.tabs.train.handlers, webui.live.monitor and webui.tabs.train.history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.jobs.plots import loss_figure, lr_figure, reward_accuracy_figure, rewards_figure
from core.jobs.runs import CONFIG, active_run
from core.schema.config import SETTINGS, ConfigError
from webui import guard
from webui.i18n import I18n, Text
from webui.live import monitor, wake
from webui.live import panel as live
from webui.live.monitor import Watch
from webui.probe import ProbeError
from webui.shared import Shared
from webui.tabs.data import view as dataview
from webui.tabs.train import compare as compare_panel
from webui.tabs.train import handlers as training
from webui.tabs.train import history
from webui.tabs.train import queue as queue_panel
from webui.tabs.train import sweep as sweep_panel
from webui.widgets import (
    OPEN_GROUPS,
    SettingsForm,
    group_title,
    grouped,
    layer_pickers,
    make,
    plot_box,
    shown_for,
)

MEMORY_INPUTS = ("quantization", "batch_size", "cutoff_len", "gradient_checkpointing", "optim",
                 "precision", "nproc_per_node", "devices", "distributed", "offload", "nnodes")
COUNTING = Text("Counting (builds the model without weights)…", "正在统计（不加载权重构建模型）…")


@dataclass
class _Panel:
    count: gr.Button
    count_result: gr.Markdown
    start: gr.Button
    queue: gr.Button
    abort: gr.Button
    message: gr.Markdown
    live: gr.HTML  # bar, numbers, curves and log, drawn by the page (webui.live.panel)
    watch: gr.State


@dataclass
class _ConfigIO:
    preview: gr.Button
    cli: gr.Code
    yaml: gr.Code
    save: gr.Button
    file: gr.File
    load: gr.UploadButton
    preset_name: gr.Textbox
    save_preset: gr.Button
    presets: gr.Dropdown
    load_preset: gr.Button
    message: gr.Markdown


@dataclass
class _History:
    table: gr.Dataframe
    refresh: gr.Button
    selected: gr.Dropdown
    loss: gr.Plot
    lr: gr.Plot
    rewards: gr.Plot
    reward_accuracy: gr.Plot
    details: gr.Markdown
    resume: gr.Button


def build(shared: Shared) -> None:
    form = SettingsForm()
    form.add("model", shared.model)
    form.add("method", shared.method)
    form.add("quantization", shared.quantization)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=420):
            _settings(form, shared)
        with gr.Column(scale=4, min_width=380):
            panel = _run_panel(shared.i18n)
    io = _config_io(shared.i18n)
    queued = queue_panel.build(shared.i18n)
    sweep_panel.build(form, shared)
    compare_panel.build(form, shared)
    hist = _history(shared.i18n)
    if form.missing():  # every setting must have a widget, or runs would silently differ
        raise RuntimeError(f"settings without a widget: {', '.join(form.missing())}")

    _wire_method(form, shared)
    _wire_datasets(form, shared)
    _wire_count(form, shared, panel)
    _wire_run(form, shared, panel)
    queue_panel.wire(queued, shared.runs_changed, shared.blocks)
    panel.queue.click(lambda lang, *v: [queue_panel.add(form.named(v), lang),
                                        queue_panel.table()],
                      [shared.lang, *form.components], [panel.message, queued.table])
    _wire_io(form, shared, io)
    _wire_history(shared, hist)
    _wire_resume(shared, hist, panel)
    _wire_preview_sync(form, shared)


# -- settings ------------------------------------------------------------------------------
def _settings(form: SettingsForm, shared: Shared) -> None:
    i18n = shared.i18n
    method = SETTINGS["method"].default
    for group, settings in grouped().items():
        en, zh = group_title(group, "en"), group_title(group, "zh")
        with i18n.add(gr.Accordion(en, open=group in OPEN_GROUPS), en, zh) as box:
            basic = [s for s in settings if not s.advanced]
            extra = [s for s in settings if s.advanced]
            with gr.Row(elem_classes="ps-grid"):
                for s in basic:
                    form.add(s.name, _widget(s, i18n, method))
            if extra:
                with i18n.add(gr.Accordion("More", open=False), "More", "更多") as more:
                    with gr.Row(elem_classes="ps-grid"):
                        for s in extra:
                            form.add(s.name, _widget(s, i18n, method))
                form.add_box(more, [s.name for s in extra])
        form.add_box(box, [s.name for s in settings])


def _widget(s: Any, i18n: I18n, method: str) -> Any:
    extra: dict[str, Any] = {"visible": shown_for(s, method, SETTINGS["stage"].default),
                             "min_width": 260}
    if s.name == "dataset":
        extra["choices"] = dataview.names()
    if s.name == "trust_remote_code" and not guard.POLICY.allow_remote_code:
        extra.update(interactive=False, info=f"{s.help} {guard.REMOTE_CODE_NOTE}")
    return make(s, i18n, **extra)


def _wire_method(form: SettingsForm, shared: Shared) -> None:
    # Stage settings (DPO beta, ...) show only for their stage, method settings only for
    # their method.
    stage = form.widgets["stage"]
    for trigger in (shared.method, stage):
        trigger.change(form.visibility, [shared.method, stage], form.visibility_targets,
                       show_progress="hidden")


def _wire_datasets(form: SettingsForm, shared: Shared) -> None:
    dataset = form.widgets["dataset"]

    def choices(current: list[str] | None) -> Any:
        return gr.update(choices=list(dict.fromkeys([*dataview.names(), *(current or [])])))

    # Re-read on opening the list too: another browser or the CLI may have registered one.
    dataset.focus(choices, dataset, dataset, show_progress="hidden")
    shared.datasets_changed.change(choices, dataset, dataset)
    shared.blocks.load(choices, dataset, dataset)


def _wire_preview_sync(form: SettingsForm, shared: Shared) -> None:
    """The Data tab's preview uses the same cut-off, prompt-loss and system prompt
    settings as the run: a change on either side is copied to the other (on user input
    only, so no loop)."""
    pairs = [(form.widgets["cutoff_len"], shared.preview_cutoff),
             (form.widgets["train_on_prompt"], shared.preview_train_on_prompt),
             (form.widgets["system_prompt"], shared.preview_system_prompt)]
    for ours, theirs in pairs:
        if theirs is None:
            continue
        ours.input(lambda v: v, ours, theirs, show_progress="hidden")
        theirs.input(lambda v: v, theirs, ours, show_progress="hidden")


# -- parameter count -----------------------------------------------------------------------
def _wire_count(form: SettingsForm, shared: Shared, panel: _Panel) -> None:
    pickers = [form.widgets[n] for n in layer_pickers()]

    def count(lang: str, *values: Any) -> list[Any]:
        named = form.named(values)
        try:
            result = training.count_parameters(named)
        except ConfigError as exc:
            return [training.problems_markdown(exc, lang)] + [gr.skip()] * len(pickers)
        except ProbeError as exc:
            return [f"✗ {exc}"] + [gr.skip()] * len(pickers)
        updates = []
        for name in layer_pickers():
            current = list(named.get(name) or [])
            default = list(SETTINGS[name].default)
            updates.append(gr.update(choices=list(dict.fromkeys(
                [*default, *result["targets"], *current]))))
        text = training.parameters_markdown(result)
        if "devices" in result:  # answers cached before the estimate existed have none
            text += "\n\n" + training.memory_markdown(named, result)
        return [text] + updates

    inputs = [shared.lang, *form.components]
    outputs = [panel.count_result, *pickers]
    kw = {"concurrency_id": "probe", "show_progress": "minimal"}
    panel.count.click(lambda lang: COUNTING(lang), shared.lang, panel.count_result,
                      show_progress="hidden").then(count, inputs, outputs, **kw)
    # A model or method the user picks changes the count and the layer names: look again
    # (cached). On user input only: settings loaded into the widgets (a re-attached run,
    # a YAML file) must not start a torch process beside a training run.
    for trigger in (shared.model, shared.method):
        trigger.input(lambda lang: COUNTING(lang), shared.lang, panel.count_result,
                       show_progress="hidden").then(count, inputs, outputs,
                                                    trigger_mode="always_last", **kw)

    # The memory estimate follows what it depends on; the probe's answer is cached per
    # model and method, so this is arithmetic, not a new subprocess.
    for name in MEMORY_INPUTS:
        form.widgets[name].input(count, inputs, outputs, trigger_mode="always_last", **kw)

    def count_if_idle(lang: str, *values: Any) -> list[Any]:
        # The count belongs in view before anyone presses Start; but while a run trains,
        # a page load must not start a torch process beside it (the count is cached per
        # setting, so later loads are free).
        if active_run() is not None:
            return [gr.skip()] * len(outputs)
        return count(lang, *values)

    shared.blocks.load(count_if_idle, inputs, outputs, **kw)


# -- the live run --------------------------------------------------------------------------
def _run_panel(i18n: I18n) -> _Panel:
    with gr.Row():
        count = i18n.add(gr.Button("Count parameters", size="md"),
                         "Count parameters", "统计参数量")
        start = i18n.add(gr.Button("▶ Start", variant="primary"), "▶ Start", "▶ 开始训练")
        queue = i18n.add(gr.Button("⏱ Queue", elem_id="queue-run"), "⏱ Queue", "⏱ 排队")
        abort = i18n.add(gr.Button("■ Abort", variant="stop", interactive=False),
                         "■ Abort", "■ 中止")
    count_result = gr.Markdown(elem_classes="ps-note", elem_id="param-count")
    message = gr.Markdown()
    return _Panel(count, count_result, start, queue, abort, message, live.panel(),
                  gr.State(Watch()))


def _reward_plots(i18n: I18n, prefix: str) -> tuple[gr.Plot, gr.Plot]:
    """A preference run's rewards and reward accuracy; hidden for other runs."""
    rewards = i18n.add(plot_box("Rewards (chosen, rejected, margin)", visible=False,
                                elem_id=f"{prefix}-rewards"),
                       "Rewards (chosen, rejected, margin)", "奖励（被选、被拒、差值）")
    accuracy = i18n.add(plot_box("Reward accuracy", visible=False,
                                 elem_id=f"{prefix}-reward-accuracy"),
                        "Reward accuracy", "奖励准确率")
    return rewards, accuracy


def _reward_updates(frame: Any) -> list[Any]:
    figures = [rewards_figure(frame), reward_accuracy_figure(frame)]
    return [gr.update(value=f, visible=f is not None) for f in figures]


def _buttons(watch: Watch) -> list[Any]:
    """Start and Abort for the watched run."""
    return [gr.update(interactive=not watch.live), gr.update(interactive=watch.live)]


def _wire_run(form: SettingsForm, shared: Shared, panel: _Panel) -> None:
    def tick(watch: Watch, runs: int) -> list[Any]:
        watch, changes = monitor.poll(watch)
        if not changes.status:
            return [watch, gr.skip(), gr.skip(), gr.skip()]
        # A run that just ended (or appeared) changes the history.
        return [watch, *_buttons(watch), runs + 1]

    # The page asks for this only when the run it shows, or its status, changed.
    panel.live.submit(tick, [panel.watch, shared.runs_changed],
                      [panel.watch, panel.start, panel.abort, shared.runs_changed],
                      show_progress="hidden", concurrency_limit=None,
                      trigger_mode="always_last")

    def start(lang: str, runs: int, *values: Any) -> list[Any]:
        started = training.start(form.named(values), lang)
        if started.run_dir is None:
            return [gr.skip(), started.message, *[gr.skip()] * 4]
        wake.forget_live_run()  # the page's next ask shows the new run, not the last
        watch, _ = monitor.poll(monitor.Watch(run=str(started.run_dir)))
        return [watch, started.message, runs + 1, live.render(watch, lang), *_buttons(watch)]

    def on_load() -> list[Any]:
        # A reloaded page or a second browser shows the live run's settings, not defaults.
        live = active_run()
        if live is None:
            return [gr.skip()] * len(form.components)
        try:
            return form.positional(training.load_yaml(live / CONFIG))
        except ConfigError:
            return [gr.skip()] * len(form.components)

    shared.blocks.load(on_load, None, form.components, show_progress="hidden")

    panel.start.click(start, [shared.lang, shared.runs_changed, *form.components],
                      [panel.watch, panel.message, shared.runs_changed, panel.live,
                       panel.start, panel.abort])
    panel.abort.click(lambda w, lang: training.abort(w.run, lang), [panel.watch, shared.lang],
                      panel.message)


# -- command, YAML and presets -------------------------------------------------------------
def _config_io(i18n: I18n) -> _ConfigIO:
    with i18n.add(gr.Accordion("Command, YAML and presets", open=False),
                  "Command, YAML and presets", "命令、YAML 与预设"):
        preview = i18n.add(gr.Button("Show the equivalent command and YAML", size="sm"),
                           "Show the equivalent command and YAML", "显示等价命令与 YAML")
        cli = i18n.add(gr.Code(language="shell", label="Command", lines=2, wrap_lines=True),
                       "Command", "命令")
        yaml = i18n.add(gr.Code(language="yaml", label="YAML", lines=8), "YAML", "YAML")
        with gr.Row():
            save = i18n.add(gr.Button("Save as YAML file", size="sm"),
                            "Save as YAML file", "保存为 YAML 文件")
            load = i18n.add(gr.UploadButton("Load a YAML file", file_types=[".yaml", ".yml"],
                                            size="sm"), "Load a YAML file", "加载 YAML 文件")
        file = i18n.add(gr.File(label="YAML to download", visible=False, interactive=False),
                        "YAML to download", "可下载的 YAML")
        with gr.Row():
            preset_name = i18n.add(gr.Textbox(label="Preset name", scale=2),
                                   "Preset name", "预设名称")
            save_preset = i18n.add(gr.Button("Save preset", size="sm", scale=1),
                                   "Save preset", "保存预设")
            presets = i18n.add(gr.Dropdown(training.list_presets(), label="Presets", scale=2),
                               "Presets", "预设")
            load_preset = i18n.add(gr.Button("Load preset", size="sm", scale=1),
                                   "Load preset", "加载预设")
        message = gr.Markdown()
    return _ConfigIO(preview, cli, yaml, save, file, load, preset_name, save_preset, presets,
                     load_preset, message)


def _wire_io(form: SettingsForm, shared: Shared, io: _ConfigIO) -> None:
    settings = form.components

    def preview(lang: str, *values: Any) -> tuple[str, str, str]:
        return training.preview(form.named(values), lang)

    io.preview.click(preview, [shared.lang, *settings], [io.cli, io.yaml, io.message])

    def save(lang: str, *values: Any) -> list[Any]:
        try:
            path = training.save_yaml(form.named(values))
        except ConfigError as exc:
            return [gr.update(visible=False), training.problems_markdown(exc, lang)]
        return [gr.update(value=str(path), visible=True), f"Saved `{path.name}`."]

    io.save.click(save, [shared.lang, *settings], [io.file, io.message])

    def applied(load: Any, lang: str, source: Any) -> list[Any]:
        try:
            values = load(source)
        except ConfigError as exc:
            return [*[gr.skip()] * len(settings), training.problems_markdown(exc, lang)]
        return [*form.positional(values), f"Loaded {len(values)} settings."]

    io.load.upload(lambda f, lang: applied(training.load_yaml, lang, f), [io.load, shared.lang],
                   [*settings, io.message])
    io.load_preset.click(lambda n, lang: applied(training.load_preset, lang, n),
                         [io.presets, shared.lang], [*settings, io.message])

    def save_preset(name: str, lang: str, *values: Any) -> list[Any]:
        try:
            path = training.save_preset(name, form.named(values))
        except ConfigError as exc:
            return [gr.skip(), training.problems_markdown(exc, lang)]
        return [gr.update(choices=training.list_presets(), value=path.stem),
                f"Saved preset **{path.stem}**."]

    io.save_preset.click(save_preset, [io.preset_name, shared.lang, *settings],
                         [io.presets, io.message])


# -- history -------------------------------------------------------------------------------
def _history(i18n: I18n) -> _History:
    with i18n.add(gr.Accordion("Run history", open=True), "Run history", "历史运行"):
        with gr.Row():
            selected = i18n.add(gr.Dropdown([], multiselect=True, label="Show runs", scale=4,
                                             elem_id="history-runs",
                                             info="Pick one run for its curves, several to "
                                                  "compare their losses. Or click a row."),
                                "Show runs", "查看运行",
                                "Pick one run for its curves, several to compare their "
                                "losses. Or click a row.", "选一个运行查看曲线，选多个对比损失；"
                                "也可以点击表格中的行。")
            refresh = i18n.add(gr.Button("↻ Refresh", size="sm", scale=0, min_width=100),
                               "↻ Refresh", "↻ 刷新")
            resume = i18n.add(gr.Button("⟳ Resume", size="sm", scale=0, min_width=110,
                                        elem_id="history-resume"), "⟳ Resume", "⟳ 继续训练")
        table = gr.Dataframe(interactive=False, wrap=True, max_height=300,
                             elem_id="history-table")
        with gr.Row():
            loss = i18n.add(plot_box("Loss of the selected runs", elem_id="history-loss"),
                            "Loss of the selected runs", "所选运行的损失")
            lr = i18n.add(plot_box("Learning rate (first selected run)"),
                          "Learning rate (first selected run)", "学习率（第一个所选运行）")
        with gr.Row():
            rewards, accuracy = _reward_plots(i18n, "history")
        details = gr.Markdown(elem_id="history-details")
    return _History(table, refresh, selected, loss, lr, rewards, accuracy, details, resume)


def _wire_history(shared: Shared, hist: _History) -> None:
    def refresh(selected: list[str] | None) -> list[Any]:
        names = history.run_names()
        keep = [n for n in (selected or []) if n in names]
        if keep == list(selected or []):
            # The value as the page has it: one picked while this refresh was on its way
            # (a run ending refreshes the history) is not taken back.
            return [history.table(), gr.update(choices=names)]
        return [history.table(), gr.update(choices=names, value=keep)]

    for event in (hist.refresh.click, shared.runs_changed.change, shared.blocks.load):
        event(refresh, hist.selected, [hist.table, hist.selected], show_progress="hidden")
    def show(names: list[str] | None) -> list[Any]:
        losses, rates, details = history.curves(names or [])
        rewards = _reward_updates(history.rewards(names or []))
        return [loss_figure(losses), lr_figure(rates), *rewards, details]

    hist.selected.change(show, hist.selected,
                         [hist.loss, hist.lr, hist.rewards, hist.reward_accuracy,
                          hist.details], show_progress="hidden")

    def toggle(selected: list[str] | None, evt: gr.SelectData) -> list[str]:
        name = evt.row_value[0] if evt.row_value else None
        chosen = list(selected or [])
        if name:
            chosen = [n for n in chosen if n != name] if name in chosen else [*chosen, name]
        return chosen

    hist.table.select(toggle, hist.selected, hist.selected)


def _wire_resume(shared: Shared, hist: _History, panel: _Panel) -> None:
    def resume(selected: list[str] | None, lang: str, runs: int) -> list[Any]:
        started = training.resume(selected or [], lang)
        if started.run_dir is None:
            return [gr.skip(), started.message, *[gr.skip()] * 4]
        wake.forget_live_run()  # the page's next ask shows the resumed run
        watch, _ = monitor.poll(monitor.Watch(run=str(started.run_dir)))
        return [watch, started.message, runs + 1, live.render(watch, lang), *_buttons(watch)]

    hist.resume.click(resume, [hist.selected, shared.lang, shared.runs_changed],
                      [panel.watch, panel.message, shared.runs_changed, panel.live,
                       panel.start, panel.abort])
