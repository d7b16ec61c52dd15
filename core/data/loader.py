"""Load the datasets of a run as normalised examples ({"messages": ...} or {"text": ...})."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from core.data.formats import DataError, check_columns, to_example
from core.data.reader import read_rows
from core.data.registry import resolve
from core.stages import format_problem

if TYPE_CHECKING:
    from core.schema.config import RunConfig


def load_examples(dataset: list[str], cfg: RunConfig | Any) -> list[dict[str, Any]]:
    """Examples of every dataset in order, each cut to cfg.max_samples (its first rows).

    `cfg` needs only max_samples, identity_name and identity_author, so the UI can pass
    any object with those.
    """
    return [ex for name in dataset for ex in load_one(name, cfg)]


class Examples(list):
    """A run's examples, how many each dataset gave when they were mixed (or None), and
    where each came from: the examples are the dicts a trainer takes, with no room for a
    row number, so an error found while rendering one (its chat template refuses it)
    names its file and row through `where`."""

    mix: dict[str, int] | None = None
    # Datasets drawn at their registry entry's num_samples: name -> that number.
    sampled: dict[str, int] | None = None

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.origin: dict[int, tuple[str, int]] = {}

    def where(self, example: dict[str, Any]) -> tuple[str, int] | None:
        """(file, row number) of one of these examples, or None."""
        return self.origin.get(id(example))


def load_for_stage(cfg: RunConfig) -> Examples:
    """Examples of the run's datasets, concatenated or mixed at cfg.dataset_weights; a
    dataset whose format the run's stage does not train on is refused (before any row is
    read) with what to do."""
    parts: list[list[dict[str, Any]]] = []
    drawn: dict[str, int] = {}
    for name in cfg.dataset:
        entry = resolve(name)
        problem = format_problem(cfg.stage, name, entry.format)
        if problem:
            raise DataError(problem)
        parts.append(load_one(name, cfg, entry))
        if entry.num_samples:
            drawn[name] = entry.num_samples
    out = (Examples(ex for part in parts for ex in part) if not cfg.dataset_weights else
           mix(parts, cfg.dataset, cfg.dataset_weights, cfg.seed))
    for part in parts:
        out.origin.update(getattr(part, "origin", {}))
    out.sampled = drawn or None
    return out


def mix(parts: list[list[dict[str, Any]]], names: list[str], weights: list[float],
        seed: int) -> Examples:
    """The datasets interleaved at `weights` (normalised) until one runs out, each in its
    own order, drawn with `seed`: datasets' interleave_datasets (LLaMA-Factory's
    interleave_under), run on row numbers so that any example shape mixes."""
    order = draw_order([len(p) for p in parts], weights, seed)
    out = Examples(parts[k][i] for k, i in order)
    out.mix = mix_counts(names, order)
    return out


def draw_order(sizes: list[int], weights: list[float], seed: int) -> list[tuple[int, int]]:
    """(dataset index, row index) of each example `mix` draws from datasets of `sizes`
    rows: the Train tab counts the mix a run will draw from it without reading a row."""
    from datasets import Dataset, interleave_datasets

    total = sum(weights)
    indexed = [Dataset.from_dict({"part": [k] * n, "row": list(range(n))})
               for k, n in enumerate(sizes)]
    drawn = interleave_datasets(indexed, probabilities=[w / total for w in weights],
                                seed=seed, stopping_strategy="first_exhausted")
    return list(zip(drawn["part"], drawn["row"], strict=True))


def mix_counts(names: list[str], order: list[tuple[int, int]]) -> dict[str, int]:
    counts = [0] * len(names)
    for k, _ in order:
        counts[k] += 1
    return dict(zip(names, counts, strict=True))


def load_one(name: str, cfg: RunConfig | Any, entry: Any = None) -> Examples:
    """One dataset's examples (`entry`: its registry entry, when already resolved)."""
    entry = entry or resolve(name)
    rows, present = read_rows(entry.path, entry.text_split)
    if not rows:
        raise DataError("the file has no rows", file=entry.path)
    cols = check_columns(entry.format, entry.columns, present, entry.path)
    order = sampled(len(rows), entry.num_samples, getattr(cfg, "seed", 42))
    limit = getattr(cfg, "max_samples", 0) or 0
    if limit > 0:
        order = order[:limit]
    placeholders = {
        "name": getattr(cfg, "identity_name", ""),
        "author": getattr(cfg, "identity_author", ""),
    }
    out = Examples(
        to_example(rows[i], entry.format, cols, file=entry.path, row_number=i + 1,
                   placeholders=placeholders)
        for i in order
    )
    out.origin = {id(ex): (str(entry.path), i + 1) for ex, i in zip(out, order, strict=True)}
    return out


def sampled(rows: int, num_samples: int, seed: int) -> list[int]:
    """The row indexes a dataset gives: all in order, or with a registry entry's
    `num_samples` LLaMA-Factory's draw (its data/loader.py): a shuffle's first
    num_samples rows, and beyond every row, more drawn at random with repetition until
    there are num_samples. Seeded, so a run draws the same rows every time. max_samples
    cuts after it, as there."""
    if not num_samples:
        return list(range(rows))
    draw = random.Random(seed)
    order = list(range(rows))
    draw.shuffle(order)
    return order[:num_samples] + [draw.randrange(rows) for _ in range(num_samples - rows)]


def split_train_eval(examples: list[dict[str, Any]], seed: int,
                     val_size: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval): one seeded shuffle, val_size of the rows held out (at least one when
    asked, never all). Every stage and the export's check split this one way, so a row
    held out from training is the same row wherever it is looked for."""
    n = len(examples)
    n_eval = 0 if val_size <= 0 or n < 2 else min(n - 1, max(1, round(n * val_size)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]
