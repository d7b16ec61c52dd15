"""The one error every data problem is: which file, which row, which field, and why."""

from __future__ import annotations

from pathlib import Path

from core.paths import ROOT


class DataError(Exception):
    """A problem with a data file, located as precisely as we can."""

    def __init__(
        self,
        reason: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
    ):
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.file:
            where.append(display_path(self.file))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason


def display_path(path: str | Path) -> str:
    """Paths inside the project are shown relative to it ("data/x.json"): shorter, and
    the same on every machine."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)
