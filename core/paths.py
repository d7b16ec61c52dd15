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
