"""Load the datasets of a run as normalised examples ({"messages": ...} or {"text": ...})."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.data.formats import DataError, check_columns, to_example
from core.data.reader import read_rows
from core.data.registry import resolve

if TYPE_CHECKING:
    from core.config import RunConfig


def load_examples(dataset: list[str], cfg: RunConfig | Any) -> list[dict[str, Any]]:
    """Examples of every dataset in order, each cut to cfg.max_samples (its first rows).

    `cfg` needs only max_samples, identity_name and identity_author, so the UI can pass
    any object with those.
    """
    return [ex for name in dataset for ex in load_one(name, cfg)]


def load_one(name: str, cfg: RunConfig | Any) -> list[dict[str, Any]]:
    entry = resolve(name)
    rows, present = read_rows(entry.path)
    if not rows:
        raise DataError("the file has no rows", file=entry.path)
    cols = check_columns(entry.format, entry.columns, present, entry.path)
    limit = getattr(cfg, "max_samples", 0) or 0
    if limit > 0:
        rows = rows[:limit]
    placeholders = {
        "name": getattr(cfg, "identity_name", ""),
        "author": getattr(cfg, "identity_author", ""),
    }
    return [
        to_example(row, entry.format, cols, file=entry.path, row_number=i,
                   placeholders=placeholders)
        for i, row in enumerate(rows, 1)
    ]
