"""Where things live. Each can be moved with an environment variable (tests do)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("PEFT_STUDIO_DATA", ROOT / "data"))


def saves_dir() -> Path:
    return Path(os.environ.get("PEFT_STUDIO_SAVES", ROOT / "saves"))


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "peft-studio"
    return Path(os.environ.get("PEFT_STUDIO_CACHE", default))


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a Python subprocess of ours (a job, the chat worker, the probe):
    this checkout importable, output unbuffered so log files are current, and no
    tokenizers thread pool that warns after a fork."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env
