"""What a service's scoring runtime says of itself (its `GET /status`, see scoring/README.md), shaped for the
service's page: requests, latency, and what the collector did with the rows, dropped ones first."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from collector import tabular


@dataclass(frozen=True)
class Drop:
    reason: str
    rows: int
    why: str


@dataclass(frozen=True)
class RuntimeFigures:
    """Counts since the runtime's process started (a restart, such as an update's, begins them again)."""

    workers: int
    workers_ready: int
    workers_restarted: int
    score_requests: int
    answered: int
    refused: int  # 4xx: a body run() cannot take, a request id too long
    failed: int  # 5xx: run() raised, or the runtime could not answer
    p50_ms: float | None
    p99_ms: float | None
    collection: str  # "off", "storage", "debug" (standard output)
    rows_collected: int
    rows_delivered: int
    spool_bytes: int  # written to the local spool, not yet in storage
    upload_failures: int  # each one retried: rows wait in the spool meanwhile
    drops: tuple[Drop, ...]
    last_error: str  # the collector's newest error, as it logged it
    last_error_at: datetime | None

    @property
    def rows_dropped(self) -> int:
        return sum(d.rows for d in self.drops)


def figures(status: dict[str, Any]) -> RuntimeFigures | None:
    """The figures of a runtime's status document; None if it is not one (another program on the port, say)."""
    try:
        requests, latency, collector = status["requests"], status["latency"], status["collector"]
        dropped = collector.get("rows_dropped") or {}
        return RuntimeFigures(
            workers=len(status["workers"]),
            workers_ready=sum(1 for w in status["workers"] if w["ready"]),
            workers_restarted=int(status.get("workers_exited") or 0),
            score_requests=int(requests["score_requests"]),
            answered=int(requests["score_ok"]),
            refused=int(requests["score_client_errors"]),
            failed=int(requests["score_errors"]),
            p50_ms=latency["p50_ms"],
            p99_ms=latency["p99_ms"],
            collection=str(collector.get("mode") or "off"),
            rows_collected=int(collector.get("rows_collected") or 0),
            rows_delivered=int(collector.get("rows_delivered") or 0),
            spool_bytes=int(collector.get("spool_bytes") or 0),
            upload_failures=int(collector.get("upload_failures") or 0),
            drops=tuple(
                Drop(reason, int(rows), tabular.explain(reason)) for reason, rows in sorted(dropped.items()) if rows
            ),
            last_error=_without_url_queries(str(collector.get("last_error") or "")),
            last_error_at=datetime.fromtimestamp(collector["last_error_at"], UTC)
            if collector.get("last_error_at")
            else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


_URL_QUERY = re.compile(r"\?[^\s'\"]*")


def _without_url_queries(message: str) -> str:
    # A storage error may quote a URL, and a SAS token is its query: readers see this page.
    return _URL_QUERY.sub("?…", message)
