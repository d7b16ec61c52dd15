"""What the browser tests (and docs/screenshots.py) share: the app served on a free port
with its own data/ and saves/, Debian's Chromium, and a polling wait."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 1000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             poll: float = 0.2) -> Any:
    """Poll until `predicate()` is truthy and return it; fail naming `what`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class ServedApp:
    url: str
    saves: Path
    data: Path
    startup_seconds: float
    pid: int = 0


@contextmanager
def serve_app(workdir: Path, saves: Path | None = None, env: dict[str, str] | None = None,
              args: tuple[str, ...] = ()) -> Iterator[ServedApp]:
    """`peft-studio webui` as a user starts it, on a free port, with a copy of data/ and a
    saves/ of its own under `workdir` (or the given `saves`), plus any extra `env` and
    webui `args`. Its log is workdir/server.log."""
    data = workdir / "data"
    shutil.copytree(ROOT / "data", data)
    if saves is None:
        saves = workdir / "saves"
        saves.mkdir()
    port = free_port()
    env = {**os.environ, "PEFT_STUDIO_DATA": str(data), "PEFT_STUDIO_SAVES": str(saves),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    # `-m` from ROOT, not the installed `peft-studio` script: the script imports whichever
    # checkout the editable install points at, which is not this one in a git worktree.
    cmd = [sys.executable, "-m", "core.cli"]
    log_path = workdir / "server.log"
    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([*cmd, "webui", "--port", str(port), *args], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            if server.poll() is not None:
                raise AssertionError("the app exited:\n" + log_path.read_text()[-3000:])
            try:
                urllib.request.urlopen(url, timeout=1)
                return True
            except OSError:
                return False

        t0 = time.time()
        try:
            wait_for(up, 60, "the app to come up", poll=0.25)
            yield ServedApp(url, saves, data, time.time() - t0, server.pid)
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


def step_of(page: Any) -> int:
    """The step the Train tab's progress line shows (0 before the first)."""
    import re

    match = re.search(r"step (\d+) /", page.locator(".ps-detail").inner_text())
    return int(match.group(1)) if match else 0
