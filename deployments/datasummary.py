"""A service's collected rows over time, and the join of one request's input and prediction rows.

Neither reads whole files to count: the summary takes each day's file sizes from listings and turns them into
rows with the average row size of one sampled file per designation (exact where the sample was the whole file).
The join scans the files of one day, each to its end, until each designation has rows of the request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta

from django import forms

from deployments import blobs, preview
from deployments.models import Service

# A request's rows carry its correlation id (one per inputs collect()) and the runtime's request id (x-request-id).
KEY_COLUMNS = ("$aml_dc_correlation_id", "$aml_request_id")
# Row sizes are sampled from this many shapes of a designation's rows at most (the largest); smaller shapes are
# counted with the row size of the last one sampled.
SAMPLED_SHAPES = 8
# Bytes one join may read before it gives up with a clear message: it runs in a web request (~2 s for 128 MiB).
JOIN_SCAN_LIMIT = 128 * 1024 * 1024
# Rows shown per designation: a request id is the caller's, and one that is sent again and again matches them all.
JOIN_MAX_ROWS = 50
# <model>/<version>/<designation>/<yyyy>/<mm>/<dd>/[<HH>/]data[-<hash>][_NNNN].csv below the service's folder
# (data-<hash>.csv holds rows of another shape than data.csv's: see collector.upload).
FILE = re.compile(
    r"^(?P<model>[^/]+)/(?P<version>[^/]+)/(?P<designation>[^/]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/"
    r"(?:\d{2}/)?(?P<file>data(?:-[0-9a-f]{8})?)(?:_\d{4,})?\.csv$"
)


@dataclass
class Series:
    designation: str
    counts: list[int]
    exact: bool = True
    bars: list[tuple[int, int, int, date, int]] = field(default_factory=list)  # x, y, height, day, count

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass
class Summary:
    days: list[date]
    series: list[Series]


def _service_files(service: Service, days: list[date]) -> list[tuple[date, dict[str, str], blobs.Entry]]:
    """The collected files of `service` on `days` (and of other days of their months), with the day of each: one
    listing per model version, designation and month. A folder that is not a date (2026/06/31) is no data."""
    root = f"{service.workspace.path}/{service.name}/"
    months = sorted({(d.year, d.month) for d in days})
    found = []
    for model in blobs.list_folder(root).entries:
        for version in blobs.list_folder(model.name).entries:
            for designation in blobs.list_folder(version.name).entries:
                if not designation.is_folder:
                    continue
                for year, month in months:
                    for entry in blobs.list_blobs(f"{designation.name}{year:04d}/{month:02d}/"):
                        match = FILE.match(entry.name[len(root) :])
                        if match and (day := _day(match)):
                            found.append((day, match.groupdict(), entry))
    return found


def _day(match: re.Match[str]) -> date | None:
    try:
        return date(int(match["y"]), int(match["m"]), int(match["d"]))
    except ValueError:
        return None


def _average_row_bytes(name: str) -> tuple[float, int, bool]:
    """Average bytes per row and header bytes, from the head of one file; exact when that was the whole file."""
    sample = preview.head(name, 1000)
    header_bytes = len((",".join(sample.header) + "\n").encode())
    if not sample.rows:
        return 1.0, header_bytes, sample.complete
    body = sample.bytes_read - header_bytes if sample.complete else _bytes_of(sample)
    return max(body / len(sample.rows), 1.0), header_bytes, sample.complete


def _sample(per_day: list[list[tuple[str, int]]]) -> tuple[float, int, bool]:
    """Row size from the newest file that has rows (a file just rolled over holds only its header)."""
    newest_first = [name for files in reversed(per_day) for name, _ in reversed(files)]
    for name in newest_first[:3]:
        average, header_bytes, exact = _average_row_bytes(name)
        if average > 1.0:  # a real row is at least two bytes; 1.0 means the sample had none
            return average, header_bytes, exact
    return _average_row_bytes(newest_first[0])


def _bytes_of(sample: preview.Preview) -> int:
    return sum(len((",".join(row) + "\n").encode()) for row in sample.rows)


def rows_per_day(service: Service, start: date, end: date) -> Summary:
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    index = {day: i for i, day in enumerate(days)}
    # designation -> file (data, or data-<hash> for rows of another shape) -> day -> (name, size) of its parts
    sizes: dict[str, dict[str, list[list[tuple[str, int]]]]] = {}
    for day, parts, entry in _service_files(service, days):
        if day in index:
            files = sizes.setdefault(parts["designation"], {})
            per_day = files.setdefault(parts["file"], [[] for _ in days])
            per_day[index[day]].append((entry.name, entry.size or 0))
    series = []
    for designation, files in sorted(sizes.items()):
        # Each shape has its own row size and header: a 60-value prediction row is not a 1-value one.
        by_size = sorted(files.values(), key=lambda per_day: -sum(size for f in per_day for _, size in f))
        counts = [0] * len(days)
        exact = True
        for n, per_day in enumerate(by_size):
            if n < SAMPLED_SHAPES:
                average, header_bytes, sampled_whole = _sample(per_day)
            exact = exact and n < SAMPLED_SHAPES and sampled_whole and sum(len(f) for f in per_day) == 1
            for i, day_files in enumerate(per_day):
                counts[i] += round(sum(max(size - header_bytes, 0) for _, size in day_files) / average)
        series.append(Series(designation, counts, exact))
    _layout(series, days)
    return Summary(days, series)


def _layout(series: list[Series], days: list[date], width: int = 600, height: int = 80) -> None:
    """Bar positions for the server-rendered SVG chart: one bar per day, scaled to the series' busiest day."""
    step = width // max(len(days), 1)
    for s in series:
        top = max(s.counts, default=0) or 1
        s.bars = []
        for i, (day, count) in enumerate(zip(days, s.counts, strict=True)):
            bar = round(height * count / top)
            s.bars.append((i * step, height - bar, bar, day, count))


class JoinForm(forms.Form):
    correlation_id = forms.CharField(
        max_length=200,
        label="Correlation or request id",
        help_text="The $aml_dc_correlation_id of the rows, or the request's x-request-id ($aml_request_id).",
    )
    day = forms.DateField(label="Day", initial=date.today, widget=forms.DateInput(attrs={"type": "date"}))


@dataclass
class Matches:
    """The rows of one designation that belong to the request, under their file's header."""

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    more: bool = False  # more than JOIN_MAX_ROWS rows matched (a request id that callers reuse, say)

    def columns(self) -> list[tuple[str, list[str]]]:
        """Each column with its value in every row (a request's rows side by side)."""
        return [(name, [row[i] if i < len(row) else "" for row in self.rows]) for i, name in enumerate(self.header)]

    def as_dicts(self) -> list[dict[str, str]]:
        return [dict(zip(self.header, row, strict=False)) for row in self.rows]


@dataclass
class Joined:
    rows: dict[str, Matches]  # by designation
    scanned_bytes: int
    gave_up: bool


def join(service: Service, request_key: str, day: date) -> Joined:
    """The rows of every designation that carry `request_key` on `day` as their correlation id or request id: a
    request's inputs and predictions, every row of them. Within a designation, the first file that has any is read
    to its end (one call's rows are written together); other files of that designation are not read."""
    found: dict[str, Matches] = {}
    scanned = 0
    for file_day, parts, entry in _service_files(service, [day]):
        if file_day != day or parts["designation"] in found:
            continue
        if scanned + (entry.size or 0) > JOIN_SCAN_LIMIT:
            return Joined(found, scanned, gave_up=True)
        scanned += entry.size or 0
        _, chunks = blobs.stream(entry.name)
        rows = preview.iter_rows(chunks)
        header = next(rows, [])
        columns = [header.index(name) for name in KEY_COLUMNS if name in header]
        if not columns:
            continue
        matches = Matches(header)
        for row in rows:
            if any(len(row) > column and row[column] == request_key for column in columns):
                if len(matches.rows) == JOIN_MAX_ROWS:
                    matches.more = True
                    break
                matches.rows.append(row)
        if matches.rows:
            found[parts["designation"]] = matches
    return Joined(found, scanned, gave_up=False)
