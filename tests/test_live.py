"""webui.live.panel and webui.live.svg_chart: the Train tab's live run as the page asks for it each
second (the run it shows, a stamp, HTML only when something changed), and its charts."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from core.jobs.events import LOG, EventWriter
from core.jobs.process import PROCESS
from core.schema.config import RunConfig
from webui.live import panel as live
from webui.live import wake
from webui.live.svg_chart import HEIGHT, LEFT, TOP, WIDTH, Series, line_chart, nice_ticks


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Nothing remembered from another test: the live-run scan, the reads, the renders."""
    monkeypatch.setattr(wake, "_scan", {"at": float("-inf"), "run": None, "saves": None})
    monkeypatch.setattr(live, "_watches", {})
    monkeypatch.setattr(live, "_rendered", {})


def make_run(saves: Path, name: str, alive: bool) -> tuple[Path, EventWriter]:
    run_dir = saves / name
    run_dir.mkdir()
    RunConfig(model="embedded", dataset=["identity"], run_name=name).save(run_dir / "config.yaml")
    if not alive:  # a process that is gone (a live one: none written yet, a fresh config)
        (run_dir / PROCESS).write_text(json.dumps({"pid": 0, "start_time": -1}))
    events = EventWriter(run_dir)
    events.emit("start", total_steps=4, method="lora", device="cpu", precision="fp32",
                trainable_params=10, total_params=1000, train_samples=8)
    (run_dir / LOG).write_text("loading the <model>\n")
    return run_dir, events


def step(events: EventWriter, n: int, loss: float) -> None:
    events.emit("step", step=n, total_steps=4, loss=loss, learning_rate=1e-4, epoch=n / 4,
                elapsed=n, eta=4 - n)


def series(page: str, box: str) -> dict[str, int]:
    """Point counts per series of one chart of the panel."""
    svg = re.search(rf'id="{box}">(.*?)</svg>', page).group(1)
    return {name: int(n) for name, n in
            re.findall(r'data-series="([^"]+)" data-points="(\d+)"', svg)}


def test_the_page_gets_the_live_run_then_only_what_changed(saves):
    run_dir, events = make_run(saves, "lora-1", alive=True)
    step(events, 1, 2.5)
    first = live.live_view({"run": None, "known": None, "lang": "en"})
    assert 'data-run="lora-1"' in first["html"] and 'data-status="running"' in first["html"]
    assert "step 1 / 4" in first["html"] and "loss <strong>2.5000</strong>" in first["html"]
    assert series(first["html"], "run-loss") == {"training": 1}
    assert "loading the &lt;model&gt;" in first["html"]  # the log tail, escaped
    # Nothing new: a stamp and no HTML, so the page does nothing.
    again = live.live_view({"run": "lora-1", "known": first["stamp"], "lang": "en"})
    assert again == {"stamp": first["stamp"]}
    step(events, 2, 2.0)
    events.emit("eval", step=2, eval_loss=2.2)
    moved = live.live_view({"run": "lora-1", "known": first["stamp"], "lang": "en"})
    assert moved["stamp"] != first["stamp"] and "step 2 / 4" in moved["html"]
    assert series(moved["html"], "run-loss") == {"training": 2, "evaluation": 1}
    # The same stamp in another language is another answer.
    chinese = live.live_view({"run": "lora-1", "known": moved["stamp"], "lang": "zh"})
    assert "损失" in chinese["html"] and "日志（末尾）" in chinese["html"]


def test_an_ended_run_stays_in_the_page_that_showed_it(saves):
    run_dir, events = make_run(saves, "lora-1", alive=False)
    step(events, 1, 2.5)
    events.emit("end", status="done", final_loss=2.5, output_dir="out", error=None)
    # A page that showed nothing shows nothing: nothing runs.
    idle = live.live_view({"run": None, "known": None, "lang": "en"})
    assert 'data-run=""' in idle["html"] and "No run yet" in idle["html"]
    shown = live.live_view({"run": "lora-1", "known": None, "lang": "en"})
    assert 'data-status="done"' in shown["html"] and "Done" in shown["html"]
    # A name from the page only ever names a run in saves/.
    for name in ("..", ".", "/etc", "nope"):
        assert 'data-run=""' in live.live_view({"run": name, "known": None})["html"]
    assert 'data-run="lora-1"' in live.live_view({"run": "../../lora-1"})["html"]
    # Garbage from a page is no run, in English.
    assert "No run yet" in live.live_view(["bad"])["html"]


def test_a_run_started_elsewhere_replaces_the_ended_one(saves):
    old, events = make_run(saves, "lora-1", alive=False)
    events.emit("end", status="done", final_loss=2.5, output_dir="out", error=None)
    shown = live.live_view({"run": "lora-1", "known": None})
    make_run(saves, "lora-2", alive=True)
    wake.forget_live_run()  # what starting a run from this server does
    now = live.live_view({"run": "lora-1", "known": shown["stamp"]})
    assert 'data-run="lora-2"' in now["html"] and 'data-status="running"' in now["html"]


def test_pages_asking_together_share_one_render(saves, monkeypatch):
    make_run(saves, "lora-1", alive=True)
    drawn: list[str] = []
    render = live.render
    monkeypatch.setattr(live, "render", lambda w, lang="en": drawn.append(lang) or render(w, lang))
    for _ in range(3):
        live.live_view({"run": None, "known": None})
    assert drawn == ["en"]
    monkeypatch.setattr(live, "SHARE_FOR", -1.0)  # as if the next ask came much later
    live.live_view({"run": None, "known": None})
    assert drawn == ["en", "en"]


def test_the_panel_is_one_html_component_with_its_server_function():
    component = live.panel()
    assert [f.__name__ for f in component.server_fns] == ["live_view"]
    assert "server.live_view(" in component.js_on_load
    assert "No run yet" in component.value


# -- the charts ------------------------------------------------------------------------------
def test_ticks_are_round_and_cover_the_data():
    assert nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(0.31, 1.09) == pytest.approx([0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(2e-5, 2e-4)[0] == pytest.approx(5e-5)
    assert len(nice_ticks(3.0, 3.0)) >= 2  # one value: a small band around it
    assert nice_ticks(math.nan, 1.0) == []


def _coords(svg: str, name: str) -> list[tuple[float, float]]:
    points = re.search(rf'data-series="{name}"[^>]* points="([^"]+)"', svg).group(1)
    return [tuple(map(float, p.split(","))) for p in points.split()]


def test_a_chart_draws_every_point_inside_its_frame_and_leaves_out_nan():
    svg = line_chart([Series("training", [(1, 2.0), (2, math.nan), (3, 1.0), (4, 0.5)]),
                      Series("evaluation", [(2, 1.5)], markers=True)], y_label="loss")
    drawn = _coords(svg, "training")
    assert len(drawn) == 3
    xs, ys = [x for x, _ in drawn], [y for _, y in drawn]
    assert xs == sorted(xs) and LEFT <= min(xs) and max(xs) <= WIDTH
    assert ys == sorted(ys) and TOP <= min(ys) and max(ys) <= HEIGHT  # a falling loss
    assert svg.count("<circle") == 1  # the lone evaluation point is marked
    assert "evaluation</text>" in svg and "training</text>" in svg  # a legend for two


def test_an_empty_chart_says_so_and_one_series_has_no_legend():
    assert "no points yet" in line_chart([Series("training", [])])
    one = line_chart([Series("lr", [(1, 1e-4), (2, 5e-5)])])
    assert "ps-chart-legend" not in one and "e-05" in one
    fixed = line_chart([Series("accuracy", [(1, 0.5), (2, 0.75)])], y_range=(0.0, 1.0),
                       rules=(0.5,))
    assert ">0.0</text>" in fixed and ">1.0</text>" in fixed and "ps-chart-rule" in fixed
