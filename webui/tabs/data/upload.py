"""Adding a dataset from an uploaded file: detect its format, let the user map columns to
roles when the guess is unsure, validate every row, and register it only when all rows are
good (core.data.registry.register writes dataset_info.json atomically)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core.data.formats import FIELDS, FORMATS, REQUIRED, DataError, detect_format, validate_file
from core.data.reader import scan
from core.data.registry import load_info, name_problem, register
from core.fsutil import DiskFull

UPLOAD_TYPES = [".json", ".jsonl", ".csv", ".parquet", ".txt"]
# Gradio refuses bigger uploads before they reach us (Blocks.launch(max_file_size=...)).
DEFAULT_MAX_UPLOAD_MB = 1024
# Every role any format reads, in the order the mapping dropdowns are laid out.
ROLES: tuple[str, ...] = tuple(dict.fromkeys(r for fmt in FORMATS for r in FIELDS[fmt]))
PROBLEM_COLUMNS = ["row", "field", "reason"]
MAX_PROBLEMS_SHOWN = 500


@dataclass
class Inspection:
    columns: list[str]
    rows: int
    format: str | None
    mapping: dict[str, str]
    confident: bool
    note: str
    sample: pd.DataFrame
    name: str


@dataclass
class Registration:
    ok: bool
    message: str
    problems: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=PROBLEM_COLUMNS))


def max_upload_mb() -> int:
    """The upload size limit in MiB: PEFT_STUDIO_MAX_UPLOAD_MB, else 1024."""
    try:
        value = int(os.environ.get("PEFT_STUDIO_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB))
    except ValueError:
        return DEFAULT_MAX_UPLOAD_MB
    return value if value > 0 else DEFAULT_MAX_UPLOAD_MB


def shown_as_uploaded(exc: DataError, path: str | Path) -> DataError:
    """The error with the file the user chose instead of the upload's temporary path
    (/tmp/gradio/<hash>/x.jsonl): gradio keeps the original name as the basename."""
    if not exc.file or Path(exc.file).resolve() != Path(path).resolve():
        return exc
    return DataError(exc.reason, file=Path(path).name, row=exc.row, field=exc.field)


def suggested_name(path: str | Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem).strip("_-") or "dataset"
    name, n = stem[:60], 2
    try:
        taken = set(load_info())
    except DataError:  # the registry's own message is shown when registering
        taken = set()
    while name in taken or name_problem(name):
        name, n = f"{stem[:56]}_{n}", n + 1
    return name


def inspect_upload(path: str | Path, text_split: str = "paragraph") -> Inspection:
    """Guess the file's format from its columns, with a count and the first rows (read in
    one pass that keeps only those); raises DataError naming the uploaded file."""
    if Path(path).suffix.lower() not in UPLOAD_TYPES:
        raise DataError(f"upload a {', '.join(UPLOAD_TYPES)} file", file=Path(path).name)
    try:
        found_rows = scan(path, 0, 5, text_split)
    except DataError as exc:
        raise shown_as_uploaded(exc, path) from None
    columns = found_rows.columns
    found = detect_format(columns)
    sample = pd.DataFrame([{c: cell_text(r.get(c)) for c in columns} for r in found_rows.rows],
                          columns=columns)
    return Inspection(columns, found_rows.total, found.format, dict(found.columns),
                      found.confident, found.note, sample, suggested_name(path))


def roles(fmt: str | None) -> dict[str, bool]:
    """{role: required} for a format's mapping dropdowns."""
    if fmt not in FIELDS:
        return {}
    return {r: r in REQUIRED[fmt] for r in FIELDS[fmt]}


def default_mapping(fmt: str | None, columns: list[str], detected: dict[str, str]) -> dict:
    """Each role's column: the detected one, else a column named like the role, else none."""
    return {r: detected.get(r) or (r if r in columns else "") for r in roles(fmt)}


def register_upload(path: str | Path | None, name: str, fmt: str | None,
                    mapping: dict[str, str], text_split: str = "paragraph",
                    keep_good: bool = False) -> Registration:
    """Validate every row, then register. A bad file registers nothing; its problems are
    returned one per row. With `keep_good` (the user's explicit choice), a file with bad
    rows registers a copy of its good rows, saying which were left out."""
    if not path:
        return Registration(False, "Upload a file first.")
    name = (name or "").strip()
    problem = name_problem(name)
    if problem:
        return Registration(False, problem[0].upper() + problem[1:] + ".")
    try:
        taken = load_info()
    except DataError as exc:
        return Registration(False, f"✗ Not registered: {exc}")
    if name in taken:
        return Registration(False, f"A dataset named {name!r} already exists; choose "
                                   "another name.")
    if fmt not in FORMATS:
        return Registration(False, f"Choose a format: {', '.join(FORMATS)}.")
    wanted = roles(fmt)
    missing = [r for r, required in wanted.items() if required and not mapping.get(r)]
    if missing:
        return Registration(False, "Choose the column for: " + ", ".join(missing) + ".")
    # Only the roles whose column differs from the role's own name need recording.
    columns = {r: c for r, c in mapping.items() if r in wanted and c and c != r}
    problems = [shown_as_uploaded(p, path) for p in validate_file(path, fmt, columns,
                                                                 text_split)]
    if problems:
        table = pd.DataFrame(
            [[p.row if p.row is not None else "", p.field or "", p.reason]
             for p in problems[:MAX_PROBLEMS_SHOWN]], columns=PROBLEM_COLUMNS)
        if keep_good:
            return _register_good_rows(name, path, fmt, columns, problems, text_split, table)
        rows = len({p.row for p in problems if p.row is not None})
        what = f"{rows} bad row(s)" if rows else "a problem with the file"
        first = "" if rows else f" {problems[0]}."
        return Registration(False, f"✗ Not registered: {what}.{first} Fix the file and upload "
                                   "it again; nothing was changed.", table)
    try:
        register(name, path, fmt, columns or None, text_split=text_split)
    except DataError as exc:
        return Registration(False, f"✗ Not registered: {shown_as_uploaded(exc, path)}")
    except DiskFull as exc:
        return Registration(False, f"✗ Not registered: {exc}")
    return Registration(True, f"✓ Registered **{name}** ({fmt}). It is now in the dataset "
                              "lists of the Train tab.")


def _register_good_rows(name: str, path: str | Path, fmt: str, columns: dict[str, str],
                        problems: list[DataError], text_split: str,
                        table: pd.DataFrame) -> Registration:
    from core.data.good_rows import register_good_rows

    try:
        kept = register_good_rows(name, path, fmt, columns, problems, text_split)
    except (DataError, DiskFull) as exc:
        return Registration(False, f"✗ Not registered: {exc}", table)
    rows = ", ".join(str(p.row) for p in kept.left_out[:MAX_PROBLEMS_SHOWN])
    more = len(kept.left_out) - MAX_PROBLEMS_SHOWN
    return Registration(True, f"✓ Registered **{name}** ({fmt}) with its {kept.rows} good "
                              f"rows: **{len(kept.left_out)} bad row(s) left out** (rows "
                              f"{rows}{f' and {more} more' if more > 0 else ''}; why is "
                              "below).", table)


def cell_text(value: Any, limit: int = 300) -> str:
    """A cell as short text for a table: lists and objects as JSON."""
    import json

    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                            default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def import_folder(folder: str) -> Registration:
    """The Data tab's LLaMA-Factory import: a folder under data/ holding their
    dataset_info.json; one line per entry, as `peft-studio data import` prints them."""
    from core.data.importer import import_llamafactory
    from webui import guard

    try:
        outcomes = import_llamafactory(guard.browser_folder(folder))
    except (ValueError, DataError) as exc:
        return Registration(False, f"✗ Not imported: {exc}")
    except DiskFull as exc:
        return Registration(False, f"✗ Not imported: {exc}")
    done = sum(o.name is not None for o in outcomes)
    lines = "\n".join(f"- {'✓' if o.name else '✗'} {o.line}" for o in outcomes)
    return Registration(done > 0, f"{done} of {len(outcomes)} entries registered:\n\n{lines}")
