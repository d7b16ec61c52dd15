"""The Train tab's live run, drawn by the page without a Gradio event per step.

Every Gradio event costs this page's browser 0.25 to 0.5 CPU-seconds whatever it changes
(webui.live.wake says why), and a matplotlib curve costs the server 0.2: on a small machine
both are taken from the trainer, and following a run that way made it 10 to 20% slower
(`bench/watched.py`). So the run's bar, numbers, curves and log tail are one gr.HTML whose
script asks a component server function (`live_view`: a plain HTTP call, no queue, no
loading status) whether anything is new, once a second while the run it shows trains and
every few seconds otherwise, and puts the answer in place itself. The answer is HTML
rendered here (`render`: the same texts the handlers' tests check, curves drawn by
webui.live.svg_chart), so the page holds no logic but the clocks. Gradio events are left for
what needs the server's state: a run that starts or ends (the page triggers `submit`,
the Train tab's handler updates the buttons and the history).

Which run a page shows: the live one; else the one it showed last (its name is in the
rendered HTML); else none. A hidden browser tab asks nothing.
"""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from core.jobs.events import EVENTS, LOG
from core.jobs.plots import EVAL, TRAIN, loss_frame, lr_frame, reward_frame
from core.jobs.runs import run_in_saves
from webui.i18n import Text
from webui.live import monitor, wake
from webui.live.monitor import Watch, file_size
from webui.live.svg_chart import Series, line_chart

POLL_MS = 1000
# Renders shared by the pages that ask within this many seconds (the bar's elapsed time
# is computed when rendered; the page moves it on from there).
SHARE_FOR = 1.0
KEEP_RUNS = 8

LOSS = Text("Loss", "损失")
LEARNING_RATE = Text("Learning rate", "学习率")
REWARDS = Text("Rewards (chosen, rejected, margin)", "奖励（被选、被拒、差值）")
REWARD_ACCURACY = Text("Reward accuracy", "奖励准确率")
LOG_END = Text("Log (end)", "日志（末尾）")

_lock = threading.Lock()
_watches: dict[str, Watch] = {}  # run folder -> what has been read of it, for all pages
_rendered: dict[str, tuple[float, str]] = {}  # stamp -> when rendered, and the HTML


def _shown_run(shown: str | None) -> Path | None:
    """The run a page says it shows, when nothing is live."""
    # A name from the page, not a path: it can only name a run in saves/.
    return run_in_saves(Path(shown).name) if isinstance(shown, str) and shown else None


def _ended_stamp(run: Path | None) -> str:
    if run is None:
        return wake.IDLE
    # An ended run changes no more, but its last log lines may follow its end event.
    return f"{run.name}:{file_size(run / EVENTS)}:{file_size(run / LOG)}:over"


def _watch(run: Path) -> Watch:
    with _lock:
        watch = _watches.pop(str(run), None) or Watch(run=str(run))
        watch, _ = monitor.read(watch)
        _watches[str(run)] = watch  # newest last, so the oldest goes first
        while len(_watches) > KEEP_RUNS:
            _watches.pop(next(iter(_watches)))
        return watch


def live_view(asked: dict[str, Any] | None) -> dict[str, Any]:
    """What the page calls each second, with the run it shows (`run`), the stamp of what it
    shows (`known`) and its language. Returns the stamp, and new HTML when it differs."""
    asked = asked if isinstance(asked, dict) else {}
    shown, known = str(asked.get("run") or ""), asked.get("known")
    lang = asked.get("lang") if asked.get("lang") in ("en", "zh") else "en"
    now = time.time()
    run = wake.live_run(now)
    if run is not None:
        stamp = f"{wake.stamp_of(run, now)}|{lang}"
    else:
        run = _shown_run(shown)
        stamp = f"{_ended_stamp(run)}|{lang}"
    if stamp == known:
        return {"stamp": stamp}
    with _lock:
        at, text = _rendered.get(stamp, (float("-inf"), ""))
    if now - at > SHARE_FOR:
        text = render(_watch(run) if run is not None else Watch(), lang)
        with _lock:
            _rendered.clear()  # only the newest stamp is ever asked again
            _rendered[stamp] = (now, text)
    return {"stamp": stamp, "html": text}


# -- what it shows ---------------------------------------------------------------------------
def render(watch: Watch, lang: str = "en") -> str:
    """The live panel: bar, numbers, curves and log tail of `watch`'s run."""
    name = Path(watch.run).name if watch.run else ""
    parts = [f'<div class="ps-live" data-run="{html.escape(name)}" '
             f'data-status="{html.escape(watch.status or "idle")}">',
             monitor.progress(watch)]
    if watch.run is not None:
        parts.append(f'<div class="ps-stats prose">{_markdown(monitor.stats(watch))}</div>')
        parts.extend(_charts(watch.events, lang))
        parts.append(f'<div class="ps-log"><div class="ps-box-title">{LOG_END(lang)}</div>'
                     f"<pre>{html.escape(monitor.log_tail(watch))}</pre></div>")
    parts.append("</div>")
    return "".join(parts)


def _charts(events: list[dict[str, Any]], lang: str) -> list[str]:
    losses = loss_frame(events)
    loss = [Series("training", _points(losses[losses["series"] == TRAIN], "loss")),
            Series("evaluation", _points(losses[losses["series"] == EVAL], "loss"),
                   markers=True, dashed=True)]
    rates = lr_frame(events)
    out = [_box("run-loss", LOSS(lang), line_chart(loss, y_label="loss")),
           _box("run-lr", LEARNING_RATE(lang), line_chart(
               [Series("learning rate", _points(rates, "learning_rate"), "#8250df")],
               y_label="learning rate"))]
    rewards = reward_frame(events)
    if not rewards.empty:  # a preference run
        out.append(_box("run-rewards", REWARDS(lang), line_chart(
            [Series("chosen", _points(rewards, "chosen"), "#2da44e"),
             Series("rejected", _points(rewards, "rejected"), "#e5484d"),
             Series("margin", _points(rewards, "margin"), "#0969da", dashed=True)],
            y_label="reward", rules=(0.0,))))
        accuracy = _points(rewards, "accuracy")
        if any(y == y for _, y in accuracy):  # KTO logs none: its replies are not paired
            out.append(_box("run-reward-accuracy", REWARD_ACCURACY(lang), line_chart(
                [Series("reward accuracy", accuracy, "#8250df", markers=True)],
                y_label="reward accuracy", y_range=(0.0, 1.0), rules=(0.5,))))
    return out


def _points(frame: Any, column: str) -> list[tuple[float, float]]:
    return list(zip(frame["step"].tolist(), frame[column].tolist(), strict=True))


def _box(elem_id: str, title: str, chart: str) -> str:
    return (f'<div class="ps-chart-box" id="{elem_id}"><div class="ps-box-title">'
            f"{html.escape(title)}</div>{chart}</div>")


def _markdown(text: str) -> str:
    from markdown_it import MarkdownIt  # gradio's own Markdown renderer

    return MarkdownIt("commonmark", {"html": False}).render(text)


# -- the page's side -------------------------------------------------------------------------
# `element`, `server`, `trigger` and `watch` are what Gradio gives a gr.HTML's js_on_load.
# The script writes the answer into `element` itself: setting `props.value` instead has
# Gradio re-render its template, which cost the page's renderer and GPU process about
# 0.25 CPU-seconds per step (measured during a watched run's steps: 4.2 CPU-s in 50 s,
# against 1.5 with innerHTML). Gradio sets the value only when an event returns one (Start):
# then it renders that, and `watch` has the next ask fetch afresh. The interval stops itself
# once its element is gone (Gradio re-mounts a tab's components).
_SCRIPT = """
let last = null, busy = false, status = null;
const seen = new WeakMap();  // a clock's span -> the time it showed and when
const clock = (s) => {  // webui.live.progress.clock
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
  const two = (n) => String(n).padStart(2, '0');
  return h ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
};
const tickClocks = () => {
  for (const span of element.querySelectorAll('.ps-running .ps-clock')) {
    let given = seen.get(span);
    if (!given || given.s !== span.dataset.s) {
      given = {s: span.dataset.s, at: Date.now()};
      seen.set(span, given);
    }
    const moved = (Date.now() - given.at) / 1000 * Number(span.dataset.d);
    span.textContent = clock(Math.max(0, Number(span.dataset.s) + moved));
  }
};
const settle = () => {  // after a render: the log's end in view, the clocks from now
  const log = element.querySelector('.ps-log pre');
  if (log) log.scrollTop = log.scrollHeight;
  tickClocks();
};
const shown = () => element.querySelector('.ps-live');
const lang = () => {
  const picked = document.querySelector('#ps-lang input:checked');
  return picked && picked.value === 'zh' ? 'zh' : 'en';
};
const ask = async () => {
  if (busy) return;
  busy = true;
  try {
    const live = shown();
    const answer = await server.live_view(
      {run: (live && live.dataset.run) || window.psLiveRun || null, known: last, lang: lang()});
    if (answer.html !== undefined) {
      element.innerHTML = answer.html;
      settle();
    }
    last = answer.stamp;
    const now = shown();
    if (now && now.dataset.run) window.psLiveRun = now.dataset.run;  // for a re-mounted panel
    const key = now ? `${now.dataset.run}:${now.dataset.status}` : null;
    // The first answer too (a page opened on a live run updates its buttons), unless
    // there is nothing to show.
    if (key !== status && (status !== null || (now && now.dataset.run))) trigger('submit');
    status = key;
  } catch (e) {
    // The server is restarting or the network blinked: ask again next time.
  } finally {
    busy = false;
  }
};
watch('value', () => { last = null; settle(); });
ask();
let asked = 0;
const id = setInterval(() => {
  if (!element.isConnected) { clearInterval(id); return; }
  if (document.hidden) return;
  tickClocks();
  const live = shown();
  // A run started anywhere is found by a scan every few seconds (webui.live.wake.SCAN_EVERY):
  // with none running, asking more often would only cost the trainer-to-be.
  if (live && live.dataset.status === 'running' || Date.now() - asked >= IDLE_MS) {
    asked = Date.now();
    ask();
  }
}, POLL_MS);
""".replace("IDLE_MS", str(int(wake.SCAN_EVERY * 1000))).replace("POLL_MS", str(POLL_MS))


def panel(elem_id: str = "run-live") -> gr.HTML:
    """The live panel. Its `.submit` fires when the run it shows, or that run's status,
    changed (`.change` would also fire when an event sets its value, as Start does)."""
    return gr.HTML(render(Watch()), js_on_load=_SCRIPT, server_functions=[live_view],
                   elem_id=elem_id, container=False, padding=False)
