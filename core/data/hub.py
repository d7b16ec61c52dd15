"""A dataset given as a hub id (`org/name`): loaded with `datasets.load_dataset` when the
hub can be reached and kept as a save_to_disk folder in the studio's cache, so a run and
its checks read it like any dataset folder (core.data.folders). Offline
(HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1) it is one message naming the id and how to
bring it: download it where there is internet, save_to_disk, give the folder."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from core.data.errors import DataError
from core.data.reader import SUFFIXES

# The hub's repo ids: owner/name, letters, digits, '-', '_', '.'.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a hub dataset id rather than a path: owner/name, with no
    file of that name here and no data file suffix."""
    return bool(HUB_ID.match(name)) and not Path(name).expanduser().exists() \
        and Path(name).suffix.lower() not in SUFFIXES


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def offline_message(hub_id: str) -> str:
    return (f"{hub_id!r} is a hub dataset id and this machine is offline (HF_HUB_OFFLINE=1): "
            "on a machine with internet run `python -c \"import datasets; "
            f"datasets.load_dataset('{hub_id}').save_to_disk('{hub_id.split('/')[1]}')\"`, "
            "copy that folder here (under data/ for the browser) and give its path")


def fetched(hub_id: str) -> Path:
    """The save_to_disk folder of `hub_id`, downloaded once; a DataError offline or when
    the hub refuses it."""
    from core.paths import cache_dir

    folder = cache_dir() / "hub-datasets" / hub_id.replace("/", "--")
    if folder.is_dir():
        return folder
    if offline():
        raise DataError(offline_message(hub_id))
    import datasets

    part = folder.with_name(folder.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    try:
        datasets.load_dataset(hub_id).save_to_disk(str(part))
    except Exception as exc:  # the hub's and the network's errors alike
        shutil.rmtree(part, ignore_errors=True)
        raise DataError(f"cannot load {hub_id!r} from the hub: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    part.rename(folder)  # whole or not at all
    return folder
