"""Reading collected CSV files the way a person checks them: the first and last rows, column types, empty cells,
and exports that spreadsheets cannot mistake for formulas. Reads only the bytes it shows."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from deployments import blobs

FIRST_READ = 64 * 1024
MAX_READ = 16 * 1024 * 1024  # a preview never reads more than this, whatever N asks for
# Collected cells can be long (an encoded image); the csv module's default limit is 128 KiB a cell.
csv.field_size_limit(MAX_READ)


@dataclass
class Column:
    name: str
    type: str = "empty"  # number, text or empty, over the previewed rows
    empty: int = 0


@dataclass
class Preview:
    header: list[str]
    rows: list[list[str]]
    size: int
    bytes_read: int
    complete: bool  # the whole file was read
    columns: list[Column] = field(default_factory=list)


def _parse(text: str) -> list[list[str]]:
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise NotTabular(f"This file is not CSV that can be previewed: {exc}.") from exc


class NotTabular(ValueError):
    """The bytes are not CSV this preview can parse; the message is for the user."""


def _newlines(text: str, start: int, odd: bool) -> Iterator[tuple[int, bool]]:
    """For each newline of `text` after `start` (quote parity `odd` there): the index just after it and the parity
    there (odd: inside a quoted cell). Each character is looked at once, so long quoted cells cost nothing more."""
    while (newline := text.find("\n", start)) >= 0:
        if text.count('"', start, newline) % 2:
            odd = not odd
        start = newline + 1
        yield start, odd


def _rows_end(text: str, start: int = 0, odd: bool = False) -> tuple[int, int, bool]:
    """Scan `text` from `start` (quote parity `odd` there) for newlines outside quoted cells.

    Returns the index just after the last such newline (0 if none), where the scan stopped (after the last
    newline), and the quote parity there.
    """
    cut, scanned, parity = 0, start, odd
    for scanned, parity in _newlines(text, start, odd):
        if not parity:
            cut = scanned
    return cut, scanned, parity


def _first_row_start(text: str) -> int:
    """Where the first whole row of `text`, a file's last bytes, starts: after its first newline outside quoted
    cells. A file ends outside quotes, and every quote (escaped ones too, as "") toggles the state, so the state at
    the start of `text` is the parity of all the quotes in it."""
    odd = text.count('"') % 2 == 1
    return next((start for start, odd in _newlines(text, 0, odd) if not odd), len(text))


def head(name: str, n: int) -> Preview:
    """The header and the first `n` rows: ranged reads from the start, doubling until there are enough rows."""
    size = blobs.size_of(name)
    length = min(FIRST_READ, size)
    while True:
        data = blobs.read_range(name, 0, length)
        complete = length >= size
        # Drop a row cut by the end of the range (unless the file ends there), even one cut inside a quoted cell.
        text = data.decode("utf-8", errors="replace")
        if not complete:
            text = text[: _rows_end(text)[0]]
        rows = _parse(text)
        if complete or len(rows) > n or length >= MAX_READ:
            break
        length = min(length * 4, size, MAX_READ)
    header, body = (rows[0], rows[1 : n + 1]) if rows else ([], [])
    return _with_columns(Preview(header, body, size, len(data), complete and len(rows) <= n + 1))


def tail(name: str, n: int, header: list[str]) -> Preview:
    """The last `n` rows: ranged reads from the end, growing until there are enough rows."""
    size = blobs.size_of(name)
    length = min(FIRST_READ, size)
    while True:
        offset = size - length
        data = blobs.read_range(name, offset, length)
        text = data.decode("utf-8", errors="replace")
        if offset > 0:
            text = text[_first_row_start(text) :]  # the range may start inside a row, even inside a quoted cell
        rows = _parse(text)
        if offset == 0:
            rows = rows[1:]  # the header
        if offset == 0 or len(rows) >= n or length >= MAX_READ:
            break
        length = min(length * 4, size, MAX_READ)
    return _with_columns(Preview(header, rows[-n:] if n else [], size, len(data), offset == 0))


NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf|infinity)$", re.IGNORECASE)


def _with_columns(preview: Preview) -> Preview:
    width = max([len(preview.header), *(len(r) for r in preview.rows)], default=0)
    columns = [Column(preview.header[i] if i < len(preview.header) else f"column_{i + 1}") for i in range(width)]
    for row in preview.rows:
        for i, column in enumerate(columns):
            cell = row[i] if i < len(row) else ""
            if cell == "":
                column.empty += 1
            elif column.type != "text":
                column.type = "number" if NUMBER.match(cell) else "text"
    preview.columns = columns
    return preview


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def excel_safe(cell: str) -> str:
    """A cell that a spreadsheet would run as a formula gets a leading apostrophe; numbers like -1.5 stay as
    they are (OWASP's CSV injection advice)."""
    if cell.startswith(FORMULA_START) and not NUMBER.match(cell):
        return "'" + cell
    return cell


def iter_rows(chunks: Iterable[bytes]) -> Iterator[list[str]]:
    """The rows of a CSV stream, parsed chunk by chunk; memory stays one chunk and one row."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span two chunks
    pending, scanned, odd = "", 0, False
    for chunk in chunks:
        pending += decoder.decode(chunk)
        cut, scanned, odd = _rows_end(pending, scanned, odd)
        if cut:
            yield from _parse(pending[:cut])
            pending, scanned = pending[cut:], scanned - cut
    pending += decoder.decode(b"", final=True)
    if pending:
        yield from _parse(pending)


class _Echo:
    def write(self, value: str) -> str:
        return value


def excel_safe_csv(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Re-encode a CSV stream row by row with the cells that would start a formula neutralized."""
    writer = csv.writer(_Echo(), lineterminator="\n")
    for row in iter_rows(chunks):
        yield writer.writerow([excel_safe(cell) for cell in row]).encode()
