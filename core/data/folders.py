"""A dataset that is a folder: what `datasets`' save_to_disk writes (Arrow files beside a
state.json, or a dataset_dict.json with a folder per split) or a folder of parquet /
jsonl / json / csv shards, as a hub snapshot leaves it. Its rows are the train split's
shards in name order; another split is never mixed in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.data.errors import DataError

SHARD_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".arrow")
# save_to_disk's own bookkeeping, never rows.
_META = {"state.json", "dataset_info.json", "dataset_dict.json"}


def is_dataset_folder(path: Path) -> bool:
    return path.is_dir() and bool(shards(path, quiet=True))


def shards(folder: Path, quiet: bool = False) -> list[Path]:
    """The files holding the train split's rows, in order; a DataError (or [] when
    `quiet`) saying what the folder lacks."""
    folder = Path(folder)
    if (folder / "dataset_dict.json").is_file():  # save_to_disk of a DatasetDict
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text("utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            splits = []
        if "train" not in splits:
            if quiet:
                return []
            raise DataError(f"a saved DatasetDict without a train split (it has: "
                            f"{', '.join(map(str, splits)) or 'none'}); give the split's "
                            "folder instead", file=folder)
        folder = folder / "train"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in _META
                   and p.suffix.lower() in SHARD_SUFFIXES and not _hidden(p, folder))
    train = [p for p in files if _split_of(p, folder) == "train"]
    files = train or [p for p in files if _split_of(p, folder) is None]
    kinds = {p.suffix.lower() for p in files}
    if quiet:  # a folder of data files: what is wrong with them is said when read
        return files
    if not files:
        raise DataError(f"no {'/'.join(s[1:] for s in SHARD_SUFFIXES)} files here (nor a "
                        "train split)", file=folder)
    if len(kinds) > 1:
        raise DataError(f"the files are of several kinds ({', '.join(sorted(kinds))}); "
                        "a dataset folder holds one kind", file=folder)
    return files


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _split_of(path: Path, root: Path) -> str | None:
    """The split a shard belongs to, from its folder or name (hub layouts:
    data/train-00000-of-00002.parquet, train/0000.parquet, test.jsonl)."""
    for part in [*path.relative_to(root).parent.parts, path.stem]:
        low = part.lower()
        for split in ("train", "test", "validation", "valid", "dev", "eval"):
            if low == split or low.startswith((f"{split}-", f"{split}_", f"{split}.")):
                return split
    return None


def arrow_columns(path: Path) -> list[str]:
    return list(_arrow_reader(path).schema.names)


def arrow_rows(path: Path) -> Iterator[dict[str, Any]]:
    reader = _arrow_reader(path)
    try:
        for batch in reader:
            yield from batch.to_pylist()
    except OSError as exc:
        raise DataError(f"cannot read as Arrow: {exc}", file=path) from None


def _arrow_reader(path: Path) -> Any:
    import pyarrow as pa

    try:  # save_to_disk writes the streaming format; other tools the file format
        return pa.ipc.open_stream(pa.memory_map(str(path)))
    except pa.ArrowInvalid:
        try:
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
            return table.to_reader()
        except pa.ArrowInvalid as exc:
            raise DataError(f"cannot read as Arrow: {exc}", file=path) from None
