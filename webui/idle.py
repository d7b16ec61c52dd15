"""Keep an idle app idle: on a small machine whatever the server or an open page does while
nothing happens is taken from the trainer (`bench/watched.py` measures it).

Two of Gradio's own habits (gradio 6.31) cost the most, found with py-spy and Chromium's
profiler, and neither has a public setting:
- its queue looks for work every millisecond and for progress every 10 ms when it has
  none: 8% of a core for an idle server. `poll_gently` makes that 20 ms and 100 ms (an
  event starts at most 20 ms later).
- every page keeps one status tracker's elapsed-time clock running in a
  requestAnimationFrame loop at 60 frames a second after load, for a tracker that is
  hidden (a one-Markdown app has it too): about 0.1 core of the browser. The tracker
  takes `window.requestAnimationFrame` when its module loads, so a script that Gradio adds
  later (`head=`) comes too late; `early_script_middleware` puts `EARLY_SCRIPT` at the top
  of the page's <head>, before Gradio's modules, and that script runs such clocks (a frame
  callback computing `(performance.now() - start) / 1e3`) once a second: a visible
  clock's tenths of a second then jump, which nobody reads, and each frame of it cost the
  renderer and GPU process more than everything else an idle page does (4 frames a
  second: 0.055 of a core for the idle Train tab, 1: 0.04). Every other frame
  callback runs as before.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

QUEUE_POLL_S = 0.02
PROGRESS_POLL_S = 0.1
CLOCK_FRAME_MS = 1000


def poll_gently(demo: gr.Blocks) -> None:
    """Slow the queue's idle polling; call after `demo.queue()`."""
    queue = demo._queue
    for name, seconds in (("sleep_when_free", QUEUE_POLL_S),
                          ("progress_update_sleep_when_free", PROGRESS_POLL_S)):
        if hasattr(queue, name):  # a later gradio may rename them: then it polls as it likes
            setattr(queue, name, seconds)


EARLY_SCRIPT = """<script>
(() => {
  const raf = window.requestAnimationFrame.bind(window);
  const cancel = window.cancelAnimationFrame.bind(window);
  const CLOCK = /performance\\.now\\(\\)\\s*-[^;]*\\/\\s*1e3/;
  const isClock = new Map();  // a callback's source -> whether it is such a clock
  const timers = new Map();   // our ids (negative) -> the pending timeout or frame
  let next = -1;
  window.requestAnimationFrame = (callback) => {
    const source = String(callback);
    let clock = isClock.get(source);
    if (clock === undefined) { clock = CLOCK.test(source); isClock.set(source, clock); }
    if (!clock) return raf(callback);
    const id = next--;
    timers.set(id, {timeout: setTimeout(() => {
      timers.set(id, {frame: raf((t) => { timers.delete(id); callback(t); })});
    }, CLOCK_FRAME_MS)});
    return id;
  };
  window.cancelAnimationFrame = (id) => {
    const pending = timers.get(id);
    if (pending === undefined) return cancel(id);
    timers.delete(id);
    if (pending.frame !== undefined) cancel(pending.frame); else clearTimeout(pending.timeout);
  };
})();
</script>""".replace("CLOCK_FRAME_MS", str(CLOCK_FRAME_MS))


class early_script_middleware:  # noqa: N801 (Starlette calls it like a class: Middleware(cls))
    """ASGI middleware: `EARLY_SCRIPT` first in the <head> of every HTML page the app serves
    (the app itself and its login page), before any of Gradio's scripts."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        start: dict | None = None
        body: list[bytes] = []

        async def send_with_script(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                if not headers.get(b"content-type", b"").startswith(b"text/html"):
                    start = None
                    await send(message)
                    return
                start = message  # held until the whole body is here: its length changes
                return
            if start is None:
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = b"".join(body).replace(b"<head>", b"<head>" + EARLY_SCRIPT.encode(), 1)
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            headers.append((b"content-length", str(len(page)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, send_with_script)
