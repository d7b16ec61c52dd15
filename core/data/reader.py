"""Read a data file into rows: json, jsonl, csv and parquet through HF `datasets`, plain
text by hand (one document per blank-line-separated paragraph)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from core.data.formats import DataError

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
SUFFIXES = (*BUILDERS, ".txt")


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, column names). Row i of the result is "row i+1" in error messages."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"unsupported file type {suffix or '(none)'!r}; use one of: {', '.join(SUFFIXES)}",
            file=path,
        )
    if not path.is_file():
        raise DataError("file not found", file=path)
    if suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text)]
        return [{"text": p} for p in paragraphs if p], ["text"]
    try:
        dataset = _load(BUILDERS[suffix], path)
    except Exception as exc:  # datasets wraps parse errors in several exception types
        if BUILDERS[suffix] != "json":
            raise DataError(f"cannot read as {suffix[1:]}: {_root_cause(exc)}", file=path) from None
        if "corresponds to no data" in str(exc):
            return [], []
        # Arrow could not read it; the standard library says where the JSON is broken or
        # reads what Arrow could not type.
        rows = _read_json_plainly(path)
        return rows, _columns(rows)
    return dataset.to_list(), list(dataset.column_names)


def _load(builder: str, path: Path) -> Any:
    import datasets

    # Progress bars and the loader's own error log would land in the run's log.txt as
    # noise (we raise a clearer error ourselves); restore both settings afterwards.
    was_enabled = not datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    finally:
        datasets.logging.set_verbosity(verbosity)
        if was_enabled:
            datasets.enable_progress_bars()


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


def _read_json_plainly(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"line {lineno}: not valid JSON ({exc.msg})", file=path) from None
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})", file=path
            ) from None
        if isinstance(rows, dict):
            rows = [rows]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError("expected a list of objects, one per row", file=path)
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))
