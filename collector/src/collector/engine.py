"""The machinery one process shares among all its collectors: a queue, a spool writer and an uploader.

    collect() ──deque──> spool writer thread ──disk──> uploader thread ──> blob storage
    (snapshot, enqueue)   (encode CSV, frame, write)    (exactly-once appends, see collector.upload)

With `AML_MODEL_DC_DELIVERY=agent` a collecting process runs the spool writer only (role "writer") and the
delivery agent (`collector.agent`, another process: role "agent") runs the uploader for every spool in the
folder, so the upload's CPU never competes with the requests for the collecting process's GIL. Such a writer also
spools numeric arrays as packed records, for the agent to write as CSV (collector.tabular.pack), while the agent
keeps up; the calls of floats of one wake go in one record per file (collector.tabular.Calls).

The threads start on the first `collect()` with collection on. At interpreter exit (atexit), and on SIGTERM when
the process had no handler of its own, everything in memory is written to the spool and the uploader gets
`AML_MODEL_DC_SHUTDOWN_TIMEOUT` seconds to deliver it; what it could not deliver stays in the spool for the next
process. A process that forks (gunicorn with preload) starts fresh machinery in the child.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import signal
import threading
import time
import traceback
import uuid
from collections import deque
from typing import Any

from collector import tabular
from collector.config import Settings
from collector.spool import FRAME, Chunk, Destination, Position, Spool, frames

log = logging.getLogger("collector")

IDLE_POLL = 0.02
# The writer encodes queued calls for up to this long before it writes them out and lets other threads run.
BATCH_SECONDS = 0.001
ORPHAN_SCAN_SECONDS = 30.0
# How often a writer re-reads from the files how much of its spool the agent has delivered (for the spool bound).
MEASURE_SECONDS = 1.0
MAX_BACKOFF = 5.0
# After the spool could not be created (a read-only or full disk), collect() drops rows without trying again for
# this long, rather than retry on every request.
START_RETRY_SECONDS = 5.0
# Undelivered bytes that make the uploader go again at once rather than after the flush interval.
BIG_BACKLOG = 4 * 1024 * 1024
# A writer whose rows the delivery agent delivers leaves the agent the CSV of numeric arrays (it spools them as packed
# records) while the agent has less than this to deliver of its spool.
PACK_BACKLOG_BYTES = 8 * 1024 * 1024
# How often the spool writer checks that the segments it writes are still on disk (see Spool.reopen_deleted).
REOPEN_CHECK_SECONDS = 1.0


DELIVERY_COUNTS = (
    "rows_delivered",
    "bytes_delivered",
    "blocks_appended",
    "upload_failures",
    "parts_rolled",
    "spools_adopted",
    "spool_bytes_lost",
)


class Counters:
    """Process-wide counters; `snapshot()` is what `collector.stats()` returns."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero everything (tests use this; the scoring runtime never needs to)."""
        self.rows_collected = 0
        self.rows_spooled = 0
        self.rows_delivered = 0
        self.bytes_delivered = 0
        self.blocks_appended = 0
        self.upload_failures = 0
        self.parts_rolled = 0
        self.spools_adopted = 0
        self.spool_bytes_lost = 0
        self.dropped: dict[str, int] = dict.fromkeys(tabular.REASONS, 0)
        self.last_error = ""
        self.last_error_at: float | None = None
        self._logged: set[str] = set()

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue the delivery counts of a `collector.stats()` saved by an earlier delivery agent."""
        with self.lock:
            for name in DELIVERY_COUNTS:
                value = saved.get(name)
                if isinstance(value, int) and value > 0:
                    setattr(self, name, value)

    def drop(self, reason: str, rows: int, detail: str = "", where: str = "") -> None:
        with self.lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + rows
            first = reason not in self._logged
            self._logged.add(reason)
        if first:
            log.warning(
                "collector: dropped %d row(s)%s: %s%s. Further drops for this reason are only counted "
                "(collector.stats()['rows_dropped']).",
                rows,
                f" of {where}" if where else "",
                tabular.explain(reason),
                f" ({detail})" if detail else "",
            )

    def error(self, message: str) -> None:
        with self.lock:
            changed = message != self.last_error
            self.last_error = message
            self.last_error_at = time.time()
            self.upload_failures += 1
        if changed:
            log.error("collector: cannot deliver to blob storage, rows stay in the spool and are retried: %s", message)


COUNTERS = Counters()


class Sink:
    """What the spool writer needs to know about one collector, and the headers its rows have had so far."""

    __slots__ = (
        "container",
        "feature_names",
        "folder",
        "headers",
        "inputs",
        "label",
        "printed",
    )

    def __init__(self, container: str, folder: str, feature_names: list[str] | None, inputs: bool, label: str):
        self.container = container
        self.folder = folder  # without the date part
        self.feature_names = feature_names
        self.inputs = inputs
        self.label = label
        # By column count, the data's own column names and those add_correlations() added: rows of another shape
        # get a header, and a file, of their own (a 1-D predict() result is one row of as many cells as the request
        # had inputs).
        self.headers: dict[tuple[int, tuple[str, ...] | None, tuple[str, ...]], bytes] = {}
        self.printed: set[bytes] = set()  # headers written to standard output (debug mode)


INPUT_COLUMNS = (
    "$aml_dc_correlation_id",
    "$aml_dc_scoring_timestamp",
    "$aml_dc_boundary",
    "$aml_workspace",
    "$aml_service_name",
    "$aml_model_name",
    "$aml_model_version",
    "$aml_request_id",
)


PROCESS, WRITER, AGENT = "process", "writer", "agent"


class Engine:
    def __init__(self, settings: Settings, role: str | None = None) -> None:
        self.settings = settings
        # process: spools and delivers its own rows; writer: spools them for the agent; agent: delivers only.
        self.role = role or (WRITER if settings.delivery == "agent" else PROCESS)
        self.pid = os.getpid()
        self.closed = False
        self._lock = threading.Lock()
        self._queue: deque[tuple[Any, ...]] = deque()
        self._queued_rows = 0  # by callers, under _lock
        self._taken_rows = 0  # by the writer
        self._submitted = 0  # calls, under _lock
        self._processed = 0  # calls, by the writer
        self._started = False
        self._start_again_at = 0.0  # after a failed start, the next try waits until then
        self._start_error = ""
        self._stopping = False
        self._writer_wake = threading.Event()
        self._uploader_wake = threading.Event()
        self._uploader_stop = False
        self._spool: Spool | None = None
        self._adopted: list[Spool] = []
        self._spools_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._uploader: threading.Thread | None = None
        self._date_cache: tuple[int, str] = (-1, "")
        self._rolled = False  # the date path changed since the writer last closed the files of the one before
        self._measured_at = 0.0
        self._rounds = 0  # upload rounds done, by the uploader
        self._lease_id = ""  # the agent's, see _agent_lease()

    # -- caller's thread ---------------------------------------------------------------------------------------

    def submit(self, item: tuple[Any, ...], rows: int) -> bool:
        """Enqueue a captured call; False when the queue is full (the caller counts the drop). Raises OSError,
        with nothing queued, while the spool cannot be created."""
        if not self._started:
            self.start()
        with self._lock:
            if self._queued_rows - self._taken_rows + rows > self.settings.queue_max_rows:
                return False
            self._queued_rows += rows
            self._submitted += 1
            COUNTERS.rows_collected += rows
            self._queue.append(item)
        return True

    def start(self) -> None:
        """Create this process's spool and start the threads (also delivers spools left by dead processes)."""
        with self._spools_lock:
            if self._started or self.closed:
                return
            if time.monotonic() < self._start_again_at:
                raise OSError(self._start_error)  # tried a moment ago: not again on every collect()
            try:
                if self.role != AGENT:
                    self._spool = Spool.create(self.settings.spool_dir, shared=self.role == WRITER)
                    self._spool.on_lost = _lost
            except OSError as exc:
                self._start_error = f"cannot create the spool in {self.settings.spool_dir}: {exc}"
                self._start_again_at = time.monotonic() + START_RETRY_SECONDS
                COUNTERS.error(self._start_error)
                raise
            if self.role != AGENT:
                self._writer = _thread(self._writer_loop, "collector-spool-writer")
            if self.role != WRITER:
                self._uploader = _thread(self._uploader_loop, "collector-uploader")
            self._started = True

    # -- spool writer ------------------------------------------------------------------------------------------

    def _writer_loop(self) -> None:
        queue = self._queue
        checked_at = time.monotonic()
        while True:
            if not self._stopping:
                self._writer_wake.wait(IDLE_POLL)
                self._writer_wake.clear()
            elif not queue:
                return
            if not self._stopping and time.monotonic() - checked_at >= REOPEN_CHECK_SECONDS:
                checked_at = time.monotonic()
                self._check_spool()
            # What is queued now, and only that: rows collected meanwhile wait for the next wake. A writer that went
            # on while the queue was not empty would trail the request threads item by item, and each hand-over
            # of the GIL (a round of futex calls and context switches) costs more CPU than encoding an item.
            todo = len(queue)
            while todo > 0 and queue:
                todo -= self._write_batch(queue, todo)
                if todo > 0:
                    # Between slices, let a request thread that waits for the GIL run: it is held up for one slice
                    # (BATCH_SECONDS) at most, not for the interpreter's switch interval (5 ms).
                    time.sleep(0)

    def _check_spool(self) -> None:
        """Go on past spool files deleted by something else (writer thread, once a second; not while stopping,
        when shutdown() removes the spool itself). An error (a full disk, say) fails the writes, their rows are
        counted, and the next check tries again."""
        assert self._spool is not None
        try:
            if self._spool.deleted():
                self._replace_deleted_spool()
            else:
                self._spool.mend()
        except OSError as exc:
            log.debug("collector: cannot make the spool's files again: %s", exc)
        try:
            self._spool.reopen_deleted()
        except OSError as exc:
            log.debug("collector: cannot start a new spool file: %s", exc)

    def _replace_deleted_spool(self) -> None:
        """This process's spool folder was deleted whole, by something else (writer thread): go on in a new one,
        under the same lease id (the blobs' leases stay ours), so that the rows collected from now on are delivered.
        The undelivered rows of the old one are lost, and counted here, once."""
        old = self._spool
        assert old is not None
        new = Spool.create(self.settings.spool_dir, shared=old.shared, lease_id=old.lease_id)
        new.on_lost = _lost
        old.on_lost = lambda nbytes: None
        with old.lock:
            lost, old.bytes = old.bytes, 0
        _lost(lost)
        log.error(
            "collector: the spool %s was deleted before its rows were delivered (%d bytes); they are lost, "
            "collection goes on in %s. Nothing but the collector may delete spool files.",
            old.path,
            lost,
            new.path,
        )
        with self._spools_lock:  # with the flags: the uploader retires it only once it is in _adopted
            self._spool = new
            old.gone, old.own = True, False
            if _alive(self._uploader):
                self._adopted.append(old)  # the uploader, which may be reading it this moment, retires it
                return
        old.close()

    def _write_batch(self, queue: deque[tuple[Any, ...]], limit: int) -> int:
        """Encode up to `limit` queued calls, for up to BATCH_SECONDS, and append them to the spool, one write per
        file; returns how many calls it took."""
        started = time.perf_counter()
        batch: dict[Destination, list[Chunk]] = {}
        backlog = self.spool_bytes()
        room = self.settings.spool_max_bytes - backlog
        # Leave the CSV of numeric arrays to the delivery agent while it keeps up; when it falls behind (a saturated
        # machine, where the agent's nice 10 gets it little CPU), write it here again, as the process role does.
        pack = self.role == WRITER and backlog < PACK_BACKLOG_BYTES
        # Calls of floats, gathered by target file (see tabular.Calls); in the order they were made, by file: any
        # other call places those gathered before it first.
        gathered: dict[Destination, tuple[str, tabular.Calls]] = {}
        items = rows = 0
        while items < limit and queue:
            item = queue.popleft()
            try:
                placed = self._gather(item, gathered, batch, room) if pack else None
                if placed is None:
                    room -= self._place_gathered(gathered, batch, room)
                    room -= self._encode(item, batch, room, pack)
                else:
                    room -= placed
            except Exception as exc:  # never let the writer die
                COUNTERS.drop(tabular.INTERNAL, item[-1], f"{type(exc).__name__}: {exc}")
                log.debug("collector: writer error\n%s", traceback.format_exc())
            items += 1
            rows += item[-1]
            if time.perf_counter() - started >= BATCH_SECONDS:
                break
        room -= self._place_gathered(gathered, batch, room)
        spool = self._spool
        assert spool is not None
        spooled = 0
        for dest, chunks in batch.items():
            payload = frames(chunks)
            rows_here = sum(n for _, n, _ in chunks)
            try:
                dest.write(payload)
            except OSError as exc:
                COUNTERS.drop(tabular.INTERNAL, rows_here, f"cannot write the spool: {exc}")
                continue
            spooled += rows_here
        with COUNTERS.lock:
            COUNTERS.rows_spooled += spooled
        if self._rolled:  # a new day (or hour): the files of the one before get no more rows
            self._rolled = False
            today = "/" + self._date_cache[1]
            spool.close_writers(lambda dest: dest.folder.endswith(today))
        # Only now, with the rows on disk, may flush() count these calls as spooled.
        self._taken_rows += rows
        self._processed += items
        return items

    def _gather(
        self,
        item: tuple[Any, ...],
        gathered: dict[Destination, tuple[str, tabular.Calls]],
        batch: dict[Destination, list[Chunk]],
        room: int,
    ) -> int | None:
        """Add a call of floats to the Calls of its target file in `gathered`, and return the spool bytes of what
        it placed in `batch` first (a full record, or one of another width bound for the same file); None, with
        nothing done, for any other call."""
        sink, ts, suffix_values, kind, snap, tail, tail_values, _rows = item
        if tail and tail_values is None:
            return None  # text columns in the data (add_correlations() of other values): pack() or encode()
        text = cells(tail_values, suffix_values)
        found = tabular.floats_of(kind, snap, text, self.settings.max_row_bytes)
        if found is None:
            return None
        values, data_columns, widest = found
        csv_bytes = values.shape[0] * widest
        if csv_bytes > tabular.CALLS_CSV_BYTES:
            return None  # pack() splits it into records of a frame's size
        numbers = values.shape[1]
        # By file, not by shape: rows of one file stay in the order collected, whatever shapes wrote them.
        dest = self._destination(sink, ts, numbers + len(tail_values or ()), data_columns, tail)
        entry = gathered.get(dest)
        placed = 0
        if entry is not None and (
            entry[1].numbers != numbers or entry[1].csv_bytes + csv_bytes > tabular.CALLS_CSV_BYTES
        ):
            placed = self._place_gathered({dest: gathered.pop(dest)}, batch, room)
            entry = None
        if entry is None:
            entry = gathered[dest] = (sink.label, tabular.Calls(numbers))
        entry[1].add(values, text, csv_bytes)
        return placed

    def _place_gathered(
        self,
        gathered: dict[Destination, tuple[str, tabular.Calls]],
        batch: dict[Destination, list[Chunk]],
        room: int,
    ) -> int:
        """Add the records of `gathered` to `batch` and forget them; returns the spool bytes they will take. Never
        raises (it also runs after the writer's loop over the calls): a record that fails has its rows counted."""
        used = 0
        while gathered:
            dest, (label, calls) = gathered.popitem()  # first: a record is placed once, or counted dropped once
            try:
                chunks = [(calls.record(), calls.rows, calls.csv_bytes)]
                used += self._add(dest, chunks, calls.rows, label, batch, room - used)
            except Exception as exc:  # never let the writer die
                COUNTERS.drop(tabular.INTERNAL, calls.rows, f"{type(exc).__name__}: {exc}", label)
                log.debug("collector: writer error\n%s", traceback.format_exc())
        return used

    def _encode(self, item: tuple[Any, ...], batch: dict[Destination, list[Chunk]], room: int, pack: bool) -> int:
        """Add one call's chunks to `batch`, under their destination (packed records if `pack` and the call is a
        numeric array, else CSV); returns the spool bytes they will take."""
        sink, ts, suffix_values, kind, snap, tail, tail_values, _rows = item
        suffix = suffix_of(cells(tail_values, suffix_values))
        # Columns that add_correlations() added to floats come apart from them, as cells of the suffix.
        extra = len(tail_values or ())
        max_row_bytes = self.settings.max_row_bytes
        packed = None
        if pack:
            try:  # pack() takes only calls that encode() writes whole: no drops to count on its path
                packed = tabular.pack(
                    kind, snap, suffix=suffix, max_row_bytes=max_row_bytes, tail_columns=len(tail) - extra
                )
            except Exception:  # a shortcut: never lose rows that encode() would write
                log.debug("collector: cannot pack\n%s", traceback.format_exc())
        if packed is not None:
            chunks_of_call, ncols, data_columns, rows = packed.chunks, packed.ncols, packed.data_columns, packed.rows
        else:
            enc, data_columns = tabular.encode(kind, snap, suffix=suffix, max_row_bytes=max_row_bytes)
            if enc.first_error is not None:
                for reason, n in enc.dropped.items():
                    COUNTERS.drop(reason, n, enc.first_error[1], sink.label)
            chunks_of_call = [(chunk, n, 0) for chunk, n in enc.chunks]
            ncols, rows = enc.ncols, enc.rows
        if not chunks_of_call:
            return 0
        dest = self._destination(sink, ts, ncols + extra, data_columns, tail)
        return self._add(dest, chunks_of_call, rows, sink.label, batch, room)

    def _destination(
        self, sink: Sink, ts: float, ncols: int, data_columns: list[str] | None, tail: tuple[str, ...]
    ) -> Destination:
        """The spool destination of a call's rows: its file (the day's or hour's) and header."""
        spool = self._spool
        assert spool is not None
        header = header_of(sink, ncols, data_columns, tail)
        return spool.destination(sink.container, f"{sink.folder}/{self._date_path(ts)}", header)

    def _add(
        self,
        dest: Destination,
        chunks_of_call: list[Chunk],
        rows: int,
        label: str,
        batch: dict[Destination, list[Chunk]],
        room: int,
    ) -> int:
        """Add chunks to `batch`, under their destination; returns the spool bytes they will take (none if they do
        not fit in `room`: their rows are counted dropped)."""
        chunks = batch.get(dest)
        # What it adds to the spool: its rows, and a frame header if it starts the destination's frame (exact
        # unless frames() starts another frame: past FRAME_BYTES of CSV, or between CSV rows and packed records).
        size = sum(len(chunk) for chunk, _, _ in chunks_of_call) + (0 if chunks else FRAME.size)
        if size > room:
            COUNTERS.drop(tabular.SPOOL_FULL, rows, where=label)
            return 0
        if chunks is None:
            batch[dest] = chunks = []
        chunks.extend(chunks_of_call)
        return size

    def _date_path(self, ts: float) -> str:
        hour = int(ts // 3600)
        cached_hour, path = self._date_cache
        if cached_hour != hour:
            t = time.gmtime(hour * 3600)
            previous, path = path, f"{t.tm_year:04d}/{t.tm_mon:02d}/{t.tm_mday:02d}"
            if self.settings.boundary == "hour":
                path += f"/{t.tm_hour:02d}"
            self._date_cache = (hour, path)
            self._rolled = bool(previous) and path != previous
        return path

    def spool_bytes(self) -> int:
        """Undelivered bytes in this process's spools (a writer's: as the agent last recorded its progress)."""
        spool = self._spool
        if self.role == WRITER and spool is not None and time.monotonic() - self._measured_at >= MEASURE_SECONDS:
            self._measured_at = time.monotonic()
            spool.measure()
        return self._backlog()

    # -- uploader ----------------------------------------------------------------------------------------------

    def _uploader_loop(self) -> None:
        from collector.upload import BUSY, FAILED, Uploader

        uploader: Uploader | None = None
        next_scan = 0.0
        delay = 0.0
        busy = 0  # rounds in a row that found a lease held by another writer
        while True:
            if delay:
                self._uploader_wake.wait(delay)
            self._uploader_wake.clear()
            if self._uploader_stop:
                break
            try:
                if uploader is None:
                    uploader = Uploader(
                        self.settings.connection_string,
                        max_blocks=self.settings.max_blocks_per_blob,
                        on_delivered=_delivered,
                        on_rollover=_rolled,
                        request_timeout=self.settings.request_timeout,
                    )
                if time.monotonic() >= next_scan:
                    self._adopt_orphans()
                    # The agent looks every round: a new worker's rows should not wait for the next scan.
                    next_scan = time.monotonic() + (0 if self.role == AGENT else ORPHAN_SCAN_SECONDS)
                for spool in self._spools():
                    spool.refresh()
                outcomes = set()
                for (lease_id, *_), dests in self._groups().items():
                    outcome = uploader.deliver(dests, lease_id)
                    if outcome == FAILED:
                        COUNTERS.error(uploader.last_error)
                    outcomes.add(outcome)
                uploader.end_round()
                for spool in self._spools():
                    if not spool.own and (spool.gone or (not spool.live and not spool.has_work())):
                        self._retire(spool)
            except Exception as exc:  # bad connection string, disk trouble...: keep the thread alive
                COUNTERS.error(f"{type(exc).__name__}: {exc}")
                outcomes = {FAILED}
            self._rounds += 1
            busy = busy + 1 if BUSY in outcomes else 0
            more = any(d.has_work() for s in self._spools() for d in list(s.destinations.values()))
            if FAILED in outcomes:
                delay = min(MAX_BACKOFF, max(0.2, delay * 2)) if delay else 0.2
            elif BUSY in outcomes:
                # Another writer holds a lease, for one round or (keeping it, see collector.upload) a few seconds.
                delay = random.uniform(0.02, 0.1) * 2 ** min(busy - 1, 3)
            elif more and self._backlog() >= BIG_BACKLOG:
                delay = 0.001  # a round ran out of time with a full block or more waiting
            else:
                delay = self.settings.flush_interval  # collect a while: fewer, larger blocks
        if uploader is not None:
            uploader.close()

    def _groups(self) -> dict[tuple[str, str, str, bytes], list[Destination]]:
        """The rows waiting, by lease and target file: one append per file and round carries all of a file's rows
        (the agent's writers share its lease; a spool left by a process that delivered its own keeps that one's)."""
        groups: dict[tuple[str, str, str, bytes], list[Destination]] = {}
        for spool in self._spools():
            if spool.gone:
                continue  # nothing of it is left to deliver
            for dest in list(spool.destinations.values()):
                if dest.has_work():
                    key = (spool.lease_id, dest.container, dest.folder, dest.header)
                    groups.setdefault(key, []).append(dest)
        return groups

    def _backlog(self) -> int:
        return sum(s.bytes for s in self._spools())

    def _spools(self) -> list[Spool]:
        with self._spools_lock:
            return [s for s in [self._spool, *self._adopted] if s is not None]

    def _adopt_orphans(self) -> None:
        known = {s.path for s in self._spools()}
        for spool in Spool.scan(self.settings.spool_dir, known, agent=self.role == AGENT):
            spool.on_lost = _lost
            if spool.shared:
                spool.lease_id = self._agent_lease()
            with self._spools_lock:
                self._adopted.append(spool)
            if not spool.live:
                log.info("collector: delivering the rows left in %s by a process that stopped", spool.path)
                with COUNTERS.lock:
                    COUNTERS.spools_adopted += 1

    def _agent_lease(self) -> str:
        """The lease id of the agent of this spool folder: kept in the folder, so that the next agent holds the
        same lease (and settles the blocks this one left unconfirmed without waiting for it to expire)."""
        if not self._lease_id:
            path = self.settings.spool_dir / ".agent-lease"
            with contextlib.suppress(OSError, ValueError):
                self._lease_id = str(uuid.UUID(path.read_text().strip()))
            if not self._lease_id:
                self._lease_id = str(uuid.uuid4())
                path.write_text(self._lease_id)
        return self._lease_id

    def _retire(self, spool: Spool) -> None:
        with self._spools_lock:
            self._adopted.remove(spool)
        spool.remove()

    # -- flush and shutdown ------------------------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait until everything collected before the call is in blob storage; False on timeout."""
        if not self._started:
            return True
        deadline = time.monotonic() + timeout
        if not self._drain_to_spool(deadline):
            return False
        if self.role == AGENT and not self._next_round(deadline):
            return False
        targets = [(d, d.end()) for s in self._spools() for d in list(s.destinations.values())]
        if self.role == WRITER:
            # The agent delivers: it records its progress in each destination's state.json.
            while not all(_agent_is_past(d, end) for d, end in targets):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)
            return True
        self._uploader_wake.set()
        # min(): rows in a segment deleted by something else are lost (`_lost` cut it short), not waited for.
        while any(not d.spool.gone and (d.pending is not None or d.acked < min(end, d.end())) for d, end in targets):
            if time.monotonic() >= deadline or not _alive(self._uploader):
                return False
            time.sleep(0.005)
        return True

    def _next_round(self, deadline: float) -> bool:
        """Wait for an upload round that starts after this call: it picks up what the watched owners wrote."""
        target = self._rounds + 2
        while self._rounds < target:
            self._uploader_wake.set()
            if time.monotonic() >= deadline or not _alive(self._uploader):
                return False
            time.sleep(0.005)
        return True

    def _drain_to_spool(self, deadline: float) -> bool:
        # No lock: this also runs in a SIGTERM handler, which may have interrupted a caller holding _lock.
        target = self._submitted
        self._writer_wake.set()
        while self._processed < target:
            if time.monotonic() >= deadline or not _alive(self._writer):
                return False
            time.sleep(0.001)
        return True

    def spool_now(self, timeout: float = 5.0) -> bool:
        """Write what is queued in memory to the spool (fast, local); nothing is uploaded."""
        return not self._started or self._drain_to_spool(time.monotonic() + timeout)

    def shutdown(self, timeout: float) -> bool:
        """Flush for up to `timeout` seconds, then stop the threads; undelivered rows stay spooled."""
        self.closed = True
        if not self._started:
            return True
        deadline = time.monotonic() + timeout
        # Everything in memory goes to disk first, whatever the storage does.
        self._stopping = True
        self._writer_wake.set()
        if self._writer is not None:
            self._writer.join(max(0.5, timeout))
        if self.role == WRITER:
            # Everything is on disk: the agent delivers it, now or (once this process is gone) as the spool's heir.
            self._uploader_stop = True
            for spool in self._spools():
                spool.close()
            return not _alive(self._writer)
        delivered = self.flush(max(0.0, deadline - time.monotonic()))
        self._uploader_stop = True
        self._uploader_wake.set()
        if self._uploader is not None:
            self._uploader.join(max(0.1, deadline - time.monotonic()))
        if not _alive(self._uploader):
            for spool in self._spools():
                if spool.has_work():
                    spool.close()  # the next process adopts it
                else:
                    spool.remove()
        return delivered

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the parent's files without touching them."""
        self.closed = True
        for spool in self._spools():
            with contextlib.suppress(OSError):
                spool.close()

    def queue_rows(self) -> int:
        return max(0, self._queued_rows - self._taken_rows)


def cells(tail_values: tuple[str, ...] | None, suffix_values: tuple[str, ...] | None) -> tuple[str, ...]:
    """The text cells at the end of a call's rows: the values add_correlations() added to floats, then an inputs
    collector's own (correlation id, timestamp...)."""
    if tail_values is None:
        return suffix_values or ()
    return tail_values + suffix_values if suffix_values else tail_values


def suffix_of(cells: tuple[str, ...]) -> str:
    """The CSV of those cells, as it ends each row."""
    return "," + ",".join(map(tabular.quote, cells)) if cells else ""


def _thread(target: Any, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def _alive(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()


def header_of(sink: Sink, ncols: int, data_columns: list[str] | None, tail: tuple[str, ...]) -> bytes:
    """The header line of `sink`'s rows of `ncols` cells: with these column names (a DataFrame's), and ending
    in the `tail` columns that add_correlations() added."""
    key = (ncols, tuple(data_columns) if data_columns is not None else None, tail)
    header = sink.headers.get(key)
    if header is None:
        last = list(tail) if 0 < len(tail) < ncols else []
        names = tabular.column_names(ncols - len(last), sink.feature_names, data_columns) + last
        if sink.inputs:
            names += INPUT_COLUMNS
        header = sink.headers[key] = tabular.header_line(names)
    return header


def _delivered(rows: int, nbytes: int) -> None:
    with COUNTERS.lock:
        COUNTERS.rows_delivered += rows
        COUNTERS.bytes_delivered += nbytes
        COUNTERS.blocks_appended += 1


def _agent_is_past(dest: Destination, end: Position) -> bool:
    """For a writer whose rows the agent delivers: True once the agent has delivered the rows up to `end`, or all
    of them that are still on disk (spool files deleted by something else are lost, not waited for; the agent
    deletes a segment only once it has recorded delivery past it)."""
    if dest.spool.gone:
        return True
    delivered = dest.delivered_upto()
    for seg in range(end[0], delivered[0] - 1, -1):  # the last segment up to `end` that is on disk
        if dest.segment_exists(seg):
            return delivered >= (end if seg == end[0] else (seg, dest.size_of(seg)))
    return True


def _lost(nbytes: int) -> None:
    with COUNTERS.lock:
        COUNTERS.spool_bytes_lost += nbytes


def _rolled(name: str) -> None:
    with COUNTERS.lock:
        COUNTERS.parts_rolled += 1
    log.info("collector: rolling over to %s", name)


# -- the process's engine -------------------------------------------------------------------------------------

_engine: Engine | None = None
_engine_lock = threading.Lock()
_hooks_installed = False


def current(settings: Settings | None = None) -> Engine:
    """This process's engine, built from the environment on first use (or after a fork or reconfigure)."""
    global _engine
    engine = _engine
    if engine is not None and not engine.closed and engine.pid == os.getpid():
        return engine
    with _engine_lock:
        if _engine is None or _engine.closed or _engine.pid != os.getpid():
            from collector.config import from_environ

            _engine = Engine(settings or from_environ())
            _install_hooks(_engine.settings)
        return _engine


def serve_as_agent(settings: Settings) -> Engine:
    """Make this process a delivery agent: its engine uploads every spool in the folder (see collector.agent)."""
    global _engine
    with _engine_lock:
        if _engine is not None:
            raise RuntimeError("this process collects already: a delivery agent must be a process of its own")
        _engine = Engine(settings, role=AGENT)
    _engine.start()
    return _engine


def replace(settings: Settings | None, timeout: float) -> bool:
    """Shut the current engine down (flushing it) and build the next one from `settings` or the environment."""
    global _engine
    with _engine_lock:
        old, _engine = _engine, None
    delivered = old.shutdown(timeout) if old is not None and old.pid == os.getpid() else True
    current(settings)
    return delivered


def shutdown(timeout: float | None = None) -> bool:
    engine = _engine
    if engine is None or engine.pid != os.getpid():
        return True
    return engine.shutdown(engine.settings.shutdown_timeout if timeout is None else timeout)


def _atexit() -> None:
    with contextlib.suppress(Exception):
        shutdown()


def _install_hooks(settings: Settings) -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_atexit)
    if settings.uploading:
        install_sigterm_handler()


def install_sigterm_handler() -> bool:
    """Flush on SIGTERM, then hand the signal on to whatever handled it before. Main thread only.

    With no previous handler (the default action, which would kill the process before atexit runs), rows are
    delivered for up to the shutdown timeout and the process then dies of SIGTERM as it would have. With a
    Python handler (gunicorn's, say, which exits gracefully and so runs atexit), only the in-memory rows are
    written to the spool before that handler runs; atexit delivers them.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    if getattr(previous, "_collector_hook", False):
        return True

    def on_sigterm(signum: int, frame: Any) -> None:
        engine = _engine
        if callable(previous):
            if engine is not None and engine.pid == os.getpid():
                with contextlib.suppress(Exception):
                    engine.spool_now()
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        with contextlib.suppress(Exception):
            shutdown()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    on_sigterm._collector_hook = True  # type: ignore[attr-defined]
    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError):
        return False
    return True


def _after_fork_in_child() -> None:
    global _engine, _hooks_installed
    if _engine is not None:
        _engine.forget_after_fork()
    _engine = None
    # The parent's atexit registration is inherited; the SIGTERM handler too (it looks up the new engine).
    _hooks_installed = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
