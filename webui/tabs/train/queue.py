"""The Train tab's queue: the Queue button beside Start, and the list of runs waiting their
turn, cancelled or moved from here. The queue lives in saves/queue/ and its worker outside
this process (core.jobs.queue), so closing or restarting the UI changes nothing in it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import gradio as gr
import pandas as pd

from core.jobs import queue
from core.schema.config import ConfigError
from webui.i18n import I18n, Text
from webui.tabs.train.handlers import BAD_DATA, problems_markdown
from webui.widgets import to_config

QUEUED = Text("Queued as entry **{id}** ({ahead} ahead of it).",
              "已排队，编号 **{id}**（前面还有 {ahead} 个）。")
COLUMNS = ["Id", "Status", "Run", "What", "Added", "Note"]


@dataclass
class QueuePanel:
    table: gr.Dataframe
    entry: gr.Number
    to: gr.Number
    cancel: gr.Button
    move: gr.Button
    refresh: gr.Button
    message: gr.Markdown


def add(values: dict[str, Any], lang: str = "en") -> str:
    """The Queue button: the settings validated as Start would, then queued."""
    try:
        cfg = to_config(values)
    except ConfigError as exc:
        return problems_markdown(exc, lang)
    from core.data.check import before_training
    from core.data.registry import dataset_problems

    missing = dataset_problems(cfg.dataset)
    try:
        if missing:
            raise ConfigError(missing)
        bad = before_training(cfg.dataset, cfg.stage)
        if bad:
            return BAD_DATA(lang) + "\n\n" + "\n".join(f"- {line}" for line in bad)
        entry = queue.add([cfg])[0]
    except ConfigError as exc:
        return problems_markdown(exc, lang)
    except queue.QueueError as exc:
        return f"✗ {exc}"
    return QUEUED(lang, id=entry["id"], ahead=queue.position(entry["id"]))


def table() -> pd.DataFrame:
    """Every entry, the waiting ones in the order they will run. Looking also starts the
    worker when entries wait and none works (after a reboot)."""
    try:
        queue.ensure_worker()
        items = queue.entries()
    except queue.QueueError as exc:
        return pd.DataFrame([[None, "damaged", "", str(exc), "", ""]], columns=COLUMNS)
    rows = []
    for e in items:
        status = e["status"] + (" (cancelling)" if e.get("cancel") and e["status"] ==
                                queue.RUNNING else "")
        rows.append([e["id"], status, e.get("run") or "", queue.describe(e),
                     f"{datetime.fromtimestamp(e['added']):%m-%d %H:%M}",
                     e.get("waiting") or e.get("error") or ""])
    return pd.DataFrame(rows, columns=COLUMNS)


def cancel(entry_id: float | None) -> str:
    if not entry_id:
        return "Give the id of the entry to cancel (click its row)."
    try:
        entry = queue.cancel(int(entry_id))
    except queue.QueueError as exc:
        return f"✗ {exc}"
    if entry["status"] == queue.RUNNING:
        return f"Entry {entry['id']}: its run stops at its next step and saves."
    return f"Entry {entry['id']} cancelled."


def move(entry_id: float | None, to: float | None) -> str:
    if not entry_id or not to:
        return "Give the id of the entry and its new place (1 = next to run)."
    try:
        place = queue.move(int(entry_id), int(to))
    except queue.QueueError as exc:
        return f"✗ {exc}"
    return f"Entry {int(entry_id)} is now number {place} of the waiting."


def build(i18n: I18n) -> QueuePanel:
    with i18n.add(gr.Accordion("Queue", open=False), "Queue", "队列"):
        gr.Markdown("Runs waiting their turn (the **Queue** button beside Start, sweeps, "
                    "comparisons, `peft-studio train --queue`): one at a time, in this order, "
                    "also with the page closed.")
        table_box = gr.Dataframe(interactive=False, wrap=True, max_height=260,
                                 elem_id="queue-table")
        with gr.Row():
            entry = i18n.add(gr.Number(None, label="Entry id", precision=0, minimum=1),
                             "Entry id", "编号")
            cancel_button = i18n.add(gr.Button("Cancel entry", variant="stop", size="sm"),
                                     "Cancel entry", "取消")
            to = i18n.add(gr.Number(1, label="Move to place", precision=0, minimum=1),
                          "Move to place", "移到位置")
            move_button = i18n.add(gr.Button("Move", size="sm"), "Move", "移动")
            refresh = i18n.add(gr.Button("↻ Refresh", size="sm"), "↻ Refresh", "↻ 刷新")
        message = gr.Markdown()
    return QueuePanel(table_box, entry, to, cancel_button, move_button, refresh, message)


def wire(panel: QueuePanel, runs_changed: Any, blocks: gr.Blocks) -> None:
    for event in (panel.refresh.click, runs_changed.change, blocks.load):
        event(table, None, panel.table, show_progress="hidden")
    panel.cancel.click(lambda i: [cancel(i), table()], panel.entry,
                       [panel.message, panel.table])
    panel.move.click(lambda i, n: [move(i, n), table()], [panel.entry, panel.to],
                     [panel.message, panel.table])

    def pick(evt: gr.SelectData) -> Any:
        return evt.row_value[0] if evt.row_value else gr.skip()

    panel.table.select(pick, None, panel.entry)
