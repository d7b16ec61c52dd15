"""Import LLaMA-Factory's data folder: every entry of its `dataset_info.json` (as its
data/README.md describes them) that the studio can train is registered in the studio's
registry; every other is skipped with why. One line per entry, nothing half done.

An entry's `formatting` (alpaca, sharegpt), `columns`, `tags` and `ranking` decide the
studio format and its column mapping; a `kto_tag` column makes it KTO data, `ranking`
pairwise data, an alpaca entry whose file has no response column (its `{"prompt":
"text"}` pre-training layout) raw text. A .txt file is one document per line, as
LLaMA-Factory reads it. An `hf_hub_url` entry is loaded from the hub when it can be reached
(core.data.hub); offline, or on another hub, it is skipped with what to do."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data.errors import DataError, display_path
from core.data.folders import shards
from core.data.formats import FIELDS, MEDIA, media_problem
from core.data.hub import fetched, is_hub_id, offline
from core.data.reader import SUFFIXES, scan
from core.data.registry import INFO_FILE, entry_problem, name_problem, read_registry, register
from core.paths import data_dir

HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
# The message keys and role names the studio's chat reader understands (core.data.formats).
KNOWN_TAGS = {"role_tag": ("from", "role"), "content_tag": ("value", "content"),
              "user_tag": ("human", "user"), "assistant_tag": ("gpt", "assistant"),
              "system_tag": ("system",), "observation_tag": ("observation", "tool"),
              "function_tag": ("function_call",)}


@dataclass(frozen=True)
class Outcome:
    entry: str  # the name in their dataset_info.json
    name: str | None  # the studio's name, when registered
    line: str


def import_llamafactory(folder: str | Path) -> list[Outcome]:
    """Register every usable entry of `folder`/dataset_info.json; one Outcome each.
    Raises DataError only when that file itself cannot be read."""
    folder = Path(folder).expanduser().resolve()
    info_file = folder / INFO_FILE
    try:
        info = json.loads(info_file.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"no {INFO_FILE} here; give the folder that holds LLaMA-Factory's "
                        "registry (its data/ folder)", file=folder) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot be read as JSON ({exc})", file=info_file) from None
    if not isinstance(info, dict):
        raise DataError("expected an object of name: entry", file=info_file)
    broken = read_registry().broken
    if broken and folder != data_dir().resolve():
        raise broken  # nothing can be added to it
    return [_import_one(folder, name, entry) for name, entry in info.items()]


def _import_one(folder: Path, name: str, entry: Any) -> Outcome:
    try:
        src, fmt, columns = plan_entry(folder, entry)
        drawn = _num_samples(entry)
        # Imported in place (their registry is data/'s own), an entry replaces itself.
        in_place = folder == data_dir().resolve()
        target = _free_name(name, in_place)
        overwrite = in_place and target in read_registry().problems
        register(target, src, fmt, columns or None, overwrite=overwrite,
                 description=f"Imported from LLaMA-Factory's {display_path(folder)}/"
                             f"{INFO_FILE} (entry {name!r}).",
                 split="test" if entry.get("split") == "test" else None,
                 text_split="line",  # LLaMA-Factory reads a .txt one document per line
                 num_samples=drawn)
        rows = scan(data_dir() / read_registry().entries[target]["file"], 0, 0, "line").total
    except DataError as exc:
        return Outcome(name, None, f"skipped {name}: {exc}")
    label = target if target == name else f"{name} as {target}"
    note = (f"; num_samples {drawn}: that many rows are drawn from it when it is loaded"
            if drawn else "")
    return Outcome(name, target, f"registered {'as ' if target == name else ''}{label} "
                                 f"({fmt}, {rows} rows){note}")


def _num_samples(entry: dict) -> int:
    n = entry.get("num_samples") or 0
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DataError(f"num_samples {n!r} is not a whole number of rows")
    return n


def plan_entry(folder: Path, entry: Any) -> tuple[Path, str, dict[str, str]]:
    """(the file, the studio format, its column mapping) for one of their entries; a
    DataError saying why it cannot be imported."""
    if not isinstance(entry, dict):
        raise DataError("not an object")
    if hub := next((entry[k] for k in HUB_KEYS if entry.get(k)), None):
        hf = entry.get("hf_hub_url")
        away = DataError(f"hub dataset ID {hub!r}, needs internet; download it and add the "
                         "file (a file_name entry, or the Data tab's upload)")
        if not isinstance(hf, str) or not is_hub_id(hf):
            raise away
        try:  # its save_to_disk folder: fetched once, then kept in the cache
            src = fetched(hf)
        except DataError:
            if offline():
                raise away from None
            raise
    else:
        src = _file_of(folder, entry)
    columns = entry.get("columns") or {}
    if not isinstance(columns, dict):
        raise DataError("columns is not an object")
    media = media_problem([k for k in columns if k in MEDIA and columns[k]])
    if media:
        raise DataError(media)
    _check_tags(entry.get("tags") or {})
    fmt, mapping = _mapping(entry, columns, src)
    return src, fmt, {k: v for k, v in mapping.items() if v and v != k and k in FIELDS[fmt]}


def _file_of(folder: Path, entry: dict) -> Path:
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise DataError("no file_name")
    src = (folder / file_name).resolve()
    if not src.is_relative_to(folder):
        raise DataError(f"file_name {file_name!r} points outside {display_path(folder)}")
    if src.is_dir():
        shards(src)  # a DataError saying what the folder lacks
    elif not src.is_file():
        raise DataError(f"{file_name} not found in {display_path(folder)}")
    elif src.suffix.lower() not in SUFFIXES:
        raise DataError(f"{file_name}: the studio reads {', '.join(SUFFIXES)} files")
    return src


def _check_tags(tags: Any) -> None:
    if not isinstance(tags, dict):
        raise DataError("tags is not an object")
    odd = {k: v for k, v in tags.items() if k in KNOWN_TAGS and v not in KNOWN_TAGS[k]}
    if odd:
        shown = ", ".join(f"{k}={v!r}" for k, v in odd.items())
        raise DataError(f"tags {shown} are not supported yet; the studio reads messages "
                        "with role/from and content/value, roles user/human, "
                        "assistant/gpt, system, function_call and observation/tool")


def _mapping(entry: dict, columns: dict, src: Path) -> tuple[str, dict[str, str]]:
    formatting = entry.get("formatting", "alpaca")
    ranking, kto = bool(entry.get("ranking")), columns.get("kto_tag")
    system = {"system": columns["system"]} if columns.get("system") else {}
    if columns.get("tools") and (ranking or kto or formatting != "sharegpt"):
        raise DataError("tool definitions are read in sharegpt conversations only, not in "
                        "preference, KTO or alpaca entries")
    if formatting == "sharegpt":
        system |= {"tools": columns["tools"]} if columns.get("tools") else {}
        chat = columns.get("messages", "conversations")
        if ranking:
            return "pairwise", {"prompt": chat, "chosen": columns.get("chosen", "chosen"),
                                "rejected": columns.get("rejected", "rejected"), **system}
        if kto:
            return "kto", {"prompt": chat, "label": kto, **system}
        return ("messages", {"messages": chat, **system}) if chat == "messages" else \
            ("sharegpt", {"conversations": chat, **system})
    if formatting != "alpaca":
        raise DataError(f"formatting {formatting!r}; LLaMA-Factory has alpaca and sharegpt")
    prompt = columns.get("prompt", "instruction")
    base = {"input": columns.get("query", "input"), "history": columns.get("history", ""),
            **system}
    if ranking:
        return "pairwise", {"prompt": prompt, **base, "chosen": columns.get("chosen", "chosen"),
                            "rejected": columns.get("rejected", "rejected")}
    response = columns.get("response", "output")
    if kto:
        return "kto", {"prompt": prompt, **base, "completion": response, "label": kto}
    if src.suffix.lower() == ".txt" or response not in scan(src, 0, 0).columns:
        return "text", {"text": "text" if src.suffix.lower() == ".txt" else prompt}
    return "alpaca", {"instruction": prompt, **base, "output": response}


def _free_name(name: str, in_place: bool) -> str:
    """Their name as a studio name: its odd characters as '_', and a number added while
    a dataset has it (in place, their own unusable entry does not count)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")[:56] or "dataset"
    reg = read_registry()
    candidate, n = stem, 2
    while name_problem(candidate) or (candidate in reg.raw and not (
            in_place and entry_problem(candidate, reg.raw[candidate]))):
        candidate, n = f"{stem}_{n}", n + 1
    return candidate

