"""Turning what a scoring script passes to `collect()` into CSV rows.

Two halves, for two threads. `capture()` runs on the caller's thread and does the least it can: it classifies the
value by type and takes a snapshot the caller can no longer change (a numpy copy, tuples of the rows). `encode()`
runs on the spool writer's thread: it checks the shape, names the columns and writes the CSV.

A third way, for a spool writer whose rows a delivery agent delivers: `pack()` turns a numeric array into a packed
record (its bytes and its rows' suffix), which the agent, another process, writes as CSV with `unpack()`. Writing
numbers as text is most of the writer's work, and in the agent it no longer holds the GIL of a process serving
requests. `unpack(pack(x))` is byte for byte what `encode(x)` writes.

Shapes, as the legacy package wrote them (DESIGN.md section 2), except the list-of-lists defect:
- a flat list or tuple, a 1-D array, a pandas Series: ONE row;
- a list of rows (lists, tuples or 1-D arrays), a 2-D array: one row each;
- a DataFrame: one row per row, its columns are the header when the collector has no `feature_names`;
- a scalar (number, string, bool): one row of one cell.
Anything else (a dict, None, a 3-D array, an arbitrary object) is not tabular and is dropped.
"""

from __future__ import annotations

import functools
import json
import re
import struct
import sys
from collections.abc import Sequence
from typing import Any

# Capture kinds.
ROW = 1  # one row: a tuple of cells
ROWS = 2  # a list of rows (tuples)
ARRAY = 3  # a numpy array (1-D: one row, 2-D: rows)
FRAME = 4  # (column names, 2-D numpy array)
SCALAR = 5  # one cell

# Drop reasons, also the keys of the `rows_dropped` counters.
NOT_TABULAR = "not_tabular"
RAGGED = "ragged"
UNENCODABLE = "unencodable_cell"
ROW_TOO_LARGE = "row_too_large"
QUEUE_FULL = "queue_full"
SPOOL_FULL = "spool_full"
INTERNAL = "internal_error"
REASONS = (NOT_TABULAR, RAGGED, UNENCODABLE, ROW_TOO_LARGE, QUEUE_FULL, SPOOL_FULL, INTERNAL)

_EXPLAIN = {
    NOT_TABULAR: "collect() was given a value it cannot write as rows (rows are a list, a 1-D or 2-D numpy array, "
    "a DataFrame or a scalar)",
    RAGGED: "a row has a different number of columns than the first row of the same collect() call",
    UNENCODABLE: "a cell could not be written as CSV text (a nested list, dict or array, or undecodable text)",
    ROW_TOO_LARGE: "a row is larger than AML_MODEL_DC_MAX_ROW_BYTES",
    QUEUE_FULL: "rows arrive faster than the spool writer takes them (AML_MODEL_DC_QUEUE_MAX_ROWS)",
    SPOOL_FULL: "the local spool is full (AML_MODEL_DC_SPOOL_MAX_BYTES) because storage is not taking rows",
    INTERNAL: "an unexpected error in the collector",
}


def explain(reason: str) -> str:
    return _EXPLAIN.get(reason, reason)


class CollectError(ValueError):
    """Bad input to `collect()`, raised only in strict mode (`AML_MODEL_DC_STRICT=true` or `strict=True`)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{explain(reason)}{': ' + detail if detail else ''}")


class _Unencodable(Exception):
    pass


_SCALARS = (str, int, float, bool)
_ROW_TYPES = (list, tuple)


def capture(data: Any) -> tuple[int, Any, int]:
    """Classify and snapshot `data` on the caller's thread: (kind, snapshot, estimated rows).

    Raises CollectError(NOT_TABULAR) for values that cannot be rows.
    """
    t = type(data)
    if t is list or t is tuple:
        if data and type(data[0]) in _ROW_TYPES:
            return ROWS, [tuple(r) for r in data], len(data)
        if data and _is_array(data[0]):
            return ROWS, [tuple(r.tolist()) for r in data], len(data)
        return ROW, tuple(data), 1
    np = sys.modules.get("numpy")
    if np is not None and isinstance(data, np.ndarray):
        if data.ndim == 1:
            return ARRAY, data.copy(), 1
        if data.ndim == 2:
            return ARRAY, data.copy(), data.shape[0]
        if data.ndim == 0:
            return SCALAR, data.item(), 1
        raise CollectError(NOT_TABULAR, f"a {data.ndim}-D array")
    pd = sys.modules.get("pandas")
    if pd is not None:
        if isinstance(data, pd.DataFrame):
            # Columns of different types as Python objects: to_numpy() would widen ints to floats (12345678901234567
            # to 1.2345678901234568e+16) and dates to nanoseconds.
            values = data.to_numpy(copy=True) if _one_type(data) else data.to_numpy(dtype=object)
            return FRAME, ([str(c) for c in data.columns], values), len(data)
        if isinstance(data, pd.Series):
            return ARRAY, data.to_numpy(copy=True), 1
    if t in _SCALARS or (np is not None and isinstance(data, np.generic)):
        return SCALAR, data, 1
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return capture(list(data))
    raise CollectError(NOT_TABULAR, f"got {t.__module__}.{t.__qualname__}")


def _one_type(frame: Any) -> bool:
    """Whether all of a DataFrame's columns have one dtype. pandas' own answer (0.3 µs, there since pandas 0.23)
    when it has one: `frame.dtypes` builds a Series, 10 µs on the caller's thread."""
    homogeneous = getattr(frame, "_is_homogeneous_type", None)
    return homogeneous if isinstance(homogeneous, bool) else len(set(frame.dtypes)) <= 1


def _is_array(x: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray) and x.ndim == 1


_NEEDS_QUOTE = re.compile(r'[",\r\n]')


def quote(text: str) -> str:
    """One CSV field (RFC 4180): quoted only when it holds a comma, a quote or a line break."""
    if _NEEDS_QUOTE.search(text) is None:
        return text
    return '"' + text.replace('"', '""') + '"'


def _cell(v: Any) -> str:
    t = type(v)
    if t is float or t is int or t is bool:
        return str(v)
    if t is str:
        return quote(v)
    if v is None:
        return ""
    if isinstance(v, list | tuple | dict | set | frozenset):
        raise _Unencodable(f"a {t.__name__} inside a cell")
    if isinstance(v, bytes | bytearray):
        try:
            return quote(bytes(v).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _Unencodable("bytes that are not UTF-8") from exc
    np = sys.modules.get("numpy")
    if np is not None and isinstance(v, np.ndarray):
        raise _Unencodable("an array inside a cell")
    try:
        return quote(str(v))
    except Exception as exc:
        raise _Unencodable(f"str() of a {t.__name__} failed: {exc}") from exc


# repr() of a float64 is at most 24 characters (-2.2250738585072014e-308); of an int64, 20; of a bool, 5.
_WIDEST_NUMBER = 25

# How encode() turns a row's cells into text.
_GENERIC = 0  # any Python values: _cell() each
_NUMBERS = 1  # Python int, float or bool only: repr() (faster than str(), same text)
_TEXT = 2  # already CSV-safe strings


def _rows_of(kind: int, snap: Any) -> tuple[list[str] | None, list[Sequence[Any]], int]:
    """(column names from the data or None, rows as sequences, how to write their cells)."""
    if kind == ROW:
        return None, [snap], _GENERIC
    if kind == ROWS:
        return None, snap, _GENERIC
    if kind == SCALAR:
        return None, [(snap,)], _GENERIC
    if kind == FRAME:
        columns, values = snap
        rows, how = _array_rows(values, 2)
        return columns, rows, how
    rows, how = _array_rows(snap, snap.ndim)
    return None, rows, how


def _array_rows(values: Any, ndim: int) -> tuple[list[Sequence[Any]], int]:
    kind = values.dtype.kind
    if kind == "f" and values.dtype.itemsize < 8:
        # float32/float16: tolist() widens to float64 and prints 0.1 as 0.10000000149011612; numpy's str() does not.
        return [[str(x) for x in row] for row in (values if ndim == 2 else [values])], _TEXT
    if kind in "mM":
        # Dates and durations: ISO 8601 text (tolist() of nanosecond precision gives integers).
        text = values.astype(str)
        return ([text.tolist()] if ndim == 1 else text.tolist()), _TEXT
    listed = values.tolist()
    how = _NUMBERS if kind in "iubf" else _GENERIC
    return ([listed] if ndim == 1 else listed), how


def column_names(ncols: int, feature_names: Sequence[str] | None, data_columns: Sequence[str] | None) -> list[str]:
    """Header for `ncols` data columns: feature_names first, then the data's own names, then `feature_<n>`.

    `feature_<n>` uses the 1-based column position, so with 6 names for 10 columns the extra columns are
    `feature_7` to `feature_10`. A generated name that collides with a given one gets `_` appended.
    """
    given = list(feature_names or [])
    if not given and data_columns:
        given = list(data_columns)
    names = [str(n) for n in given[:ncols]]
    taken = set(names)
    for i in range(len(names), ncols):
        name = f"feature_{i + 1}"
        while name in taken:
            name += "_"
        taken.add(name)
        names.append(name)
    return names


class Encoded:
    """The CSV of one collect() call: whole-row chunks, rows written, and rows dropped by reason."""

    __slots__ = ("chunks", "dropped", "first_error", "ncols", "rows")

    def __init__(self) -> None:
        self.chunks: list[tuple[bytes, int]] = []  # (utf-8 CSV of whole rows, row count)
        self.rows = 0
        self.dropped: dict[str, int] = {}
        self.first_error: tuple[str, str] | None = None
        self.ncols = 0

    def drop(self, reason: str, detail: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        if self.first_error is None:
            self.first_error = (reason, detail)


def encode(
    kind: int,
    snap: Any,
    *,
    suffix: str,
    max_row_bytes: int,
    chunk_bytes: int = 1024 * 1024,
) -> tuple[Encoded, list[str] | None]:
    """Encode a captured value as CSV rows, each ending in `suffix` (the inputs columns) and a newline.

    The first row sets the column count of the call (`Encoded.ncols`); other rows of the call with another count
    are dropped as ragged. Returns the result and the data's own column names (a DataFrame's), from which the
    caller names the columns.
    """
    out = Encoded()
    data_columns, rows, how = _rows_of(kind, snap)
    cell = repr if how == _NUMBERS else str if how == _TEXT else _cell
    if not rows:
        return out, data_columns
    ncols = out.ncols = len(rows[0])
    if ncols == 0:
        out.drop(RAGGED, "a row with no cells", len(rows))
        return out, data_columns
    widest = ncols * _WIDEST_NUMBER + len(suffix) * 4 + 1
    if how == _NUMBERS and kind in (ARRAY, FRAME) and widest <= max_row_bytes:
        # A numeric array: every row has ncols cells of ASCII no longer than _WIDEST_NUMBER, so no row can be
        # ragged, too large or unencodable; write whole chunks at once (this is most of the writer's time).
        per_chunk = max(1, chunk_bytes // widest)
        end = suffix + "\n"
        for i in range(0, len(rows), per_chunk):
            part = rows[i : i + per_chunk]
            text = end.join([",".join(map(repr, row)) for row in part]) + end
            out.chunks.append((text.encode("utf-8"), len(part)))
            out.rows += len(part)
        return out, data_columns
    lines: list[str] = []
    size = 0
    count = 0
    for row in rows:
        if len(row) != ncols:
            out.drop(RAGGED, f"{len(row)} cells where {ncols} were expected")
            continue
        try:
            line = ",".join(map(cell, row)) + suffix
        except _Unencodable as exc:
            out.drop(UNENCODABLE, str(exc))
            continue
        n = len(line)
        if n * 4 > max_row_bytes or size + n * 4 > chunk_bytes:
            # Characters are 1 to 4 bytes: measure exactly only when it could matter.
            try:
                n = len(line.encode("utf-8"))
            except UnicodeEncodeError:
                out.drop(UNENCODABLE, "text that cannot be encoded as UTF-8")
                continue
            if n + 1 > max_row_bytes:
                out.drop(ROW_TOO_LARGE, f"{n + 1} bytes, limit {max_row_bytes}")
                continue
            if lines and size + n + 1 > chunk_bytes:
                _emit(out, lines, count)
                lines, size, count = [], 0, 0
        lines.append(line)
        size += n + 1
        count += 1
    if lines:
        _emit(out, lines, count)
    return out, data_columns


def _emit(out: Encoded, lines: list[str], count: int) -> None:
    text = "\n".join(lines) + "\n"
    try:
        out.chunks.append((text.encode("utf-8"), count))
        out.rows += count
    except UnicodeEncodeError:
        # A lone surrogate somewhere: find the rows that carry it.
        for line in lines:
            try:
                out.chunks.append(((line + "\n").encode("utf-8"), 1))
                out.rows += 1
            except UnicodeEncodeError:
                out.drop(UNENCODABLE, "text that cannot be encoded as UTF-8")


def header_line(names: Sequence[str]) -> bytes:
    return (",".join(quote(n) for n in names) + "\n").encode("utf-8", "replace")


# A packed record: numpy dtype (b"<f8" or b">f8"), rows, columns, suffix bytes; then the suffix (UTF-8), then the
# values, rows after rows. Only float64: struct reads them as the very Python floats that tolist() gives, and their
# packed bytes take at most twice their CSV (1.0), usually less than half; an int64 of 0 or 1 would take four times,
# and the spool bound is in spool bytes.
PACKED_RECORD = struct.Struct(">4sIII")
_FLOAT64 = (b"<f8\0", b">f8\0")


class Packed:
    """A numeric call as packed records: what the delivery agent needs to write it as CSV (see unpack())."""

    __slots__ = ("chunks", "data_columns", "ncols", "rows")

    def __init__(self, chunks: list[tuple[bytes, int, int]], rows: int, ncols: int, data_columns: list[str] | None):
        self.chunks = chunks  # (packed record, rows, the most bytes its CSV can take)
        self.rows = rows
        self.ncols = ncols
        self.data_columns = data_columns


def pack(
    kind: int,
    snap: Any,
    *,
    suffix: str,
    max_row_bytes: int,
    tail_columns: int = 0,
    chunk_bytes: int = 1024 * 1024,
) -> Packed | None:
    """A numeric array or DataFrame as packed records of at most `chunk_bytes` of CSV each, or None for anything
    else (encode() writes those). The same rows as encode(), and only rows that encode() cannot drop: every cell
    is a number of at most _WIDEST_NUMBER characters, and the rows fit in `max_row_bytes`.

    `tail_columns`: the last columns that add_correlations() added to an array of numbers (an object array then).
    When every row has the same values there, they are written as part of the rows' suffix."""
    array = _array_of(kind, snap)
    if array is None:
        return None
    data_columns, values = array
    np = sys.modules["numpy"]
    if type(values) is not np.ndarray or values.ndim not in (1, 2) or values.size == 0:
        return None  # a masked array's bytes hold its fill values where encode() writes None
    if values.ndim == 1:
        values = values.reshape(1, -1)
    ncols = values.shape[1]
    if values.dtype.kind == "O":
        split = _split_correlated(values, tail_columns)
        if split is None:
            return None
        values, correlated = split
        suffix = correlated + suffix
    if values.dtype.type is not np.float64:  # (a long double that numpy reports as <f8 is not one)
        return None
    dtype = values.dtype.str
    rows, numbers = values.shape
    try:
        tail = suffix.encode("utf-8")
    except UnicodeEncodeError:
        return None  # encode() counts the rows as unencodable
    widest = numbers * _WIDEST_NUMBER + len(tail) + 1
    if widest > max_row_bytes:
        return None
    per_chunk = max(1, chunk_bytes // widest)
    data = values.tobytes()
    row_bytes = numbers * values.dtype.itemsize
    chunks = []
    for first in range(0, rows, per_chunk):
        n = min(per_chunk, rows - first)
        head = PACKED_RECORD.pack(dtype.encode("ascii"), n, numbers, len(tail))
        values_bytes = data if n == rows else data[first * row_bytes : (first + n) * row_bytes]
        chunks.append((b"".join((head, tail, values_bytes)), n, n * widest))
    return Packed(chunks, rows, ncols, data_columns)


def _array_of(kind: int, snap: Any) -> tuple[list[str] | None, Any] | None:
    """(data columns, values) of a snapshot of an array or a DataFrame (see capture()); None for other kinds."""
    if kind == ARRAY:
        return None, snap
    if kind == FRAME:
        return snap  # (data columns, values)
    return None


def _split_correlated(values: Any, tail_columns: int) -> tuple[Any, str] | None:
    """An object array of Python floats whose last `tail_columns` are the same text in every row (what
    add_correlations() makes of an array of float64): (the floats as a float64 array, the CSV text of the last
    columns, starting with a comma). None for any other object array."""
    np = sys.modules["numpy"]
    width = values.shape[1] - tail_columns
    if tail_columns <= 0 or width <= 0:
        return None
    tails = values[:, width:].tolist()
    # Types first: == of a str and, say, pandas.NA raises.
    if {type(v) for row in tails for v in row} != {str} or tails.count(tails[0]) != len(tails):
        return None
    cells = values[:, :width].ravel().tolist()
    if set(map(type, cells)) != {float}:
        return None
    return np.array(cells, dtype=np.float64).reshape(-1, width), "," + ",".join(map(quote, tails[0]))


@functools.lru_cache(maxsize=256)
def _layout(dtype: bytes, count: int) -> struct.Struct:
    if dtype not in _FLOAT64:
        raise ValueError(f"a dtype of {dtype!r}")
    return struct.Struct(f"{dtype[:1].decode()}{count}d")  # the byte order, then `count` float64


# A record of many calls of floats bound for one file (collector.engine's spool writer packs the calls of one wake
# together): CALLS_HEAD (CALLS_TAG, which no dtype of a packed record starts with, and the length of the list), then
# the list, as JSON: [dtype, numbers per row, [[rows, [cells]], ...]]; then the calls' values, call after call. A
# row's CSV is its numbers, then its call's cells (text: correlation values, an inputs collector's own), quoted.
# (JSON and not marshal, which is faster: what marshal reads allocates what a length in the bytes says, bytes gone
# wrong could make the agent run out of memory; what JSON reads takes memory in proportion to the bytes.)
CALLS_TAG = b"call"
CALLS_HEAD = struct.Struct(">4sI")
# The most CSV a record of calls may make (the spool writer's frame, collector.spool.FRAME_BYTES): the reader refuses
# a record that would make more, so that bytes gone wrong cannot make it run out of memory.
CALLS_CSV_BYTES = 1024 * 1024


class Calls:
    """Calls of float64 (in the machine's byte order) bound for one file, gathered into one record (see
    CALLS_TAG). Per call the spool writer then does a few checks and appends (floats_of(), add()), where pack()
    would make a record of each: at the few rows of a scoring request, that per-call work is most of what
    collection costs a scoring worker."""

    __slots__ = ("calls", "csv_bytes", "numbers", "rows", "values")

    def __init__(self, numbers: int) -> None:
        self.numbers = numbers
        self.calls: list[tuple[int, tuple[str, ...]]] = []
        self.values: list[bytes] = []
        self.rows = 0
        self.csv_bytes = 0  # the most bytes the calls' CSV can take

    def add(self, values: Any, cells: tuple[str, ...], csv_bytes: int) -> None:
        data = values.tobytes()  # first: a call is added whole or not at all
        rows = values.shape[0]
        self.calls.append((rows, cells))
        self.values.append(data)
        self.rows += rows
        self.csv_bytes += csv_bytes

    def record(self) -> bytes:
        dtype = _native_float64(sys.modules["numpy"]).str
        calls = json.dumps([dtype, self.numbers, self.calls], separators=(",", ":")).encode("ascii")
        return b"".join((CALLS_HEAD.pack(CALLS_TAG, len(calls)), calls, *self.values))


def floats_of(kind: int, snap: Any, cells: tuple[str, ...], max_row_bytes: int) -> tuple[Any, Any, int] | None:
    """For Calls: (the values, 2-D, data columns, the most bytes a row's CSV can take) of a call of float64 in the
    machine's byte order whose rows' CSV, `cells` included, fit in max_row_bytes, all of it ASCII; None for any
    other call (pack() or encode() takes those). The spool writer asks this of every call: it is kept short."""
    array = _array_of(kind, snap)
    if array is None:
        return None
    data_columns, values = array
    np = sys.modules["numpy"]
    # `is`: numpy keeps one dtype object for float64 in the machine's order; any other (say, big-endian) is None.
    if type(values) is not np.ndarray or values.dtype is not _native_float64(np) or values.size == 0:
        return None
    if values.ndim == 1:
        values = values.reshape(1, -1)
    elif values.ndim != 2:
        return None
    text = "".join(cells)
    if not text.isascii():
        return None
    widest = _widest_row(values.shape[1], len(text), len(cells))
    return (values, data_columns, widest) if widest <= max_row_bytes else None


def _widest_row(numbers: int, chars: int, cells: int) -> int:
    """The most bytes a row's CSV can take: `numbers` float64, then `cells` ASCII cells of `chars` characters in
    all (a cell quoted takes at most twice its characters, and 2 quotes, and a comma before it), then a newline."""
    return numbers * _WIDEST_NUMBER + 2 * chars + 3 * cells + 1


@functools.cache
def _native_float64(np: Any) -> Any:
    return np.dtype(np.float64)


def unpack(records: bytes) -> bytes:
    """The CSV of packed records (the delivery agent). Raises ValueError for bytes that are not packed records."""
    out: list[bytes] = []
    i = 0
    try:
        while i < len(records):
            if records[i : i + 4] == CALLS_TAG:
                i = _unpack_calls(records, i, out)
                continue
            dtype, rows, ncols, tail_bytes = PACKED_RECORD.unpack_from(records, i)
            i += PACKED_RECORD.size
            end = records[i : i + tail_bytes].decode("utf-8") + "\n"
            i = _rows_csv(records, i + tail_bytes, dtype, rows, ncols, end, out)
    # UnicodeDecodeError and JSONDecodeError are ValueErrors; RecursionError: JSON nested too deep.
    except (struct.error, ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"not a packed record at byte {i}: {exc}") from exc
    return b"".join(out)


def _unpack_calls(records: bytes, i: int, out: list[bytes]) -> int:
    """Append the CSV of the Calls record at `i` to `out`; returns where the next record starts."""
    _, length = CALLS_HEAD.unpack_from(records, i)
    i += CALLS_HEAD.size
    if len(records) - i < length:
        raise ValueError("a record cut short")
    dtype, numbers, calls = json.loads(records[i : i + length])
    i += length
    if type(dtype) is not str or type(numbers) is not int or numbers < 1 or type(calls) is not list:
        raise ValueError("not a record of calls")
    dtype = dtype.encode("ascii") + b"\0"
    most = 0
    for rows, cells in calls:
        if type(rows) is not int or rows < 1 or type(cells) is not list:
            raise ValueError("not a record of calls")
        most += rows * _widest_row(numbers, sum(map(len, cells)), len(cells))
        if most > CALLS_CSV_BYTES:
            raise ValueError("a record of calls that would make more CSV than a spool writer puts in one")
        end = ("," + ",".join(map(quote, cells)) if cells else "") + "\n"
        i = _rows_csv(records, i, dtype, rows, numbers, end, out)
    return i


def _rows_csv(records: bytes, i: int, dtype: bytes, rows: int, ncols: int, end: str, out: list[bytes]) -> int:
    """Append the CSV of the `rows` x `ncols` float64 at `i` to `out`, each row ending in `end`; returns where the
    values end."""
    layout = _layout(dtype, rows * ncols)
    values = layout.unpack_from(records, i)
    lines = [",".join(map(repr, values[r : r + ncols])) for r in range(0, rows * ncols, ncols)]
    out.append((end.join(lines) + end).encode("utf-8"))
    return i + layout.size
