"""Read a data file into rows, every text exactly as the file has it.

Nothing is guessed from a string: "1991-03-13", "007", "1e3", "true", "null", "NaN", "NA",
"None", "#N/A", "1,000", "" and " padded " all reach the model as those characters. Per
file type:

- json / jsonl: read with the standard library's parser, one row at a time, so one row's
  types never decide another's (a number in one row and a string in the next is fine).
  A JSON number in the file keeps the text it is written with (`42` -> "42", `1e3` ->
  "1e3", `1.50` -> "1.50", `NaN` -> "NaN"); `true`/`false` become "true"/"false"; `null`
  is a missing value ("" in a text field). A .json file holds a list of objects, one
  object, or one object per line.
- csv: every cell is a string, exactly as written (only the CSV quoting is undone); an
  empty cell is "". Nothing is read as NA, a number or a date.
- parquet: the file's own column types. Strings stay exact; other types become text in
  core.data.formats (numbers as Python writes them, booleans "true"/"false", dates and
  times in ISO 8601, null "").
- txt: one document per blank-line-separated paragraph, or per line (`text_split="line"`,
  LLaMA-Factory's rule); a registry entry says which.

Text must be UTF-8 (a byte-order mark is allowed and dropped). Rows are produced lazily
(`open_rows`, `scan`), so looking at a big file does not hold all of it in memory.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data import folders, jsontext
from core.data.errors import DataError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
TEXT_SPLITS = ("paragraph", "line")  # how a .txt file is cut into documents
UTF8_HINT = "save the file as UTF-8 (in a spreadsheet: \"CSV UTF-8\"; in an editor: " \
            "\"Save with encoding UTF-8\")"

# Numbers keep the text they are written with: "1.50" must not come back as "1.5".
_DECODER = json.JSONDecoder(parse_float=str, parse_int=str, parse_constant=str)
# Long documents in one cell are normal for training data; the default limit is 128 KiB.
csv.field_size_limit(2**31 - 1)


def loads(text: str) -> Any:
    """json.loads, numbers kept as the text they are written with."""
    return _DECODER.decode(text)


def read_rows(path: str | Path,
              text_split: str = "paragraph") -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, column names). Row i of the result is "row i+1" in error messages."""
    declared, rows = open_rows(path, text_split)
    rows = list(rows)
    return rows, declared if declared is not None else _columns(rows)


@dataclass
class Scan:
    columns: list[str]
    total: int
    rows: list[dict[str, Any]]  # rows start+1 .. start+count


def scan(path: str | Path, start: int = 0, count: int = 5,
         text_split: str = "paragraph") -> Scan:
    """Columns, row count and a few rows, reading the file once and keeping only those
    rows: what inspecting an upload or showing one page needs."""
    declared, rows = open_rows(path, text_split)
    if Path(path).suffix.lower() == ".parquet" and Path(path).is_file():
        import pyarrow.parquet as pq

        total = pq.ParquetFile(path).metadata.num_rows
        return Scan(list(declared or []), total, _slice(rows, start, count))
    columns = dict.fromkeys(declared or [])
    kept, total = [], 0
    for total, row in enumerate(rows, 1):
        if declared is None:
            columns.update(dict.fromkeys(row))
        if start < total <= start + count:
            kept.append(row)
    return Scan(list(columns), total, kept)


def _slice(rows: Iterator[dict[str, Any]], start: int, count: int) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows):
        if i >= start + count:
            break
        if i >= start:
            out.append(row)
    return out


def open_rows(path: str | Path, text_split: str = "paragraph",
              ) -> tuple[list[str] | None, Iterator[dict[str, Any]]]:
    """(columns the file declares, or None for json where rows may differ; the rows, read
    as they are consumed). Problems are DataErrors, raised here or while iterating."""
    path = Path(path)
    if path.is_dir():
        return _folder(path, text_split)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"unsupported file type {suffix or '(none)'!r}; use one of: {', '.join(SUFFIXES)}",
            file=path,
        )
    if not path.is_file():
        raise DataError("file not found", file=path)
    if path.stat().st_size == 0:
        raise DataError("the file is empty (0 bytes)", file=path)
    if suffix == ".jsonl":
        return None, _jsonl(path)
    if suffix == ".json":
        return None, _json(path)
    if suffix == ".csv":
        return _csv(path)
    if suffix == ".parquet":
        return _parquet(path)
    if text_split not in TEXT_SPLITS:
        raise DataError(f"text_split {text_split!r}: use one of {', '.join(TEXT_SPLITS)}",
                        file=path)
    text = _text(path)
    if text_split == "line":  # each line as written (cut at "\n" only, not at U+2028)
        docs = [line.removesuffix("\r") for line in text.split("\n")]
        return ["text"], iter([{"text": d} for d in docs if d.strip()])
    docs = [p.strip() for p in re.split(r"\n\s*\n", text)]
    return ["text"], iter([{"text": p} for p in docs if p])


def _folder(path: Path, text_split: str) -> tuple[list[str] | None, Iterator[dict[str, Any]]]:
    """A dataset folder (core.data.folders): its shards one after another."""
    files = folders.shards(path)
    if files[0].suffix.lower() == ".arrow":
        return folders.arrow_columns(files[0]), _chain(
            folders.arrow_rows(f) for f in files)
    declared, first = open_rows(files[0], text_split)

    def rest() -> Iterator[Iterator[dict[str, Any]]]:
        yield first
        for f in files[1:]:
            yield open_rows(f, text_split)[1]
    return declared, _chain(rest())


def _chain(parts: Iterator[Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    for part in parts:
        yield from part


def _text(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    if not text.strip():
        raise DataError("the file is empty (only blank space)", file=path)
    return text


def _not_utf8(path: Path) -> DataError:
    """Where the first byte that is not UTF-8 is; the decoder's own offset is into a
    buffer, so look again line by line."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                column = len(line[: exc.start].decode("utf-8", "replace")) + 1
                return DataError(
                    f"line {lineno}, column {column} (byte {offset + exc.start} of the file): "
                    f"byte 0x{line[exc.start]:02x} is not UTF-8 text; {UTF8_HINT}",
                    file=path,
                )
            offset += len(line)
    return DataError(f"not UTF-8 text; {UTF8_HINT}", file=path)


def _snippet(text: str) -> str:
    text = text.strip()
    return text if len(text) <= 40 else text[:37] + "..."


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    # Lines are split on b"\n" only: str.splitlines would also split inside strings that
    # hold U+2028 or other Unicode line breaks.
    seen = False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise _not_utf8(path) from None
            if not line.strip():
                continue
            try:
                row = _DECODER.decode(line)
            except json.JSONDecodeError as exc:
                # An error at the end of the line is reported there, not on the next.
                column = min(exc.pos, len(line.rstrip("\r\n"))) + 1
                raise DataError(f"line {lineno}, column {column}: not valid JSON "
                                f"({exc.msg})", file=path) from None
            if not isinstance(row, dict):
                raise DataError(f"line {lineno}: expected one object {{...}} per line, got "
                                f"{_snippet(line)}", file=path)
            seen = True
            yield row
    if not seen:
        raise DataError("the file is empty (only blank lines)", file=path)


def _json(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            yield from jsontext.rows(jsontext.JsonText(f, _DECODER, path))
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


def _csv(path: Path) -> tuple[list[str], Iterator[dict[str, Any]]]:
    f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 (closed by _csv_rows)
    reader = csv.reader(f)
    try:
        header = next(reader, None)
    except UnicodeDecodeError:
        f.close()
        raise _not_utf8(path) from None
    except csv.Error as exc:
        f.close()
        raise DataError(f"line 1: not valid CSV ({exc})", file=path) from None
    if not header:
        f.close()
        raise DataError("the file is empty; a CSV needs a header line naming its columns",
                        file=path)
    columns = [c or f"column_{i}" for i, c in enumerate(header, 1)]
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        f.close()
        raise DataError(f"line 1: column {', '.join(map(repr, twice))} appears more than once; "
                        "give every column its own name", file=path)
    return columns, _csv_rows(path, f, reader, columns)


def _csv_rows(path: Path, f: Any, reader: Any, columns: list[str]) -> Iterator[dict[str, Any]]:
    n = 0
    with f:
        try:
            for cells in reader:
                if not cells:  # a blank line
                    continue
                n += 1
                if len(cells) > len(columns):
                    raise DataError(
                        f"line {reader.line_num}: {len(cells)} cells but the header names "
                        f"{len(columns)} columns (a comma in an unquoted cell?)",
                        file=path, row=n)
                # A short row is the spreadsheet leaving out trailing empty cells.
                yield dict(zip(columns, cells + [""] * (len(columns) - len(cells)),
                               strict=True))
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        except csv.Error as exc:
            raise DataError(f"line {reader.line_num}: not valid CSV ({exc})",
                            file=path) from None


def _parquet(path: Path) -> tuple[list[str], Iterator[dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise DataError(f"cannot read as parquet: {exc}", file=path) from None
    return list(table.schema_arrow.names), _parquet_rows(path, table)


def _parquet_rows(path: Path, table: Any) -> Iterator[dict[str, Any]]:
    try:
        for batch in table.iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    except OSError as exc:
        raise DataError(f"cannot read as parquet: {exc}", file=path) from None


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))
