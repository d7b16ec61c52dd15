"""Benchmark: does watching a run in the browser slow it down?

The same LoRA job on the embedded model runs with the app serving and no page open, then
with headless Chromium showing the Train tab (which re-attaches to the live run and draws
its curves), interleaved A B A B on the same machine. Printed: samples/s of each (median)
and the ratio watched / unwatched (the target is within 5%), and the CPU seconds the app
server and the browser used during each watched run: on a small machine they are taken
from the trainer.
Usage: `python bench/watched.py [--steps N] [--repeats N] [--dataset NAME]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser_support import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, serve_app, wait_for  # noqa: E402
from speed import run_once  # noqa: E402

from core.jobs.events import read_events  # noqa: E402


def _cpu(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the app server and by every Chromium process."""
    import psutil

    used = {"server": 0.0, "browser": 0.0}
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            times = proc.cpu_times()
            total = times.user + times.system
            if proc.info["pid"] == server_pid:
                used["server"] += total
            elif "chrom" in (proc.info["name"] or ""):
                used["browser"] += total
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return used


def _sample(pid: int, into: list, stop: threading.Event) -> None:
    while not stop.is_set():
        into.append((time.time(), _cpu(pid)))
        stop.wait(0.5)
    into.append((time.time(), _cpu(pid)))


def _used(first: tuple[float, dict], last: tuple[float, dict]) -> str:
    return ", ".join(f"{k} {last[1][k] - first[1].get(k, 0.0):.1f}" for k in last[1])


def _newest(saves: Path) -> Path:
    return max((p for p in saves.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dataset", default="sentiment")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="peft-studio-watched-"))
    saves = work / "saves"
    saves.mkdir()
    speeds: dict[str, list[float]] = {"unwatched": [], "watched": []}
    with serve_app(work, saves=saves) as app, sync_playwright() as pw:
        for _ in range(args.repeats):
            speeds["unwatched"].append(
                run_once(args.dataset, "studio", args.steps, saves)["samples_per_s"])
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(app.url)
            page.get_by_role("tab", name="Train").click()
            # Opening the page (its scripts, the parameter count it asks for) is not
            # watching: let it settle first.
            count = page.locator("#param-count")
            wait_for(lambda c=count: "parameters trainable" in c.inner_text(), 120,
                     "the page to load")
            time.sleep(5)
            calls = {"events": 0, "stamps": 0}  # Gradio events vs webui.live.wake's cheap asks

            def note(request, calls=calls) -> None:
                if "/queue/join" in request.url:
                    calls["events"] += 1
                elif "/component_server" in request.url:
                    calls["stamps"] += 1

            page.on("request", note)
            samples: list[tuple[float, dict[str, float]]] = []
            sampling = threading.Event()
            sampler = threading.Thread(target=_sample, args=(app.pid, samples, sampling))
            sampler.start()
            try:
                speeds["watched"].append(
                    run_once(args.dataset, "studio", args.steps, saves)["samples_per_s"])
            finally:
                sampling.set()
                sampler.join()
            print("  CPU seconds during the watched run: " + _used(samples[0], samples[-1]))
            # What the samples/s above feel: from the first logged step to the last.
            steps = [e["time"] for e in read_events(_newest(saves))[0] if e["type"] == "step"]
            window = [s for s in samples if steps[0] <= s[0] <= steps[-1]]
            if len(window) > 1:
                print(f"  during its steps ({window[-1][0] - window[0][0]:.0f} s): "
                      + _used(window[0], window[-1]))
            # The page must really have followed the run, or this measured nothing.
            detail = page.locator(".ps-detail")
            wait_for(lambda d=detail: "done" in d.inner_text(), 30,
                     "the page to show the run it followed as done")
            print(f"  the page asked {calls['stamps']} stamps and ran {calls['events']} "
                  "Gradio events")
            browser.close()
            print(f"  unwatched {speeds['unwatched'][-1]:.3f}  watched "
                  f"{speeds['watched'][-1]:.3f} samples/s", flush=True)
    unwatched, watched = (statistics.median(speeds[k]) for k in ("unwatched", "watched"))
    print(f"\n{args.dataset}, {args.steps} steps, median of {args.repeats}: unwatched "
          f"{unwatched:.3f} samples/s, watched {watched:.3f}, ratio {watched / unwatched:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
