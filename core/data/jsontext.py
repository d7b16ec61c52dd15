"""A .json file's rows, decoded one at a time from text read in chunks.

`json.load` would hold the whole text and every row at once: for a 100 MB upload, several
hundred MB in the UI process just to show five rows and a count. Here only the current
chunk (a quarter of a megabyte, more for one very long row) is held, and positions in errors are
still line and column in the whole file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from core.data.errors import DataError

_SPACE = re.compile(r"[ \t\n\r]*")
CHUNK = 1 << 18


class JsonText:
    def __init__(self, f: IO[str], decoder: json.JSONDecoder, path: Path):
        self.f, self.decoder, self.path = f, decoder, path
        self.buf, self.i, self.eof = "", 0, False
        # Where buf starts in the file: characters and newlines before it, and the offset
        # of the line it starts in (for columns of errors on a long first line).
        self.base = self.lines = self.line_start = 0

    def _more(self) -> bool:
        if self.eof:
            return False
        # A row longer than what is held: read as much again, so retries stay linear.
        data = self.f.read(max(CHUNK, len(self.buf)))
        self.eof = not data
        self.buf += data
        return bool(data)

    def _drop(self) -> None:
        nl = self.buf.rfind("\n", 0, self.i)
        if nl >= 0:
            self.lines += self.buf.count("\n", 0, self.i)
            self.line_start = self.base + nl + 1
        self.base += self.i
        self.buf, self.i = self.buf[self.i:], 0

    def peek(self) -> str:
        """The next character that is not blank space, '' at the end of the file."""
        if self.i > CHUNK:  # forget what has been decoded (only here: no position is held)
            self._drop()
        char = self.buf[self.i:self.i + 1]
        if char and char not in " \t\n\r":
            return char
        while True:
            self.i = _SPACE.match(self.buf, self.i).end()
            if self.i < len(self.buf) or not self._more():
                return self.buf[self.i:self.i + 1]

    def take(self) -> None:
        self.i += 1

    def value(self) -> Any:
        """The value at the cursor."""
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.i)
                break
            except json.JSONDecodeError as exc:
                if self._more():  # perhaps only cut off at the end of what was read
                    continue
                raise self.error(exc.pos, f"not valid JSON ({exc.msg})") from None
        self.i = end
        return value

    def error(self, pos: int | None, reason: str, row: int | None = None) -> DataError:
        pos = self.i if pos is None else pos
        nl = self.buf.rfind("\n", 0, pos)
        line = self.lines + self.buf.count("\n", 0, pos) + 1
        column = pos - nl if nl >= 0 else self.base + pos - self.line_start + 1
        return DataError(f"line {line}, column {column}: {reason}", file=self.path, row=row)


def rows(text: JsonText) -> Iterator[dict[str, Any]]:
    """A list of objects, one object, or objects one after another (JSON lines saved
    as .json)."""
    first = text.peek()
    if not first:
        raise DataError("the file is empty (only blank space)", file=text.path)
    if first not in "[{":
        raise text.error(None, "expected a list of objects, one per row")
    if first == "{":
        n = 0
        while text.peek():
            n += 1
            yield _row(text, n, "row")
        return
    text.take()
    n, sep = 0, text.peek()
    while sep != "]":
        n += 1
        yield _row(text, n, f"item {n} of the list")
        sep = text.peek()
        if sep == ",":
            text.take()
            if text.peek() == "]":
                raise text.error(None, "not valid JSON (a ',' before the closing ']')")
        elif sep != "]":
            raise text.error(None, f"not valid JSON (expected ',' or ']' after item {n})")
    text.take()
    if text.peek():
        raise text.error(None, "not valid JSON (text after the closing ']')")


def _row(text: JsonText, n: int, what: str) -> dict[str, Any]:
    start = text.i
    value = text.value()
    if not isinstance(value, dict):
        snippet = text.buf[start:text.i]
        snippet = snippet if len(snippet) < 40 else snippet[:37] + "..."
        raise text.error(start, f"{what} is {snippet}, not an object {{...}}",
                         row=n)
    return value
