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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data.errors import DataError, display_path
from core.data.formats import FORMATS, detect_format, left_unused, validate_file
from core.data.reader import SUFFIXES, scan
from core.fsutil import atomic_write_text, copy_whole, disk_full, is_disk_full
from core.paths import data_dir

INFO_FILE = "dataset_info.json"
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


def info_path() -> Path:
    return data_dir() / INFO_FILE


def load_info() -> dict[str, dict[str, Any]]:
    """The registry; a DataError saying what is wrong and what to do when the file is not
    valid (bad JSON, not UTF-8, not an object of entries, an entry without file/format)."""
    path = info_path()
    if not path.is_file():
        return {}

    def broken(reason: str) -> DataError:
        shown = display_path(path)
        return DataError(f"{reason}. The dataset registry cannot be read: fix or delete "
                         f"{shown} (deleting it forgets the registered names, not the files; "
                         "`python data/make_bundled.py` registers the bundled ones again)",
                         file=path)

    try:
        info = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise broken(f"byte {exc.start} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise broken(f"line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})") \
            from None
    except OSError as exc:
        raise broken(f"cannot be read ({exc.strerror})") from None
    if not isinstance(info, dict):
        raise broken("expected an object of name: entry, found "
                     f"{type(info).__name__.replace('dict', 'object')}")
    for name, entry in info.items():
        if not isinstance(entry, dict):
            raise broken(f"entry {name!r} is not an object")
        if not isinstance(entry.get("file"), str) or not entry["file"]:
            raise broken(f"entry {name!r} has no 'file'")
        if entry.get("format") not in FORMATS:
            raise broken(f"entry {name!r} has format {entry.get('format')!r}; expected one "
                         f"of {', '.join(FORMATS)}")
    return info


def info_problem() -> str | None:
    """Why the registry cannot be read, or None: for lists shown when the app starts,
    which must show this message instead of failing."""
    try:
        load_info()
    except DataError as exc:
        return str(exc)
    return None


def test_sets() -> dict[str, str]:
    """Registered test splits: {test dataset name: the dataset it is the test split of}.
    None while the registry is unreadable (the error is shown where a dataset is read)."""
    try:
        info = load_info()
    except DataError:
        return {}
    return {
        name: entry.get("test_of", "")
        for name, entry in info.items()
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
    """A registered name, or a path to a file whose format is detected from its columns."""
    info = load_info()
    if name_or_path in info:
        return _entry(name_or_path, info[name_or_path])
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return _detected(path)
    if path.suffix.lower() in SUFFIXES or "/" in name_or_path or os.sep in name_or_path:
        raise DataError("file not found", file=name_or_path)
    raise DataError(
        f"unknown dataset {name_or_path!r}; registered datasets: "
        f"{', '.join(sorted(info)) or 'none'} (or give a path to a "
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
        test_of=entry.get("test_of"),
    )


def _detected(path: Path) -> DatasetEntry:
    found = detect_format(scan(path, 0, 0).columns)
    if found.format is None:
        raise DataError(f"cannot tell the format from its columns: {found.note}", file=path)
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
) -> None:
    """Validate `file`, copy it into data_dir() (unless it is there already) and add it to
    dataset_info.json. Nothing is changed when any check fails."""
    problem = name_problem(name)
    if problem:
        raise DataError(problem)
    src = Path(file).expanduser().resolve()
    with _locked():
        info = load_info()
        if name in info and not overwrite:
            raise DataError(f"a dataset named {name!r} already exists; choose another name")
        problems = validate_file(src, format, columns)
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
            target, copied = root / f"{name}{src.suffix.lower()}", True
            owner = next((n for n, e in info.items() if e.get("file") == target.name), None)
            if owner not in (None, name):
                raise DataError(f"{target.name} already belongs to dataset {owner!r}")
            if owner is None and target.exists():
                raise DataError(f"{display_path(target)} already exists and is not a "
                                "registered dataset; choose another name")
            copy_whole(src, target)
        entry: dict[str, Any] = {"file": target.name, "format": format}
        if columns:
            entry["columns"] = dict(columns)
        if description:
            entry["description"] = description
        if split:
            entry["split"] = split
        if test_of:
            entry["test_of"] = test_of
        try:
            _write_info({**info, name: entry})
        except OSError as exc:
            if copied and name not in info:
                target.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise disk_full(info_path(), "and add the file again") from None
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
    """Datasets that are neither registered nor an existing file: said before a run
    starts, rather than by the trainer a minute later."""
    try:
        known = load_info()
    except DataError as exc:
        return [f"dataset: {info_path()}: {exc}"]
    problems = []
    for name in names:
        path = Path(name).expanduser()
        if name in known:
            continue
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "no such file"
            problems.append(f"dataset: {name}: {what}, and no registered dataset has that "
                            "name; give a json/jsonl/csv/parquet/txt file or a name from "
                            "data/dataset_info.json")
            continue
        try:  # reads the file once: its format is detected from its columns
            resolve(name)
        except DataError as exc:
            problems.append(f"dataset: {exc}")
    return problems
