"""The Data tab: registered datasets, their rows, uploading a new one, and what the model
will see of a sample. Layout and wiring only; the work is in webui.tabs.data.view and
webui.tabs.data.upload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.data.formats import FORMATS, DataError
from core.schema.config import SETTINGS
from webui.probe import ProbeError
from webui.shared import Shared
from webui.tabs.data import upload
from webui.tabs.data import view as dataview
from webui.widgets import make, plot_box


@dataclass
class _Upload:
    file: gr.File
    options: gr.Column
    detected: gr.Markdown
    sample: gr.Dataframe
    format: gr.Dropdown
    name: gr.Textbox
    roles: dict[str, gr.Dropdown]
    register: gr.Button
    result: gr.Markdown
    problems: gr.Dataframe
    text_split: gr.Radio
    keep_good: gr.Checkbox


def build(shared: Shared) -> None:
    i18n = shared.i18n
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            i18n.add(gr.Markdown("### Registered datasets"), "### Registered datasets",
                     "### 已注册的数据集")
            listing = gr.Dataframe(interactive=False, wrap=True, max_height=480,
                                   column_widths=["17%", "10%", "20%", "9%", "44%"])
        with gr.Column(scale=2):
            up = _uploader(shared)
            _importer(shared)
    # Full width: rows of instruction data are long, and half a page hid all but the
    # first column.
    browse, page_no, caption, rows = _browser(shared)
    _model_view(shared, browse)
    show = _wire_browser(browse, page_no, caption, rows)
    _wire_upload(shared, up, listing, browse)
    shared.datasets_changed.change(_refresh_lists, [browse], [listing, browse])

    def on_load(current: str | None) -> list[Any]:
        # Another process may have registered datasets since the page was built.
        table, choices = _refresh_lists(current)
        return [table, choices, *show(choices["value"], 1)]

    shared.blocks.load(on_load, browse, [listing, browse, rows, page_no, caption])


# -- browsing ------------------------------------------------------------------------------
def _browser(shared: Shared) -> tuple[gr.Dropdown, gr.Number, gr.Markdown, gr.Dataframe]:
    i18n = shared.i18n
    names = dataview.names()
    i18n.add(gr.Markdown("### Rows"), "### Rows", "### 数据行")
    with gr.Row():
        browse = i18n.add(gr.Dropdown(names, value=names[0] if names else None,
                                      label="Dataset", scale=3, elem_id="data-browse"),
                          "Dataset", "数据集")
        page_no = i18n.add(gr.Number(1, label="Page", precision=0, minimum=1, scale=1),
                           "Page", "页码")
    with gr.Row():
        prev = i18n.add(gr.Button("◀ Previous", size="sm"), "◀ Previous", "◀ 上一页")
        caption = gr.Markdown()
        nxt = i18n.add(gr.Button("Next ▶", size="sm"), "Next ▶", "下一页 ▶")
    rows = gr.Dataframe(interactive=False, wrap=True, max_height=420)
    prev.click(lambda n: max(1, int(n or 1) - 1), page_no, page_no)
    nxt.click(lambda n: int(n or 1) + 1, page_no, page_no)
    return browse, page_no, caption, rows


def _wire_browser(browse: gr.Dropdown, page_no: gr.Number, caption: gr.Markdown,
                  rows: gr.Dataframe) -> Any:
    def show(name: str | None, number: float | None) -> tuple[Any, Any, Any]:
        if not name:
            return None, 1, ""
        try:
            p = dataview.page(name, int(number or 1))
        except DataError as exc:
            return None, gr.skip(), f"✗ {exc}"
        # Equal shares after a narrow row number: left to itself the table gives the first
        # long column the whole width and hides the rest behind a horizontal scroll.
        share = f"{94 / max(1, len(p.rows.columns) - 1):.1f}%"
        widths = ["6%", *[share] * (len(p.rows.columns) - 1)]
        return gr.update(value=p.rows, column_widths=widths), p.page, p.caption

    browse.change(lambda n: show(n, 1), browse, [rows, page_no, caption])
    page_no.change(show, [browse, page_no], [rows, page_no, caption],
                   trigger_mode="always_last")
    return show


def _refresh_lists(current: str | None) -> tuple[Any, Any]:
    names = dataview.names()
    return dataview.table(), gr.update(choices=names, value=current if current in names
                                       else (names[0] if names else None))


# -- uploading -----------------------------------------------------------------------------
def _uploader(shared: Shared) -> _Upload:
    i18n = shared.i18n
    i18n.add(gr.Markdown("### Add a dataset"), "### Add a dataset", "### 添加数据集")
    limit = upload.max_upload_mb()
    label = f"A json, jsonl, csv, parquet or txt file (up to {limit} MB)"
    file = i18n.add(gr.File(file_types=upload.UPLOAD_TYPES, label=label, height=120,
                            elem_id="upload-file"),
                    label, f"json、jsonl、csv、parquet 或 txt 文件（不超过 {limit} MB）")
    detected = gr.Markdown()
    # Format, name and column roles mean nothing before there is a file.
    with gr.Column(visible=False) as options:
        sample = i18n.add(gr.Dataframe(interactive=False, wrap=True, max_height=200,
                                       label="First rows"), "First rows", "前几行")
        # A .txt file: LLaMA-Factory takes each line as a document, the studio by default
        # each blank-line paragraph; the count above follows the choice.
        split = i18n.add(gr.Radio(["paragraph", "line"], value="paragraph", visible=False,
                                  label="One document per"), "One document per", "每个文档为一")
        with gr.Row():
            fmt = i18n.add(gr.Dropdown(list(FORMATS), value=None, label="Format",
                                       interactive=True), "Format", "格式")
            name = i18n.add(gr.Textbox(label="Name"), "Name", "名称")
        role_boxes: dict[str, gr.Dropdown] = {}
        with gr.Row(elem_classes="ps-grid"):
            for role in upload.ROLES:
                role_boxes[role] = i18n.add(
                    gr.Dropdown([], label=f"{role} column", visible=False,
                                allow_custom_value=False),
                    f"{role} column", f"{role} 列")
        with gr.Row():
            # Never by default: training on part of a file is the user's decision.
            keep_good = i18n.add(gr.Checkbox(False, label=KEEP_GOOD), KEEP_GOOD,
                                 "有坏行时只注册好的行（并说明去掉了哪些行）")
            register = i18n.add(gr.Button("Validate and register", variant="primary"),
                                "Validate and register", "校验并注册")
    result = gr.Markdown()
    problems = i18n.add(gr.Dataframe(visible=False, interactive=False, wrap=True,
                                     max_height=300, label="Problems by row",
                                     column_widths=["12%", "28%", "60%"]),
                        "Problems by row", "逐行问题")
    return _Upload(file, options, detected, sample, fmt, name, role_boxes, register, result,
                   problems, split, keep_good)


NONE = "(none)"
KEEP_GOOD = "If some rows are bad, register the good rows only (saying which were left out)"


def _wire_upload(shared: Shared, up: _Upload, listing: gr.Dataframe,
                 browse: gr.Dropdown) -> None:
    role_list = list(up.roles.values())

    def on_file(path: str | None, split: str) -> list[Any]:
        txt = gr.update(visible=bool(path) and str(path).lower().endswith(".txt"))
        if not path:
            return ["", gr.update(visible=False), gr.skip(), gr.skip(), gr.skip(), txt] \
                + _roles_hidden(up)
        try:
            found = upload.inspect_upload(path, split or "paragraph")
        except DataError as exc:
            return [f"✗ {exc}", gr.update(visible=False), None, None, "", txt] \
                + _roles_hidden(up)
        if found.format is None:
            note = f"⚠ Format not recognised: {found.note}. Choose the format and the columns."
        elif found.confident:
            note = f"Detected **{found.format}** · {found.rows} rows · columns: " \
                   f"{', '.join(found.columns)}"
        else:
            note = (f"⚠ Probably **{found.format}** ({found.note}) · {found.rows} rows. "
                    "Check the column for each role below.")
        if str(path).lower().endswith(".txt"):
            note += f" · one document per {split or 'paragraph'} (LLaMA-Factory: per line)"
        return ([note, gr.update(visible=True), found.sample, found.format, found.name, txt]
                + _role_updates(found.format, found.columns, found.mapping))

    shown = [up.detected, up.options, up.sample, up.format, up.name, up.text_split, *role_list]
    up.file.change(on_file, [up.file, up.text_split], shown)
    up.text_split.input(on_file, [up.file, up.text_split], shown)

    def on_format(fmt: str | None, path: str | None) -> list[Any]:
        columns: list[str] = []
        detected: dict[str, str] = {}
        if path:
            try:
                found = upload.inspect_upload(path)
                columns = found.columns
                detected = found.mapping if found.format == fmt else {}
            except DataError:
                pass
        return _role_updates(fmt, columns, detected)

    up.format.input(on_format, [up.format, up.file], role_list)

    def on_register(path: str | None, name: str, fmt: str | None, version: int, split: str,
                    keep_good: bool, *columns: str) -> list[Any]:
        mapping = {r: ("" if c in (None, NONE) else c)
                   for r, c in zip(up.roles, columns, strict=True)}
        result = upload.register_upload(path, name, fmt, mapping, split or "paragraph",
                                        bool(keep_good))
        problems = gr.update(value=result.problems, visible=not result.problems.empty)
        return [result.message, problems, version + 1 if result.ok else gr.skip()]

    up.register.click(on_register,
                      [up.file, up.name, up.format, shared.datasets_changed, up.text_split,
                       up.keep_good, *role_list],
                      [up.result, up.problems, shared.datasets_changed])


def _roles_hidden(up: _Upload) -> list[Any]:
    return [gr.update(visible=False) for _ in up.roles]


def _role_updates(fmt: str | None, columns: list[str], detected: dict[str, str]) -> list[Any]:
    wanted = upload.roles(fmt)
    mapping = upload.default_mapping(fmt, columns, detected)
    out = []
    for role in upload.ROLES:
        if role not in wanted:
            out.append(gr.update(visible=False))
            continue
        choices = columns if wanted[role] else [NONE, *columns]
        value = mapping.get(role) or (None if wanted[role] else NONE)
        label_note = " (required)" if wanted[role] else ""
        out.append(gr.update(visible=True, choices=choices, value=value,
                             label=f"{role} column{label_note}"))
    return out


def _importer(shared: Shared) -> None:
    i18n = shared.i18n
    title = "Import a LLaMA-Factory data folder"
    with i18n.add(gr.Accordion(title, open=False), title, "导入 LLaMA-Factory 数据文件夹"):
        hint = ("A folder under data/ holding LLaMA-Factory's dataset_info.json and its files "
                "(empty: data/ itself). Every entry the studio can train is registered; the "
                "others are listed with why.")
        i18n.add(gr.Markdown(hint), hint, "data/ 下存放 LLaMA-Factory 的 dataset_info.json "
                 "及其文件的文件夹（留空：data/ 本身）。可训练的条目都会注册，其余条目列出原因。")
        with gr.Row():
            folder = i18n.add(gr.Textbox(label="Folder under data/", scale=3,
                                         elem_id="lf-import-folder"),
                              "Folder under data/", "data/ 下的文件夹")
            go = i18n.add(gr.Button("Import", scale=1), "Import", "导入")
        result = gr.Markdown()

    def on_import(path: str, version: int) -> list[Any]:
        done = upload.import_folder(path)
        return [done.message, version + 1 if done.ok else gr.skip()]

    go.click(on_import, [folder, shared.datasets_changed], [result, shared.datasets_changed])


# -- what the model sees -------------------------------------------------------------------
def _model_view(shared: Shared, browse: gr.Dropdown) -> None:
    i18n = shared.i18n
    i18n.add(gr.Markdown("### What the model sees"), "### What the model sees",
             "### 模型实际看到的内容")
    i18n.add(gr.Markdown("The selected dataset rendered with the top bar model's chat "
                         "template. Green tokens are trained on; grey ones are masked "
                         "(no loss). The first look at a model takes a few seconds."),
             "The selected dataset rendered with the top bar model's chat template. Green "
             "tokens are trained on; grey ones are masked (no loss). The first look at a "
             "model takes a few seconds.",
             "用顶栏所选模型的对话模板渲染所选数据集。绿色为参与训练的 token，灰色为被屏蔽"
             "（不计损失）的 token。首次查看某个模型需要几秒钟。")
    with gr.Row():
        sample = i18n.add(gr.Number(1, label="Sample", precision=0, minimum=1, scale=1),
                          "Sample", "样本")
        cutoff = make(SETTINGS["cutoff_len"], i18n, scale=1, elem_id="preview-cutoff_len")
        prompt_loss = make(SETTINGS["train_on_prompt"], i18n, scale=2,
                           elem_id="preview-train_on_prompt")
        system = make(SETTINGS["system_prompt"], i18n, scale=2, elem_id="preview-system_prompt")
        show = i18n.add(gr.Button("Show", variant="secondary", scale=1), "Show", "查看")
    shared.preview_cutoff, shared.preview_train_on_prompt = cutoff, prompt_loss
    shared.preview_system_prompt = system
    summary = gr.Markdown()
    # Preference data: the prompt once, as the template renders it (never trained).
    prompt = i18n.add(gr.Textbox(label="Prompt (rendered with the chat template)", lines=4,
                                 max_lines=12, interactive=False, visible=False,
                                 elem_id="pair-prompt"),
                      "Prompt (rendered with the chat template)", "提示（按对话模板渲染）")
    seen = i18n.add(gr.HighlightedText(label="Rendered sample", color_map=dataview.COLOR_MAP,
                                       show_legend=True, combine_adjacent=True,
                                       elem_id="data-seen"),
                    "Rendered sample", "渲染后的样本")
    with gr.Row(visible=False, elem_id="pair-view") as pair:
        chosen = i18n.add(gr.HighlightedText(label="✔ Chosen reply",
                                             color_map=dataview.COLOR_MAP,
                                             combine_adjacent=True, elem_id="pair-chosen"),
                          "✔ Chosen reply", "✔ 被选回复")
        rejected = i18n.add(gr.HighlightedText(label="✘ Rejected reply",
                                               color_map=dataview.COLOR_MAP,
                                               combine_adjacent=True, elem_id="pair-rejected"),
                            "✘ Rejected reply", "✘ 被拒回复")
    histogram = i18n.add(plot_box("Token lengths"), "Token lengths", "Token 长度分布")

    def view(model: str | None, dataset: str | None, number: float | None, cut: float | None,
             on_prompt: bool, system_prompt: str | None) -> list[Any]:
        if not dataset:
            return [gr.skip(), "Choose a dataset above.", *[gr.skip()] * 6]
        try:
            v = dataview.model_view(model, dataset, number or 1,
                                    SETTINGS["cutoff_len"].default if cut is None else cut,
                                    on_prompt, system_prompt or "")
        except (ProbeError, ValueError) as exc:
            return [gr.skip(), f"✗ {exc}", gr.skip(), None, gr.skip(), None, None, None]
        shows = v.shows
        return [v.sample, v.summary, gr.update(value=v.prompt, visible=shows["prompt"]),
                gr.update(value=v.segments, visible=shows["sample"]),
                gr.update(visible=shows["pair"]), v.chosen, v.rejected, v.figure]

    inputs = [shared.model, browse, sample, cutoff, prompt_loss, system]
    outputs = [sample, summary, prompt, seen, pair, chosen, rejected, histogram]
    show.click(view, inputs, outputs, concurrency_id="probe")
    sample.input(view, inputs, outputs, concurrency_id="probe", trigger_mode="always_last")
