"""Delivering spooled rows to append blobs, each row exactly once, with many writers and retries.

The file of one model, designation and day is an append blob, `<folder>/data.csv`, shared by every replica and
process that collects for it. An append block is atomic, and every block we append holds whole rows only, so rows
are never split or interleaved. The protocol for one file:

1. Create the blob if missing (`If-None-Match: *`; 409 means someone else did).
2. Take a 15 s lease on it with this spool's lease id (409 `LeaseAlreadyPresent`: another writer is busy; come back
   in a moment). While we hold the lease no one else can append, so whatever the blob holds past the length we read
   next was written by us.
3. Read its length L and committed block count C. An empty blob gets the header first, as block 1 at position 0.
   A blob that starts with another header (rows of another shape, from this collector or another process) takes
   none of these rows: they go to a file of their own, below.
4. Before each append, record in the spool the block's part, position L and spool range (`pending`). Then append
   it with `appendpos = L` and the lease. On success, record the new acked position (the row is now delivered).
5. After any failure whose outcome is unknown (a timeout, a reset connection, a 5xx, a crash of this process, a
   412 on the position), we must not append a second copy. The next attempt, after taking the lease again (the
   same lease id, even in the next process, which adopts the dead one's spool and its id), reads the blob:
   if it is at least L + n long and bytes [L, L+n) equal our block, the block is in and is acked; otherwise it is
   not, and the *same* block is sent again at the new length. Sending exactly the same bytes again matters: if
   the first request were still in flight and landed at L, the retry (also at L) is refused and the check finds it.
   (An append carries the blocks of several spools; if one of them is given up because its spool file was deleted,
   the others are sent again lower than they first were, and the check looks for them at both positions.)
6. The SDK's own retries are turned off (they would append a second copy); this module retries, with backoff.

A round usually finds the lease still held from the last one: an uploader that sees no other writer on a file
keeps its lease across rounds, for up to KEEP_SECONDS, and with it the blob's length (nobody else can have moved
it), so a round is one request, the append, instead of four (acquire, read the length, append, release). Then it
lets go, so that a writer waiting for the file gets in. A file where another writer shows up (a busy lease, or
the blob grew while we did not hold it) is delivered as above, lease taken and given back each round, for
CONTENDED_SECONDS. If the lease is lost all the same (a process stalled past LEASE_SECONDS), storage refuses the
next request with that lease id (412), and the file is taken again from step 2, which also settles the block.

Roll-over: Azure allows 50,000 committed blocks per append blob (409 `BlockCountExceedsLimit`); we roll over at
`AML_MODEL_DC_MAX_BLOCKS_PER_BLOB` (default 50,000, small in tests). The parts of a file are `data.csv`, then
`data_0001.csv`, `data_0002.csv`, ... in the same folder, each with one header row; one listing of
`<folder>/data` finds them all, in order. A writer that learns of a newer part (a full blob, or a listing when it
starts) moves on to it; a part is never written again once full.

Rows of several shapes: a collector's rows can have different column counts (a 1-D `predict()` result is one row of
as many cells as the request had inputs) or column names (DataFrames). Each shape has its own header, and every
file holds rows of the header it starts with only. The first shape to reach a folder gets `data.csv`; rows whose
header differs from data.csv's go to `data-<hash>.csv` (the first 8 hex digits of the header's SHA-256), with parts
`data-<hash>_0001.csv`, ...: every writer of that shape, in any process or replica, finds the same file. A writer
checks a file's header once per process (one read as long as the header), under the lease, before its first append there.

What is left: if this process stalls longer than the lease (15 s) between sending a block and checking it, and
another writer appends a block with byte-identical rows at exactly that position meanwhile, the check would take
theirs for ours and our copy would be lost. Inputs rows carry a unique correlation id, so for them it cannot
happen; for other designations it needs a stall past the lease plus identical content at the same offset.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable

from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobLeaseClient, BlobServiceClient, ContainerClient

from collector.config import AZURE_MAX_APPEND_BLOCK_BYTES
from collector.spool import Destination, Pending, Position

log = logging.getLogger("collector")

LEASE_SECONDS = 15
# Give the lease back and let other writers in after this long, even with more rows to send.
HOLD_SECONDS = 5.0
# Keep an uncontended lease across rounds for this long (well within LEASE_SECONDS, a round included).
KEEP_SECONDS = 5.0
# After another writer showed up on a file, take and give back its lease every round for this long.
CONTENDED_SECONDS = 600.0

FIRST_FILE = "data"
_PART = re.compile(r"^(data(?:-[0-9a-f]{8})?)(?:_(\d{4,}))?\.csv$")

DONE, BUSY, FAILED = "done", "busy", "failed"


def part_name(folder: str, part: int, file: str = FIRST_FILE) -> str:
    """`data.csv` for part 0, then `data_0001.csv`, `data_0002.csv`, ... (`data-<hash>.csv`, ... likewise)."""
    return f"{folder}/{file}.csv" if part == 0 else f"{folder}/{file}_{part:04d}.csv"


def part_of(name: str, file: str = FIRST_FILE) -> int | None:
    """The part number of a blob of `file`; None for any other blob."""
    m = _PART.match(name.rsplit("/", 1)[-1])
    if m is None or m.group(1) != file:
        return None
    return int(m.group(2)) if m.group(2) else 0


def file_for(header: bytes) -> str:
    """The file for rows whose header is not data.csv's: named after the header, so that every writer of rows
    with that header, in any process or replica, finds the same one."""
    return f"{FIRST_FILE}-{hashlib.sha256(header).hexdigest()[:8]}"


class _Unknown(Exception):
    """The outcome of a request is unknown, or storage cannot be reached: retry later."""


class _OtherHeader(Exception):
    """The blob starts with another header than the rows to append: they belong in another file."""


class _Held:
    """A lease this uploader holds on one blob, and what it knows of the blob under it."""

    __slots__ = ("blocks", "client", "length", "since")

    def __init__(self, client: BlobLeaseClient) -> None:
        self.client = client
        self.since = time.monotonic()
        self.length: int | None = None  # None: unknown (not read yet, or an append's outcome is unknown)
        self.blocks = 0


class Uploader:
    """Appends spooled blocks to blob storage (used by one uploader thread)."""

    def __init__(
        self,
        connection_string: str,
        *,
        max_blocks: int,
        on_delivered: Callable[[int, int], None],
        on_rollover: Callable[[str], None] = lambda name: None,
        request_timeout: float = 10.0,
    ) -> None:
        self.service = BlobServiceClient.from_connection_string(
            connection_string,
            retry_total=0,  # the SDK's retries could append a block twice; we retry ourselves
            connection_timeout=min(5.0, request_timeout),
            read_timeout=request_timeout,
        )
        self.max_blocks = max_blocks
        self.on_delivered = on_delivered
        self.on_rollover = on_rollover
        self._containers: dict[str, ContainerClient] = {}
        self._existing: set[tuple[str, str]] = set()
        self._held: dict[tuple[str, str], _Held] = {}
        self._left_at: dict[tuple[str, str], int] = {}  # a blob's length when we last let go of its lease
        self._contended: dict[tuple[str, str], float] = {}  # blob -> until when (monotonic)
        self._checked: set[tuple[str, str, bytes]] = set()  # (blob, header): the blob starts with that header
        self._moved: set[tuple[str, str, bytes]] = set()  # (container, folder, header): not data.csv's header
        self.last_error = ""

    def close(self) -> None:
        for key in list(self._held):
            self._let_go(key)
        self.service.close()

    def end_round(self) -> None:
        """Let go of the leases kept long enough, rows waiting or not: someone else may be waiting for them."""
        for key, held in list(self._held.items()):
            if time.monotonic() - held.since >= KEEP_SECONDS:
                self._let_go(key)

    def _container(self, name: str) -> ContainerClient:
        client = self._containers.get(name)
        if client is None:
            client = self.service.get_container_client(name)
            try:
                client.create_container()
            except ResourceExistsError:
                pass
            except HttpResponseError as exc:
                raise _Unknown(f"cannot create container {name}: {_code(exc)}") from exc
            self._containers[name] = client
        return client

    def deliver(self, dests: list[Destination], lease_id: str, budget: float = HOLD_SECONDS) -> str:
        """Send what `dests` have spooled, for up to `budget` seconds: DONE, BUSY (lease held elsewhere) or FAILED.

        `dests` are one file's rows in one or several spools (same container, folder and header: the delivery
        agent groups its writers' spools so that each round appends one block per file, not one per process).
        Raises nothing: FAILED means retry later, with the reason in `self.last_error`.
        """
        self.last_error = ""
        try:
            return self._deliver(dests, lease_id, time.monotonic() + budget)
        except (_Unknown, AzureError, OSError) as exc:
            self.last_error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            return FAILED

    def _deliver(self, dests: list[Destination], lease_id: str, deadline: float) -> str:
        first = dests[0]
        target, file = (first.container, first.folder, first.header), file_for(first.header)
        if target in self._moved:
            _move(dests, file)  # a new spool's rows, say: not data.csv's shape either
        try:
            return self._deliver_parts(dests, lease_id, deadline)
        except _OtherHeader:
            # Rows of another shape than data.csv's (a 1-D prediction of another length, other column names): they
            # go to a file of their own, never under a header that does not name them.
            self._moved.add(target)
        if _move(dests, file):
            try:
                return self._deliver_parts(dests, lease_id, deadline)
            except _OtherHeader:
                pass
        # Only if a blob was replaced under a pending block, or two headers share a hash: say so, keep the rows.
        raise _Unknown(f"a file in {first.folder} has another header than its rows")

    def _deliver_parts(self, dests: list[Destination], lease_id: str, deadline: float) -> str:
        first = dests[0]
        container = self._container(first.container)
        for dest in dests:
            dest.drop_lost_pending()
            if dest.pending is not None and dest.part != dest.pending.part:
                dest.part = dest.pending.part  # settle the pending block in its own part first
        latest: dict[str, int] = {}
        for dest in dests:
            if dest.part is None:
                if dest.file not in latest:
                    latest[dest.file] = self._latest_part(container, first.folder, dest.file)
                dest.part = latest[dest.file]
        # Spools can be at different parts (one that rolled over while another was spooling): each in turn.
        for file, part in sorted({(d.file, d.part or 0) for d in dests if d.has_work()}):
            group = [d for d in dests if (d.file, d.part or 0) == (file, part) and d.has_work()]
            while group:
                blob = container.get_blob_client(part_name(first.folder, part, file))
                status = self._with_lease(blob, group, lease_id, deadline)
                if status != "rolled":
                    if status != DONE:
                        return status
                    break
                part += 1
                group = [d for d in group if d.has_work()]  # the next part is created when there are rows
        return DONE

    def _latest_part(self, container: ContainerClient, folder: str, file: str) -> int:
        parts = [part_of(b, file) for b in container.list_blob_names(name_starts_with=f"{folder}/{file}")]
        return max((p for p in parts if p is not None), default=0)

    def _with_lease(self, blob: BlobClient, group: list[Destination], lease_id: str, deadline: float) -> str:
        key = (blob.container_name, blob.blob_name)
        held = self._take_lease(blob, key, lease_id)
        if held is None:
            return BUSY
        try:
            status = self._append_all(blob, group, lease_id, held, deadline)
        except BaseException:
            self._let_go(key)  # a lost lease too (a 412 Lease...): taken again, and the block settled, next round
            raise
        if self._contended.get(key, 0.0) > time.monotonic():
            self._let_go(key)
        return status

    def _take_lease(self, blob: BlobClient, key: tuple[str, str], lease_id: str) -> _Held | None:
        """The lease on `blob` under `lease_id`: still held from an earlier round, or taken now (None: busy)."""
        held = self._held.get(key)
        if held is not None:
            if held.client.id == lease_id and time.monotonic() - held.since < KEEP_SECONDS:
                return held
            self._let_go(key)  # kept long enough (someone may be waiting), or another spool's lease id
        if key not in self._existing:
            try:
                blob.create_append_blob(if_none_match="*")
            except ResourceExistsError:
                pass
            except HttpResponseError as exc:
                if exc.status_code not in (409, 412):
                    raise _Unknown(f"create {blob.blob_name}: {_code(exc)}") from exc
            self._existing.add(key)
        lease = BlobLeaseClient(blob, lease_id=lease_id)
        try:
            lease.acquire(lease_duration=LEASE_SECONDS)
        except ResourceExistsError:
            self._contended[key] = time.monotonic() + CONTENDED_SECONDS
            return None
        except ResourceNotFoundError:
            self._existing.discard(key)  # deleted under us: create it again next time, and check its header
            self._checked = {c for c in self._checked if c[:2] != key}
            raise _Unknown(f"{blob.blob_name} disappeared") from None
        held = self._held[key] = _Held(lease)
        return held

    def _let_go(self, key: tuple[str, str]) -> None:
        held = self._held.pop(key, None)
        if held is None:
            return
        if held.length is not None:
            self._left_at[key] = held.length
        else:
            self._left_at.pop(key, None)
        with contextlib.suppress(AzureError):  # if not, it expires by itself
            held.client.release()

    def _append_all(
        self, blob: BlobClient, group: list[Destination], lease_id: str, held: _Held, deadline: float
    ) -> str:
        if held.length is None:
            length, blocks = self._size(blob, lease_id)
            key = (blob.container_name, blob.blob_name)
            if key in self._left_at and self._left_at[key] != length:
                self._contended[key] = time.monotonic() + CONTENDED_SECONDS  # it grew while we did not hold it
        else:
            length, blocks = held.length, held.blocks
        held.length = None  # unknown until this round ends without doubt
        header = group[0].header
        checked = (blob.container_name, blob.blob_name, header)
        if length == 0:
            length, blocks = self._append_header(blob, header, lease_id)
        foreign = False
        if checked not in self._checked:
            # Once per blob and process: another writer, with rows of another shape, may have started the file.
            foreign = blob.download_blob(offset=0, length=len(header), lease=lease_id).readall() != header
            if not foreign:
                self._checked.add(checked)
        self._settle(blob, group, lease_id, length)
        if foreign:
            # A block sent here before the file was known to have another header (by a version that did not check,
            # or before the blob was replaced) is finished here, as step 5 says: moving it could write it twice.
            unsettled = [d for d in group if d.pending is not None]
            if unsettled:
                status = self._append_blocks(blob, unsettled, lease_id, length, blocks, deadline, pending_only=True)
                if not isinstance(status, tuple) or any(d.pending is not None for d in unsettled):
                    raise _Unknown(f"{blob.blob_name}: a block sent before is not settled yet")
            raise _OtherHeader
        status = self._append_blocks(blob, group, lease_id, length, blocks, deadline)
        if isinstance(status, tuple):
            held.length, held.blocks = status
            return DONE
        return status

    def _append_blocks(
        self,
        blob: BlobClient,
        group: list[Destination],
        lease_id: str,
        length: int,
        blocks: int,
        deadline: float,
        pending_only: bool = False,
    ) -> str | tuple[int, int]:
        """Append the group's rows from `length` on (only the pending blocks, if `pending_only`): the blob's new
        length and block count when all went well."""
        stops = [d.end() for d in group]  # this round sends what is spooled now, in blocks as large as can be
        while time.monotonic() < deadline:
            pending = [d for d in group if d.pending is not None]
            if pending_only and not pending:
                return length, blocks
            # A block still pending is resent to its own part first, even past our (soft) limit: moving it to
            # the next part while the first request might still land would write it twice.
            if not pending and blocks >= self.max_blocks:
                return self._roll(group)
            parts = self._resend(pending, length) if pending else self._next_parts(group, stops, length)
            if not parts:
                return length, blocks
            data = b"".join(chunk for _, chunk, _ in parts)
            try:
                result = blob.append_block(data, appendpos_condition=length, lease=lease_id)
            except HttpResponseError as exc:
                code = _code(exc)
                if code == "BlockCountExceedsLimit":
                    for dest, _, _ in parts:
                        dest.set_pending(None)  # refused: nothing was written
                    return self._roll(group)
                if code == "AppendPositionConditionNotMet":
                    # Under our lease only our own earlier attempt can have moved the end: settle, then go on.
                    before = length
                    length, blocks = self._size(blob, lease_id)
                    self._settle(blob, group, lease_id, length)
                    if length == before:
                        raise _Unknown(f"append to {blob.blob_name}: position {length} refused twice") from exc
                    continue
                raise _Unknown(f"append to {blob.blob_name}: {code}") from exc
            except AzureError as exc:
                raise _Unknown(f"append to {blob.blob_name}: {type(exc).__name__}") from exc
            for dest, chunk, rows in parts:
                self._acked(dest, rows, len(chunk))
            length += len(data)
            committed = result.get("blob_committed_block_count")
            blocks = committed if isinstance(committed, int) else blocks + 1
        return length, blocks

    def _next_parts(
        self, group: list[Destination], stops: list[Position], length: int
    ) -> list[tuple[Destination, bytes, int]]:
        """The next block: each spool's next whole frames in turn, up to Azure's block size, each recorded as
        pending at its own position in the block *before* the block is sent."""
        parts: list[tuple[Destination, bytes, int]] = []
        pos = length
        for dest, stop in zip(group, stops, strict=True):
            room = AZURE_MAX_APPEND_BLOCK_BYTES - (pos - length)
            if room <= 0:
                break
            block = dest.next_block(room, stop)
            if block is None:
                continue
            data, rows, start, end = block
            if parts and len(data) > room:  # a frame larger than the room left: first in the next block
                continue
            dest.set_pending(Pending(dest.part or 0, pos, start, end, len(data), rows))
            parts.append((dest, data, rows))
            pos += len(data)
        return parts

    def _resend(self, pending: list[Destination], length: int) -> list[tuple[Destination, bytes, int]]:
        """The unconfirmed block again, byte for byte, at the current end (see step 5 of the protocol)."""
        pending.sort(key=lambda d: d.pending.pos if d.pending else 0)
        parts = []
        pos = length
        for dest in pending:
            p = dest.pending
            assert p is not None
            data, rows = dest.read_range(p.start, p.end)
            parts.append((dest, data, rows))
            if p.pos != pos:
                # Storage is past the old position, so that the first request can no longer land there; or (a lost
                # block before it given up) short of it, where the first request, still in flight, may yet land:
                # then it is looked for there too.
                earlier = tuple(sorted({x for x in (p.pos, *p.earlier) if x > pos}))
                dest.set_pending(Pending(p.part, pos, p.start, p.end, p.length, p.rows, earlier))
            pos += p.length
        return parts

    def _settle(self, blob: BlobClient, group: list[Destination], lease_id: str, length: int) -> None:
        """For each pending block: ack it if the blob has it, keep it (to send again) if not."""
        for dest in group:
            p = dest.pending
            if p is None:
                continue
            positions = [pos for pos in (p.pos, *p.earlier) if length >= pos + p.length]
            if not positions:
                continue
            data, rows = dest.read_range(p.start, p.end)
            for pos in positions:
                if blob.download_blob(offset=pos, length=p.length, lease=lease_id).readall() == data:
                    self._acked(dest, rows, len(data))
                    break

    def _append_header(self, blob: BlobClient, header: bytes, lease_id: str) -> tuple[int, int]:
        try:
            result = blob.append_block(header, appendpos_condition=0, lease=lease_id)
        except HttpResponseError as exc:
            if _code(exc) != "AppendPositionConditionNotMet":
                raise _Unknown(f"header of {blob.blob_name}: {_code(exc)}") from exc
            return self._size(blob, lease_id)  # an earlier attempt under our lease wrote a header: check it
        self._checked.add((blob.container_name, blob.blob_name, header))
        committed = result.get("blob_committed_block_count")
        return len(header), committed if isinstance(committed, int) else 1

    @staticmethod
    def _size(blob: BlobClient, lease_id: str) -> tuple[int, int]:
        props = blob.get_blob_properties(lease=lease_id)
        return props.size, props.append_blob_committed_block_count or 0

    def _roll(self, group: list[Destination]) -> str:
        for dest in group:
            dest.part = (dest.part or 0) + 1
            dest.set_pending(dest.pending)  # persist the part
        self.on_rollover(part_name(group[0].folder, group[0].part or 0, group[0].file))
        return "rolled"

    def _acked(self, dest: Destination, rows: int, nbytes: int) -> None:
        p = dest.pending
        assert p is not None
        self.on_delivered(rows, nbytes)  # first: flush() returns as soon as it sees the ack
        dest.ack(p.end, rows, p.end[1] - p.start[1])


def _move(dests: list[Destination], file: str) -> bool:
    """Send the rows of `dests` that have no block pending to `file` from now on; whether any moved."""
    moved = [d for d in dests if d.pending is None and d.file != file]
    for dest in moved:
        dest.move_to(file)
    return bool(moved)


def _code(exc: HttpResponseError) -> str:
    code = getattr(exc, "error_code", None)  # set by the storage SDK on its errors
    return str(getattr(code, "value", code) or exc.status_code)
