"""The dataset registry: data_dir()/dataset_info.json maps a name to a file and its format.

Entry shape: {"file": "identity.json", "format": "alpaca", "columns": {...},
"description": "...", "split": "test", "test_of": "sentiment"} (all but file and format
optional). Only `register` writes the file, atomically, so a crash or a second browser tab
never leaves it half written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data.errors import DataError, display_path
from core.data.folders import is_dataset_folder
from core.data.formats import (
    FORMATS,
    detect_format,
    left_unused,
    media_problem,
    validate_file,
)
from core.data.hub import fetched, is_hub_id
from core.data.reader import SUFFIXES, scan
from core.fsutil import atomic_write_text, copy_whole, disk_full, is_disk_full
from core.paths import data_dir

INFO_FILE = "dataset_info.json"
# Keys of LLaMA-Factory's dataset_info.json entries (its data/README.md).
FOREIGN_KEYS = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url",
                "cloud_file_name", "formatting", "columns", "tags", "ranking")
# No dots or slashes: a name can then never be mistaken for a path, or escape data_dir().
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    path: Path
    format: str
    columns: dict[str, str] = field(default_factory=dict)
    description: str = ""
    split: str | None = None  # "test" marks a held-out split, offered by the Evaluate tab
    test_of: str | None = None  # the training dataset a test split belongs to
    registered: bool = True
    text_split: str = "paragraph"  # a .txt file's documents: paragraphs or lines
    # LLaMA-Factory's num_samples: this many rows drawn from the file (0: all, as written).
    num_samples: int = 0


def info_path() -> Path:
    return data_dir() / INFO_FILE


@dataclass
class Registry:
    """What dataset_info.json holds. `entries` are the usable ones; every other entry
    (another tool's, such as LLaMA-Factory's, or one missing its file or format) is kept
    as written in `raw` and said in `problems`, so that one bad entry never hides the
    rest nor stops a run given a file path. `broken` is why the file as a whole cannot
    be read (then nothing may be written over it)."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # entry name -> why
    broken: DataError | None = None


def _broken(reason: str) -> DataError:
    shown = display_path(info_path())
    return DataError(f"{reason}. The dataset registry cannot be read: fix or delete "
                     f"{shown} (deleting it forgets the registered names, not the files; "
                     "`python data/make_bundled.py` registers the bundled ones again)",
                     file=info_path())


def read_registry() -> Registry:
    """The registry, never raising: a file that cannot be read at all is `broken`, an
    entry that is not the studio's is a problem of its own."""
    path = info_path()
    if not path.is_file():
        return Registry()
    try:
        info = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Registry(broken=_broken(f"byte {exc.start} is not UTF-8 text"))
    except json.JSONDecodeError as exc:
        return Registry(broken=_broken(
            f"line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})"))
    except OSError as exc:
        return Registry(broken=_broken(f"cannot be read ({exc.strerror})"))
    if not isinstance(info, dict):
        found = type(info).__name__.replace("dict", "object")
        return Registry(broken=_broken(f"expected an object of name: entry, found {found}"))
    reg = Registry(raw=info)
    for name, entry in info.items():
        problem = entry_problem(name, entry)
        if problem:
            reg.problems[name] = problem
        else:
            reg.entries[name] = entry
    return reg


def entry_problem(name: str, entry: Any) -> str | None:
    """Why one registry entry cannot be used, or None."""
    where = display_path(info_path())
    if not isinstance(entry, dict):
        return f"{where}: entry {name!r} is not an object; it is skipped"
    if "file" not in entry and any(k in entry for k in FOREIGN_KEYS):
        return (f"{where}: entry {name!r} is written the LLaMA-Factory way "
                f"({', '.join(k for k in FOREIGN_KEYS if k in entry)}); it is skipped. "
                "`peft-studio data import FOLDER` (or the Data tab's LLaMA-Factory import) "
                "registers such entries")
    if not isinstance(entry.get("file"), str) or not entry["file"]:
        return f"{where}: entry {name!r} has no 'file'; it is skipped"
    if entry.get("format") not in FORMATS:
        return (f"{where}: entry {name!r} has format {entry.get('format')!r}; expected one "
                f"of {', '.join(FORMATS)}; it is skipped")
    n = entry.get("num_samples", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return (f"{where}: entry {name!r} has num_samples {n!r}; expected a whole number "
                "of rows to draw (0 or none: every row); it is skipped")
    return None


def load_info() -> dict[str, dict[str, Any]]:
    """The usable entries; a DataError saying what is wrong and what to do when the file
    as a whole cannot be read (bad JSON, not UTF-8, not an object of entries). Entries
    that are not usable are left out here and said by `registry_problems`."""
    reg = read_registry()
    if reg.broken:
        raise reg.broken
    return reg.entries


def registry_problems() -> list[str]:
    """Everything wrong with the registry, one line each: shown beside the dataset list,
    never stopping a run that does not use the entries concerned."""
    reg = read_registry()
    return [str(reg.broken)] if reg.broken else list(reg.problems.values())


def info_problem() -> str | None:
    """The registry's problems as one text, or None."""
    return "\n".join(registry_problems()) or None


def test_sets() -> dict[str, str]:
    """Registered test splits: {test dataset name: the dataset it is the test split of}.
    None from entries that cannot be read (the Data tab lists why)."""
    return {
        name: entry.get("test_of", "")
        for name, entry in read_registry().entries.items()
        if entry.get("split") == "test"
    }


def name_problem(name: Any) -> str | None:
    """Why `name` cannot name a dataset, or None."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        return (f"bad dataset name {name!r}: use 1-64 letters, digits, '_' or '-', starting "
                "with a letter or digit")
    if name.lower() == Path(INFO_FILE).stem:
        return (f"the name {name!r} is taken by the registry file {INFO_FILE}; choose "
                "another name")
    return None


def resolve(name_or_path: str) -> DatasetEntry:
    """A registered name, or a path to a file whose format is detected from its columns.
    The registry is read only for names: a file path works whatever state it is in."""
    reg = read_registry()
    if name_or_path in reg.entries:
        return _entry(name_or_path, reg.entries[name_or_path])
    path = Path(name_or_path).expanduser()
    if path.is_file() or is_dataset_folder(path):
        return _detected(path)
    if name_or_path in reg.problems:
        raise DataError(f"dataset {name_or_path!r} cannot be used: "
                        f"{reg.problems[name_or_path]}")
    if is_hub_id(name_or_path):
        return _detected(fetched(name_or_path))
    if path.suffix.lower() in SUFFIXES or "/" in name_or_path or os.sep in name_or_path:
        raise DataError("file not found", file=name_or_path)
    if reg.broken:
        raise reg.broken
    raise DataError(
        f"unknown dataset {name_or_path!r}; registered datasets: "
        f"{', '.join(sorted(reg.entries)) or 'none'} (or give a path to a "
        f"{'/'.join(s[1:] for s in SUFFIXES)} file)"
    )


def _entry(name: str, entry: Mapping[str, Any]) -> DatasetEntry:
    if "file" not in entry:
        raise DataError(f"dataset {name!r} has no 'file'", file=info_path())
    path = Path(entry["file"])
    if not path.is_absolute():
        path = data_dir() / path
    fmt = entry.get("format")
    if fmt not in FORMATS:
        raise DataError(
            f"dataset {name!r} has format {fmt!r}; expected one of {', '.join(FORMATS)}",
            file=info_path(),
        )
    return DatasetEntry(
        name=name, path=path, format=fmt, columns=dict(entry.get("columns") or {}),
        description=entry.get("description", ""), split=entry.get("split"),
        test_of=entry.get("test_of"), text_split=entry.get("text_split", "paragraph"),
        num_samples=entry.get("num_samples", 0),
    )


def _detected(path: Path) -> DatasetEntry:
    found = detect_format(scan(path, 0, 0).columns)
    if found.format is None:
        raise DataError(f"cannot tell the format from its columns: {found.note}", file=path)
    media = media_problem(found.ignored)
    if media:
        raise DataError(media, file=path)
    if found.ignored:
        raise DataError(f"{left_unused(found.format, found.ignored)}, and nothing is trained "
                        "with part of its data dropped; remove those columns to train on the "
                        "rest, or (KTO data) write it as prompt, completion and label",
                        file=path)
    return DatasetEntry(name=path.stem, path=path, format=found.format,
                        columns=found.columns, registered=False)


def register(
    name: str,
    file: str | Path,
    format: str,
    columns: dict[str, str] | None = None,
    *,
    description: str = "",
    split: str | None = None,
    test_of: str | None = None,
    overwrite: bool = False,
    text_split: str = "paragraph",
    num_samples: int = 0,
) -> None:
    """Validate `file`, copy it into data_dir() (unless it is there already) and add it to
    dataset_info.json. Nothing is changed when any check fails. `num_samples`: rows drawn
    from it when it is loaded (LLaMA-Factory's, see core.data.loader.sampled)."""
    problem = name_problem(name)
    if problem:
        raise DataError(problem)
    src = Path(file).expanduser().resolve()
    with _locked():
        reg = read_registry()
        if reg.broken:
            raise reg.broken
        # Entries the studio cannot use (another tool's) are written back as they were.
        info = {n: e for n, e in reg.raw.items() if isinstance(e, dict)}
        if name in info and not overwrite:
            raise DataError(f"a dataset named {name!r} already exists; choose another name")
        problems = validate_file(src, format, columns, text_split)
        if problems:
            more = f" (and {len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
            first = problems[0]
            raise DataError(first.reason + more, file=first.file, row=first.row,
                            field=first.field)

        root = data_dir().resolve()
        root.mkdir(parents=True, exist_ok=True)
        if src.parent == root:
            target, copied = src, False
        else:
            target = root / (name if src.is_dir() else f"{name}{src.suffix.lower()}")
            copied = True
            owner = next((n for n, e in info.items() if e.get("file") == target.name), None)
            if owner not in (None, name):
                raise DataError(f"{target.name} already belongs to dataset {owner!r}")
            if owner is None and target.exists():
                raise DataError(f"{display_path(target)} already exists and is not a "
                                "registered dataset; choose another name")
            _copy(src, target)
        entry: dict[str, Any] = {"file": target.name, "format": format}
        if columns:
            entry["columns"] = dict(columns)
        if description:
            entry["description"] = description
        if split:
            entry["split"] = split
        if test_of:
            entry["test_of"] = test_of
        if text_split != "paragraph" and src.suffix.lower() == ".txt":
            entry["text_split"] = text_split
        if num_samples:
            entry["num_samples"] = num_samples
        try:
            _write_info({**reg.raw, name: entry})
        except OSError as exc:
            if copied and name not in info:
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise disk_full(info_path(), "and add the file again") from None
            raise


def _copy(src: Path, target: Path) -> None:
    """A file, or a dataset folder, copied whole or not at all."""
    if not src.is_dir():
        copy_whole(src, target)
        return
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp)
        if target.exists():  # an overwrite of the same dataset's folder
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full(target, "and add the folder again") from None
        raise


def _write_info(info: dict[str, Any]) -> None:
    atomic_write_text(info_path(), json.dumps(info, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Two uploads at once must not each write their own copy of the info file and lose
    the other's entry."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; registering is rare enough to go without
        yield
        return
    data_dir().mkdir(parents=True, exist_ok=True)
    # Lock the folder itself: the info file is replaced on write (a lock on it would be
    # lost with the old inode) and a lock file would litter data/.
    fd = os.open(data_dir(), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def dataset_problems(names: list[str]) -> list[str]:
    """Datasets that are neither registered nor an existing file, or whose file cannot
    be read: said before a run starts, rather than by the trainer a minute later. The
    registry's own problems stop only the runs that name an entry concerned."""
    reg = read_registry()
    problems = []
    for name in names:
        path = Path(name).expanduser()
        if name not in reg.entries and name not in reg.problems and not (
                path.is_file() or is_dataset_folder(path) or is_hub_id(name)):
            what = "is a folder, not a file" if path.is_dir() else "no such file"
            broken = f" ({reg.broken})" if reg.broken else ""
            problems.append(f"dataset: {name}: {what}, and no registered dataset has that "
                            "name; give a json/jsonl/csv/parquet/txt file (or a dataset "
                            "folder: save_to_disk's, or of shards) or a name from "
                            f"data/dataset_info.json{broken}")
            continue
        try:  # reads the file once: its format is detected from its columns
            resolve(name)
        except DataError as exc:
            problems.append(f"dataset: {exc}")
    return problems
