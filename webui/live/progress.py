"""Progress bars (of a run, of an evaluation or export job) and the clock; the curves are
drawn by core/jobs/plots.py."""

from __future__ import annotations

import html


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _clock_span(seconds: float | None, direction: int) -> str:
    """A clock the page moves on by itself between refreshes (webui.live.wake ticks every
    `.ps-running .ps-clock`: +1 s a second for elapsed, -1 for the ETA), so the page need
    not ask the server for a new bar each second to keep the time going."""
    if seconds is None:
        return clock(None)
    return (f'<span class="ps-clock" data-s="{seconds:.1f}" data-d="{direction}">'
            f"{clock(seconds)}</span>")


def progress_html(step: int, total: int, elapsed: float | None, eta: float | None,
                  status: str, caption: str = "") -> str:
    share = min(1.0, step / total) if total else 0.0
    counted = (f"step {step} / {total or '?'} · elapsed {_clock_span(elapsed, 1)} · "
               f"ETA {_clock_span(eta, -1)}")
    if status == "idle":  # nothing to count yet
        detail = html.escape(caption)
    elif caption:
        detail = f"{html.escape(caption)} · {counted}"
    else:
        detail = counted
    return (
        f'<div class="ps-progress ps-{html.escape(status)}">'
        f'<div class="ps-bar"><div class="ps-fill" style="width:{share * 100:.1f}%"></div></div>'
        f'<div class="ps-detail">{detail}</div></div>'
    )


def job_progress_html(done: int, total: int, message: str, status: str = "running") -> str:
    """A job's bar in the app's own progress style (webui.app CSS: ps-progress, ps-bar,
    ps-fill, coloured by ps-done / ps-failed / ps-aborted)."""
    share = 100.0 * done / total if total else 0.0
    return (f'<div class="ps-progress ps-{status}"><div class="ps-bar">'
            f'<div class="ps-fill" style="width:{share:.1f}%"></div></div>'
            f'<div class="ps-job-detail" style="font-size:.85rem;margin-top:4px">'
            f"{done}/{total} · {html.escape(message)}</div></div>")
