"""Wake the Train tab only when a run has something new to show.

A gr.Timer fires a full Gradio event on every tick, and in a page of this size one event
costs the browser about 0.25 CPU-seconds even when the handler changes nothing: Gradio's
client walks the whole component tree once per component with a loading status, cloning
each one's data (measured with Chromium's profiler; `bench/watched.py` shows the effect).
On a small machine that is taken straight from the trainer. So instead a few lines of
script in the page ask the server every second for a stamp of the live run's files, a
plain HTTP call to a component server function (Gradio's `component_server` route: no
queue, no loading status, guarded by the same login), and fire the tab's refresh only
when the stamp changed: when the trainer wrote an event or a log line, when a run started
or ended anywhere, and every few seconds while a run is live so elapsed time and ETA move.
A hidden browser tab asks nothing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr

from core import runner
from core.events import EVENTS, LOG
from webui.monitor import file_size

# Finding the live run reads every run's events (core.runner.active_run): once per this
# many seconds for all pages together, not per page per second.
SCAN_EVERY = 3.0
# While a run is live the page refreshes at least this often, for its clock and ETA.
CLOCK_EVERY = 5.0
POLL_MS = 1000
IDLE = "idle"

_lock = threading.Lock()
_scan: dict[str, object] = {"at": float("-inf"), "run": None, "saves": None}


def _live_run(now: float) -> Path | None:
    saves = runner.saves_dir()
    with _lock:
        if now - float(_scan["at"]) >= SCAN_EVERY or _scan["saves"] != saves:
            _scan.update(at=now, run=runner.active_run(saves), saves=saves)
        return _scan["run"]  # type: ignore[return-value]


def stamp(_: object = None, now: float | None = None) -> str:
    """What the page compares with its last answer: the live run and the sizes of its
    events and log (a trainer only appends), or "idle" when nothing runs."""
    now = time.time() if now is None else now
    run = _live_run(now)
    if run is None:
        return IDLE
    return (f"{run.name}:{file_size(run / EVENTS)}:{file_size(run / LOG)}:"
            f"{int(now // CLOCK_EVERY)}")


# `element`, `server` and `trigger` are what Gradio gives a gr.HTML's js_on_load. The
# interval stops itself once its element is gone (Gradio re-mounts a tab's components).
_SCRIPT = """
let last = null, busy = false;
const id = setInterval(async () => {
  if (!element.isConnected) { clearInterval(id); return; }
  if (busy || document.hidden) return;
  busy = true;
  try {
    const now = await server.stamp(null);
    if (now !== last) { last = now; trigger('change'); }
  } catch (e) {
    // The server is restarting or the network blinked: ask again next time.
  } finally {
    busy = false;
  }
}, POLL_MS);
""".replace("POLL_MS", str(POLL_MS))


def waker(elem_id: str) -> gr.HTML:
    """An invisible component whose `.change` fires when there is something new."""
    return gr.HTML("", html_template="", js_on_load=_SCRIPT, server_functions=[stamp],
                   container=False, padding=False, elem_id=elem_id, elem_classes="ps-wake")
