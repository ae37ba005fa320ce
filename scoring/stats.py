"""Request counts and latencies, per worker process and summed over the workers of one runtime.

Each worker counts its own requests in memory (a lock and a few integer additions per request) and publishes a
snapshot, with its readiness and the collector's counters, to a file in the runtime's board folder: at once when
it starts, becomes ready or exits, and every `PUBLISH_INTERVAL` seconds in between. A status request is answered
by one worker: it adds its live numbers to the other workers' latest snapshots and to the totals of the workers
that have exited (which the master folds into `retired.json`), so the figures cover the whole runtime and survive
worker restarts. Other workers' figures are at most `PUBLISH_INTERVAL` seconds old.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PUBLISH_INTERVAL = 1.0
# Figures of collector.stats() that say how things are now, not how many so far.
COLLECTOR_LEVELS = ("queue_rows", "spool_bytes")

# Latency histogram buckets: upper bounds in seconds, from 50 microseconds to 2 minutes, 10% apart.
BOUNDS: list[float] = []
_b = 50e-6
while _b < 120:
    BOUNDS.append(_b)
    _b *= 1.1
BOUNDS.append(float("inf"))

COUNTS = ("requests", "score_requests", "score_ok", "score_client_errors", "score_errors", "bytes_in", "bytes_out")


class RequestStats:
    """One worker's counters for `POST /score` (and a total of all requests)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(COUNTS, 0)
        self.histogram = [0] * len(BOUNDS)
        self.latency_sum = 0.0
        self.latency_max = 0.0

    def request(self) -> None:
        with self.lock:
            self.counts["requests"] += 1

    def score(self, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        index = bisect.bisect_left(BOUNDS, seconds)
        key = "score_ok" if status < 400 else "score_client_errors" if status < 500 else "score_errors"
        with self.lock:
            c = self.counts
            c["requests"] += 1
            c["score_requests"] += 1
            c[key] += 1
            c["bytes_in"] += bytes_in
            c["bytes_out"] += bytes_out
            self.histogram[index] += 1
            self.latency_sum += seconds
            if seconds > self.latency_max:
                self.latency_max = seconds

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "counts": dict(self.counts),
                "histogram": list(self.histogram),
                "latency_sum": self.latency_sum,
                "latency_max": self.latency_max,
            }


def empty_snapshot() -> dict[str, Any]:
    return RequestStats().snapshot()


def add_snapshots(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {
        "counts": {k: a["counts"].get(k, 0) + b["counts"].get(k, 0) for k in COUNTS},
        "histogram": [x + y for x, y in zip(a["histogram"], b["histogram"], strict=True)],
        "latency_sum": a["latency_sum"] + b["latency_sum"],
        "latency_max": max(a["latency_max"], b["latency_max"]),
    }


def add_collector(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Sum two `collector.stats()` results: numbers add up, drops add up by reason, the newest error wins."""
    out: dict[str, Any] = dict(a)
    for key, value in b.items():
        if key == "rows_dropped":
            dropped = dict(a.get(key) or {})
            for reason, n in (value or {}).items():
                dropped[reason] = dropped.get(reason, 0) + n
            out[key] = dropped
        elif key in ("last_error", "last_error_at"):
            continue
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = (a.get(key) or 0) + value
        elif key not in out:
            out[key] = value
    if (b.get("last_error_at") or 0) > (a.get("last_error_at") or 0):
        out["last_error"], out["last_error_at"] = b.get("last_error"), b.get("last_error_at")
    return out


def latency_summary(snapshot: dict[str, Any]) -> dict[str, float | None]:
    """Mean, max and percentiles in milliseconds (a percentile is exact to the bucket's 10%)."""
    histogram = snapshot["histogram"]
    total = sum(histogram)
    if not total:
        return {"mean_ms": None, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    out: dict[str, float | None] = {"mean_ms": round(snapshot["latency_sum"] / total * 1000, 3)}
    for name, q in (("p50_ms", 0.50), ("p90_ms", 0.90), ("p99_ms", 0.99)):
        rank, seen = q * total, 0
        for i, n in enumerate(histogram):
            seen += n
            if seen >= rank:
                bound = BOUNDS[i] if i < len(BOUNDS) - 1 else snapshot["latency_max"]
                out[name] = round(min(bound, snapshot["latency_max"]) * 1000, 3)
                break
    out["max_ms"] = round(snapshot["latency_max"] * 1000, 3)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replica_ready(board: Board, ready: bool, others: list[dict[str, Any]]) -> bool:
    """See WorkerStatus.replica_ready: `ready` is the asking worker's, `others` the other live workers'."""
    if board.serving():
        return ready or any(o.get("ready") for o in others)
    everyone = ready and all(o.get("ready") for o in others) and len(others) + 1 >= board.workers
    if everyone:
        board.mark_serving()
    return everyone


class Board:
    """The runtime's shared folder of worker snapshots (made by the master, written by the workers)."""

    def __init__(self, folder: Path, workers: int) -> None:
        self.folder = folder
        self.workers = workers

    @property
    def agent_file(self) -> Path:
        """The collector's delivery agent writes its counters here (collector.agent --status-file)."""
        return self.folder / "agent.json"

    def agent(self) -> dict[str, Any]:
        return _read_json(self.agent_file) or {}

    @property
    def _serving_file(self) -> Path:
        return self.folder / "serving"

    def serving(self) -> bool:
        """Whether every worker of the runtime has been ready at once: from then on it serves, and a worker
        started later (one that replaces a worker that exited) joins the port only once it is ready itself."""
        return self._serving_file.exists()

    def mark_serving(self) -> None:
        with contextlib.suppress(OSError):
            self._serving_file.touch()

    def worker_file(self, pid: int) -> Path:
        return self.folder / f"worker-{pid}.json"

    def publish(self, snapshot: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            _write_json(self.worker_file(snapshot["pid"]), snapshot)

    def others(self, pid: int) -> list[dict[str, Any]]:
        """The latest snapshots of the other live workers."""
        out = []
        for path in self.folder.glob("worker-*.json"):
            data = _read_json(path)
            if data and data.get("pid") != pid and _alive(int(data["pid"])):
                out.append(data)
        return out

    def retired(self) -> dict[str, Any]:
        return _read_json(self.folder / "retired.json") or {"requests": empty_snapshot(), "collector": {}, "workers": 0}

    def retire(self, pid: int) -> None:
        """In the master, when worker `pid` has exited: fold its last snapshot into the retired totals."""
        path = self.worker_file(pid)
        data = _read_json(path)
        if data is None:
            return
        retired = self.retired()
        retired["requests"] = add_snapshots(retired["requests"], data["requests"])
        # Counters only: a level (rows queued, bytes spooled) was the exited worker's, not one that goes on adding up.
        collector = {k: v for k, v in (data.get("collector") or {}).items() if k not in COLLECTOR_LEVELS}
        retired["collector"] = add_collector(retired["collector"], collector)
        retired["workers"] += 1
        with contextlib.suppress(OSError):
            _write_json(self.folder / "retired.json", retired)
            path.unlink()


class WorkerStatus:
    """This worker's counters and readiness, published to the board (a daemon thread refreshes them)."""

    def __init__(self, board: Board | None, collector_stats: Callable[[], dict[str, Any]]) -> None:
        self.board = board
        self.pid = os.getpid()
        self.started = time.time()
        self.requests = RequestStats()
        self.ready = False
        self.init_error = ""
        self._collector_stats = collector_stats
        self._stop = threading.Event()

    def snapshot(self) -> dict[str, Any]:
        try:
            collector = self._collector_stats()
        except Exception as exc:  # the status page must answer even if the collector misbehaves
            collector = {"last_error": f"stats() failed: {exc}"}
        return {
            "pid": self.pid,
            "started": self.started,
            "ready": self.ready,
            "init_error": self.init_error,
            "requests": self.requests.snapshot(),
            "collector": collector,
        }

    def publish(self) -> None:
        if self.board is not None:
            self.board.publish(self.snapshot())

    def start_publishing(self) -> None:
        if self.board is None:
            return
        self.publish()

        def loop() -> None:
            while not self._stop.wait(PUBLISH_INTERVAL):
                self.publish()

        threading.Thread(target=loop, name="scoring-stats", daemon=True).start()

    def stop_publishing(self) -> None:
        self._stop.set()
        self.publish()

    def note_ready(self) -> None:
        """This worker's init() has returned: publish it, and mark the runtime serving if it is the last one."""
        self.ready = True
        self.publish()
        if self.board is not None and not self.board.serving():
            self.replica_ready()

    def replica_ready(self) -> bool:
        """Whether the runtime serves (`/ready`). At start, once every worker is ready: each listens on the port
        at once (SO_REUSEPORT), and the kernel sends a share of the connections to each, whether it is loading or
        not. Once the runtime has served, a worker that replaces one that exited joins the port only when it is
        ready itself (scoring/server.py), so the runtime stays ready while any of its workers is."""
        if self.board is None:
            return self.ready
        return _replica_ready(self.board, self.ready, self.board.others(self.pid))

    def status(self) -> dict[str, Any]:
        """The whole runtime's figures, for `GET /status`."""
        mine = self.snapshot()
        workers = [mine, *(self.board.others(self.pid) if self.board else [])]
        retired: dict[str, Any] = (
            self.board.retired() if self.board else {"requests": empty_snapshot(), "collector": {}, "workers": 0}
        )
        requests: dict[str, Any] = retired["requests"]
        collector: dict[str, Any] = retired["collector"]
        for w in workers:
            requests = add_snapshots(requests, w["requests"])
            collector = add_collector(collector, w.get("collector") or {})
        delivery = self.board.agent() if self.board else {}
        if delivery:
            # The delivery agent uploads every worker's rows: deliveries are its counts, and so is what is left.
            spool_bytes = delivery.pop("spool_bytes", 0)
            delivery.pop("queue_rows", None)
            collector = add_collector(collector, delivery)
            collector["spool_bytes"] = spool_bytes
        collector["mode"] = (mine.get("collector") or {}).get("mode", "off")
        return {
            "ready": _replica_ready(self.board, mine["ready"], workers[1:]) if self.board else mine["ready"],
            "requests": requests["counts"],
            "latency": latency_summary(requests),
            "collector": collector,
            "workers": [
                {
                    "pid": w["pid"],
                    "ready": w["ready"],
                    "uptime_s": round(time.time() - w["started"], 1),
                    "requests": w["requests"]["counts"]["requests"],
                    **({"init_error": w["init_error"]} if w.get("init_error") else {}),
                }
                for w in sorted(workers, key=lambda w: w["pid"])
            ],
            "workers_exited": retired["workers"],
        }
