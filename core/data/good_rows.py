"""Registering only a dataset's good rows, when the user asks for it (never by default):
a copy without the rows its full check found bad is written under data/ with a new name,
and what was left out is said, row by row. A problem of the file as a whole (a missing
column, media, a label column the format would not read) is not a bad row: nothing is
written then."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.data.errors import DataError, display_path
from core.data.reader import read_rows
from core.data.registry import register

SHOWN = 20  # left-out rows named one by one; the rest counted


@dataclass
class Kept:
    name: str
    format: str
    rows: int  # rows registered
    left_out: list[DataError]  # the bad rows' problems, first of each row

    def lines(self) -> list[str]:
        """What was done, as a terminal or the Data tab says it."""
        out = [f"registered {self.name} ({self.format}, {self.rows} rows): "
               f"{len(self.left_out)} bad row(s) of {self.rows + len(self.left_out)} "
               "left out:"]
        out += [f"  left out row {p.row}: {p.field + ': ' if p.field else ''}{p.reason}"
                for p in self.left_out[:SHOWN]]
        if len(self.left_out) > SHOWN:
            out.append(f"  ... and {len(self.left_out) - SHOWN} more rows")
        return out


def register_good_rows(name: str, file: str | Path, fmt: str, columns: dict[str, str] | None,
                       problems: list[DataError], text_split: str = "paragraph") -> Kept:
    """Register under `name` a copy of `file` without the rows `problems` (its full check,
    core.data.formats.validate_file) name. Raises DataError when a problem is not a row's,
    when no row is bad, or when every row is."""
    whole = next((p for p in problems if p.row is None), None)
    if whole is not None:
        raise DataError(f"{whole}; that is not a bad row, so leaving bad rows out cannot "
                        "fix it")
    first: dict[int, DataError] = {}
    for p in problems:
        first.setdefault(p.row, p)
    if not first:
        raise DataError("every row is good; register the file as it is")
    rows, _ = read_rows(file, text_split)
    good = [row for i, row in enumerate(rows, 1) if i not in first]
    if not good:
        raise DataError(f"all {len(rows)} rows are bad; nothing is left to register",
                        file=file)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / f"{name}.jsonl"
        # The reader's rows are the file's text exactly (numbers as written), so JSON lines
        # of them read back as the same rows.
        copy.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in good),
                        encoding="utf-8")
        register(name, copy, fmt, columns or None,
                 description=f"The good rows of {display_path(file)}: {len(first)} bad "
                             f"row(s) left out (rows {_rows(sorted(first))}).")
    return Kept(name, fmt, len(good), [first[r] for r in sorted(first)])


def _rows(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:SHOWN])
    return shown + (f" and {len(numbers) - SHOWN} more" if len(numbers) > SHOWN else "")
