"""Stamps of the live run's, the newest comparison's and a followed job's files, and a
component that wakes a panel only when its stamp changed: the one way every page follows
a job (a run, a comparison, an evaluation, an export).

A gr.Timer fires a full Gradio event on every tick, and in a page of this size one event
costs the browser 0.25 to 0.5 CPU-seconds even when the handler changes nothing: Gradio's
client walks the whole component tree once per component with a loading status, cloning
each one's data (measured with Chromium's profiler; `bench/watched.py` shows the effect).
On a small machine that is taken straight from the trainer. So instead a few lines of
script in the page ask the server every second for a stamp, a plain HTTP call to a
component server function (Gradio's `component_server` route: no queue, no loading
status, guarded by the same login), and fire the panel's refresh only when the stamp
changed. A run's stamp changes when the trainer wrote an event (a step, an evaluation,
the end), when a run started or ended anywhere, and every `CLOCK_EVERY` seconds a live run
writes no event (the log of a model loading). The Train tab's live run goes one step
further (webui.live.panel): the page draws it from the answer itself. A hidden browser tab asks
nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from core import paths
from core.experiments import compare
from core.jobs import runs
from core.jobs.events import EVENTS
from core.jobs.process import process_alive
from webui.live.monitor import file_size

# Finding the live run reads every run's events (core.jobs.active_run): once per this
# many seconds for all pages together, not per page per second.
SCAN_EVERY = 3.0
# A live run that writes no event is refreshed this often, for a log that grows without
# events (a model loading); the clock moves on in the page.
CLOCK_EVERY = 15.0
POLL_MS = 1000
IDLE = "idle"

_lock = threading.Lock()
_scan: dict[str, object] = {"at": float("-inf"), "run": None, "saves": None}


def live_run(now: float) -> Path | None:
    saves = paths.saves_dir()
    with _lock:
        if now - float(_scan["at"]) >= SCAN_EVERY or _scan["saves"] != saves:
            _scan.update(at=now, run=runs.active_run(saves), saves=saves)
        return _scan["run"]  # type: ignore[return-value]


def forget_live_run() -> None:
    """Look again at the next ask (a run was just started from this server)."""
    with _lock:
        _scan["at"] = float("-inf")


def stamp(_: object = None, now: float | None = None) -> str:
    """What the page compares with its last answer: the live run, the size of its events
    (a trainer only appends) and how many `CLOCK_EVERY`s it has written none, or "idle"
    when nothing runs."""
    now = time.time() if now is None else now
    run = live_run(now)
    return IDLE if run is None else stamp_of(run, now)


def stamp_of(run: Path, now: float) -> str:
    """A live run's stamp (see `stamp`)."""
    try:
        info = (run / EVENTS).stat()
        size, quiet = info.st_size, now - info.st_mtime
    except OSError:
        size, quiet = 0, 0.0
    # Counted from the last event, so a run that writes one more often than that is
    # refreshed by its events alone.
    return f"{run.name}:{size}:{max(0, int(quiet // CLOCK_EVERY))}"


# `element`, `server` and `trigger` are what Gradio gives a gr.HTML's js_on_load. The
# interval stops itself once its element is gone (Gradio re-mounts a tab's components).
_SCRIPT = """
let last = null, busy = false;
const id = setInterval(async () => {
  if (!element.isConnected) { clearInterval(id); return; }
  if (document.hidden || busy) return;
  busy = true;
  try {
    // A page that follows a job of its own names it in a hidden field (SOURCE); while
    // that is empty there is nothing to ask about.
    const field = SOURCE ? document.querySelector(SOURCE) : null;
    const arg = field ? field.value : null;
    if (SOURCE && !arg) return;
    const now = await server.ASK(arg);
    if (now !== last) { last = now; trigger('change'); }
  } catch (e) {
    // The server is restarting or the network blinked: ask again next time.
  } finally {
    busy = false;
  }
}, POLL_MS);
""".replace("POLL_MS", str(POLL_MS))


def comparison_stamp(_: object = None, now: float | None = None) -> str:
    """The Train tab's method comparison (webui.tabs.train.compare) shows the newest
    comparison: its events, and while it runs, the run it trains."""
    found = compare.list_comparisons()
    if not found:
        return IDLE
    job = found[0]
    training = stamp(None, now) if runs.run_status(job)[0] == runs.RUNNING else IDLE
    return f"{job.name}:{file_size(job / EVENTS)}:{training}"


def job_stamp(job: str | None = None) -> str:
    """The stamp of one job folder a page follows (an evaluation, an export): the size of
    its events and whether its process lives (a killed job writes no end event). The name
    comes from the page, so only a folder inside saves/ is stamped; anything else is idle."""
    if not job or not isinstance(job, str) or len(job) > 4096:
        return IDLE
    try:
        path = Path(job).resolve()
        inside = path.is_relative_to(paths.saves_dir().resolve()) and path.is_dir()
    except (OSError, RuntimeError, ValueError):
        return IDLE
    if not inside:
        return IDLE
    return f"{path.name}:{file_size(path / EVENTS)}:{process_alive(path)}"


def waker(elem_id: str, ask: Callable[..., str] = stamp, every_ms: int = POLL_MS,
          source: str | None = None) -> gr.HTML:
    """An invisible component whose `.change` fires when `ask`'s answer changed; it asks
    every `every_ms` milliseconds. With `source` (the elem_id of a hidden Textbox holding
    the job the page follows) `ask` gets that job, and nothing is asked while it is empty."""
    selector = f"#{source} textarea, #{source} input" if source else ""
    script = (_SCRIPT.replace("ASK", ask.__name__)
              .replace("SOURCE", json.dumps(selector))
              .replace(f"}}, {POLL_MS});", f"}}, {every_ms});"))
    return gr.HTML("", html_template="", js_on_load=script,
                   server_functions=[ask], container=False, padding=False, elem_id=elem_id,
                   elem_classes="ps-wake")
