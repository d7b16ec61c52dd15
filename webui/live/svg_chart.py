"""Line charts as SVG text, for the live run the page draws itself (webui.live.panel).

Written by hand because both ready ways cost the trainer too much on a small machine: a
matplotlib figure takes about 0.2 CPU-seconds to draw (PNG or SVG alike: the layout, not
the format), and a native Gradio plot is redrawn through a Gradio event, which in a page
of this size costs the browser 0.25 to 0.5 CPU-seconds (webui.live.wake). This draws a chart in
about a millisecond, and the page puts it in place without an event. What it needs is
small: a few series over integer steps, nice ticks, a grid, markers for sparse points
(an evaluation logged once), a legend. Finished runs (history, comparisons) keep the
richer matplotlib figures of core.jobs.plots.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 34  # room for tick labels and the axis names
# matplotlib's first colours, so the live chart and the history's figure look alike
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


@dataclass(frozen=True)
class Series:
    name: str
    points: list[tuple[float, float]]  # (step, value); NaN values are left out
    color: str = ""
    markers: bool = False  # points marked (sparse series, such as evaluations)
    dashed: bool = False


def nice_ticks(low: float, high: float, most: int = 5) -> list[float]:
    """About `most` round tick values within [low, high]: steps of 1, 2 or 5 times a power
    of ten."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        pad = abs(low) * 0.05 or 1.0
        low, high = low - pad, high + pad
    power = 10 ** math.floor(math.log10((high - low) / max(1, most - 1)))

    def count(step: float) -> int:
        return math.floor(high / step + 1e-9) - math.ceil(low / step - 1e-9) + 1

    # the finest round step that gives at most one tick more than asked
    step = next(m * power for m in (1, 2, 5, 10, 20) if count(m * power) <= most + 1)
    first = math.ceil(low / step - 1e-9)
    # multiples of the step, each rounded to its precision: no drift from repeated adds
    digits = max(0, -math.floor(math.log10(step) + 1e-9)) + 1
    return [round(k * step, digits) + 0.0 for k in range(first, first + count(step))]


def _label(value: float, ticks: list[float]) -> str:
    span = max((abs(t) for t in ticks), default=0.0)
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if span and (span < 1e-3 or span >= 1e5):
        # as many digits as tell the ticks apart (a learning rate that barely moves)
        digits = math.floor(math.log10(span) + 1e-9) - math.floor(math.log10(step) + 1e-9)
        return f"{value:.{min(6, max(1, digits))}e}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    return f"{value:.{decimals}f}"


def line_chart(series: list[Series], x_label: str = "step", y_label: str = "",
               y_range: tuple[float, float] | None = None,
               rules: tuple[float, ...] = ()) -> str:
    """One chart; `y_range` fixes the y axis (an accuracy's 0 to 1), `rules` are
    horizontal reference lines (0 for rewards, 0.5 for a coin toss)."""
    drawn = [Series(s.name, [(x, y) for x, y in s.points if math.isfinite(y)],
                    s.color or COLORS[i % len(COLORS)], s.markers, s.dashed)
             for i, s in enumerate(series)]
    drawn = [s for s in drawn if s.points]
    out = [f'<svg class="ps-chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
           'xmlns="http://www.w3.org/2000/svg" role="img">']
    if not drawn:
        out.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
                   'class="ps-chart-empty">no points yet</text></svg>')
        return "".join(out)
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points] + list(rules)
    x_ticks = [t for t in nice_ticks(min(xs), max(xs), 6) if t == int(t)] or [min(xs)]
    y_low, y_high = y_range or (min(ys), max(ys))
    if not y_range:  # a little room, so a line does not run along the frame
        pad = (y_high - y_low) * 0.05
        y_low, y_high = y_low - pad, y_high + pad
    y_ticks = nice_ticks(y_low, y_high, 5)
    x_low, x_high = min(xs + x_ticks), max(xs + x_ticks)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    if y_high == y_low:
        y_low, y_high = y_low - 1, y_high + 1
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x_low) / (x_high - x_low) * inner_w

    def py(y: float) -> float:
        return TOP + (y_high - y) / (y_high - y_low) * inner_h

    out.append('<g class="ps-chart-grid">')
    for t in x_ticks:
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{TOP}" y2="{TOP + inner_h}"/>')
    for t in y_ticks:
        out.append(f'<line x1="{LEFT}" x2="{LEFT + inner_w}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>')
    out.append("</g>")
    for rule in rules:
        out.append(f'<line class="ps-chart-rule" x1="{LEFT}" x2="{LEFT + inner_w}" '
                   f'y1="{py(rule):.1f}" y2="{py(rule):.1f}"/>')
    out.append(f'<rect class="ps-chart-frame" x="{LEFT}" y="{TOP}" width="{inner_w}" '
               f'height="{inner_h}"/>')
    out.append('<g class="ps-chart-ticks">')
    for t in x_ticks:
        out.append(f'<text x="{px(t):.1f}" y="{TOP + inner_h + 14}" '
                   f'text-anchor="middle">{int(t)}</text>')
    for t in y_ticks:
        out.append(f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" '
                   f'text-anchor="end">{_label(t, y_ticks)}</text>')
    out.append("</g>")
    out.append(f'<text class="ps-chart-axis" x="{LEFT + inner_w / 2}" y="{HEIGHT - 4}" '
               f'text-anchor="middle">{html.escape(x_label)}</text>')
    if y_label:
        out.append(f'<text class="ps-chart-axis" transform="translate(12 {TOP + inner_h / 2})'
                   f' rotate(-90)" text-anchor="middle">{html.escape(y_label)}</text>')
    for s in drawn:
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        out.append(f'<polyline class="ps-series" data-series="{html.escape(s.name)}" '
                   f'data-points="{len(s.points)}" fill="none" stroke="{s.color}" '
                   f'stroke-width="1.6"{dash} points="{coords}"/>')
        if s.markers or len(s.points) == 1:
            out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{s.color}"/>'
                       for x, y in s.points)
    if len(drawn) > 1:
        out.append(_legend(drawn, LEFT + inner_w))
    out.append("</svg>")
    return "".join(out)


def _legend(series: list[Series], right: float) -> str:
    rows = []
    for i, s in enumerate(series):
        y = TOP + 14 + 15 * i
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        rows.append(f'<line x1="{right - 118}" x2="{right - 98}" y1="{y - 4}" y2="{y - 4}" '
                    f'stroke="{s.color}" stroke-width="2"{dash}/>'
                    f'<text x="{right - 92}" y="{y}">{html.escape(s.name)}</text>')
    box = (f'<rect x="{right - 124}" y="{TOP + 2}" width="120" height="{15 * len(series) + 6}"'
           ' rx="3"/>')
    return f'<g class="ps-chart-legend">{box}{"".join(rows)}</g>'
