"""The local spool: rows wait on disk between `collect()` and blob storage.

Layout under the spool folder (AML_MODEL_DC_SPOOL_DIR), which several processes may share:

    <owner>/                 one per process that collected: "<host>-<pid>-<random>"
      lock                   flock()ed by the owner for its whole life; the kernel drops it when the owner dies
      owner.json             {"lease_id": ..., "shared": bool}: the blob lease id its rows are appended under, and
                             whether a delivery agent delivers them (AML_MODEL_DC_DELIVERY=agent)
      <destination>/         one per target file (container, folder, header): a hash of the three
        destination.json     {"container", "folder", "header"}
        00000001.seg ...     frames, appended in order: >III (payload bytes, rows, crc32) then whole CSV rows, or
                             packed records (collector.tabular.pack) when the row count has its top bit set
        state.json           {"acked": [segment, offset], "pending": {...} | null, "file": "data", "part": n}

A process creates its owner folder under a hidden name, locks it, then renames it into place, so a scan never
mistakes a folder being created for an orphan. Any process that starts (and every uploader every 30 s) scans
the others: a folder whose lock it can take belongs to a dead process, so it adopts it (keeping the lock, so no
one else does), delivers its rows under the dead owner's lease id, and removes it when empty.

A shared spool's owner only writes frames; the delivery agent (`collector.agent`, one per spool folder) reads them
while the owner is alive ("watched": the agent re-reads the folder each round and never takes what a frame still
being written has put on disk so far), writes state.json, deletes delivered segments, and takes the spool over
when its owner dies. Processes that deliver their own rows leave shared spools alone, alive or dead.

`acked` is how far the blob already has the rows. `pending` records the block being appended (part, position,
spool range) *before* the request goes out, so that after any failure, in this process or the next one, the
uploader can find out whether that block is in the blob (see `collector.upload`). state.json is replaced
atomically (write, then rename), so a kill leaves the old or the new state, never a mix. A frame cut short by a
crash (only possible on power loss: frames go out in one write) fails its length or crc check and ends the segment;
a whole frame whose packed records cannot be read is skipped alone. Either way the bytes are counted lost, once.
Nothing is fsynced: a process kill loses nothing, a power cut may lose or repeat the last moments.

A segment deleted by something else (an operator, a cleaner of old temporary files) loses its undelivered rows, and
only those: the uploader logs it, counts the bytes (`spool_bytes_lost` in collector.stats()) and goes on with the
next segment. Once a second the writer checks its own files: it starts a new segment for an open one that was deleted
(`reopen_deleted`), makes again a deleted lock, owner.json or destination folder (`mend`), and goes on in a new folder
under the same lease id if its whole folder was deleted (`deleted`). Every owner holds a shared flock() on the spool
folder itself for its whole life: systemd-tmpfiles, which ages out files under /tmp (the default spool's home) that
were not modified for days, such as `lock` and `owner.json`, leaves a locked folder alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import struct
import threading
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from collector import tabular

log = logging.getLogger("collector")

FRAME = struct.Struct(">III")
# Set in a frame's row count: its payload is packed records (collector.tabular.pack), which the reader writes as CSV.
PACKED = 1 << 31
# The spool writer puts the rows of many collect() calls in one frame, up to this size (a block is at most 4 MiB).
FRAME_BYTES = 1024 * 1024
SEGMENT_BYTES = 8 * 1024 * 1024
# Files the spool writer keeps open at once. Each destination (a day's file of one shape of rows) has a segment open
# for writing; a service whose predictions come in hundreds of widths would otherwise hold hundreds of descriptors,
# and run its process (its sockets, the script's own files) into the open-file limit. Past this many, the least
# recently written is closed and opened again when it next gets rows.
WRITERS_OPEN = 32

Position = tuple[int, int]  # (segment number, byte offset)


class Unframed(NamedTuple):
    """What `Destination._unframe` makes of the frames at the start of some bytes."""

    data: bytes  # the CSV of the frames, joined
    rows: int
    used: int  # bytes of whole frames read
    damaged: bool  # a frame failed its crc check: nothing after it can be trusted
    # (offset, bytes) of whole frames, crc right, whose packed records cannot be read (a version of the collector
    # that writes records this one does not know): to skip, their rows lost. Only ever with no data: a block never
    # spans one.
    unreadable: list[tuple[int, int]]


@dataclass
class Pending:
    """A block whose append was sent but not confirmed."""

    part: int
    pos: int
    start: Position
    end: Position
    length: int
    rows: int
    # Other positions where the block may have landed: where it was sent before, when it is sent again at a lower
    # one (a lost block sent before it in the same append was given up, see Destination.drop_lost_pending).
    earlier: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "pos": self.pos,
            "start": list(self.start),
            "end": list(self.end),
            "length": self.length,
            "rows": self.rows,
            "earlier": list(self.earlier),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Pending:
        start, end = d["start"], d["end"]
        earlier = tuple(int(pos) for pos in d.get("earlier", ()))
        return cls(d["part"], d["pos"], (start[0], start[1]), (end[0], end[1]), d["length"], d["rows"], earlier)


class Destination:
    """The spooled rows for one target file, and how far they have been delivered."""

    def __init__(self, spool: Spool, path: Path, container: str, folder: str, header: bytes) -> None:
        self.spool = spool
        self.path = path
        self.container = container
        self.folder = folder
        self.header = header
        self.sizes: dict[int, int] = {}  # segment -> bytes written (complete frames only)
        self.acked: Position = (1, 0)
        self.pending: Pending | None = None
        # The target file: its name without the part ("data", or "data-<hash>" where data.csv has another header,
        # see collector.upload), and its part (None: not known yet, the latest one there is).
        self.file = "data"
        self.part: int | None = None
        self._fd: int | None = None  # writer's open segment
        self._wseg = 0
        self._gone: set[int] = set()  # segments found deleted (by something else), logged once each
        # Segments cut short at a damaged frame: segment -> (where, the size it had then). A watched spool's sizes
        # are read from disk again each round; these keep the cut, and count what its writer adds after it once.
        self._cuts: dict[int, tuple[int, int]] = {}
        self._unreadable_to: Position = (0, 0)  # unreadable frames before this are counted and logged

    # -- writer side -------------------------------------------------------------------------------------------

    def write(self, payload: bytes) -> None:
        """Append whole frames to the current segment (writer thread only)."""
        with self.spool.lock:
            if self._fd is None or self.sizes.get(self._wseg, 0) >= SEGMENT_BYTES:
                self._open_segment()
            fd, seg = self._fd, self._wseg
            assert fd is not None  # _open_segment() opened it or raised
            self.spool.written(self)
        view = memoryview(payload)
        written = 0
        try:
            while written < len(payload):
                written += os.write(fd, view[written:])
        except OSError:
            # Take back a partial write (a full disk, say): a segment holds whole frames only.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.sizes[seg])
            raise
        # Only now may the uploader read these bytes. (Both counts at once: one found lost counts them both.)
        with self.spool.lock:
            self.sizes[seg] += len(payload)
            self.spool.bytes += len(payload)

    def _open_segment(self) -> None:
        """Open the segment to write to (under the spool's lock): the last one again if it has room, else a new one.
        The last segment is never deleted while its owner lives (the uploader moves past a segment only once a
        later one exists), so appending to it again is safe; if it is gone all the same, a new one starts."""
        if self._fd is None:
            self.spool.make_room(self)
            if self.sizes.get(self._wseg, SEGMENT_BYTES) < SEGMENT_BYTES:
                with contextlib.suppress(FileNotFoundError):
                    self._fd = self.spool.open_file(self._segment_path(self._wseg), os.O_WRONLY | os.O_APPEND)
                    return
        seg = max(self.sizes) + 1 if self.sizes else self.acked[0]
        fd = self.spool.open_file(self._segment_path(seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._wseg = fd, seg
        self.sizes[seg] = 0

    def let_go(self) -> int | None:
        """Forget the open segment (under the spool's lock) and return its descriptor for the caller to close."""
        fd, self._fd = self._fd, None
        self.spool.writing.pop(self, None)
        return fd

    def close_writer(self) -> None:
        """Close the segment being written (writer thread only); a later write() opens it again."""
        with self.spool.lock:
            fd = self.let_go()
        if fd is not None:
            os.close(fd)

    def end(self) -> Position:
        with self.spool.lock:
            if not self.sizes:
                return self.acked
            seg = max(self.sizes)
            return (seg, self.sizes[seg])

    # -- uploader side -----------------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return self.pending is not None or self.acked < self.end()

    def backlog(self) -> int:
        """Undelivered bytes, frames included."""
        with self.spool.lock:
            return _undelivered(self.sizes, self.acked)

    def refresh_sizes(self) -> None:
        """Read the segments' sizes from disk (the delivery agent, for a spool that its owner still writes)."""
        sizes = self._sizes_on_disk(self.acked[0])
        late = 0
        for seg, (cut, seen) in list(self._cuts.items()):
            if seg < self.acked[0]:
                del self._cuts[seg]
            elif seg in sizes:
                if sizes[seg] > seen:
                    late += sizes[seg] - seen
                    self._cuts[seg] = (cut, sizes[seg])
                sizes[seg] = min(cut, sizes[seg])
        with self.spool.lock:
            self.sizes = sizes
        if late:
            self.spool.on_lost(late)

    def _sizes_on_disk(self, first: int) -> dict[int, int]:
        """The sizes of the segment files numbered `first` and later."""
        # List first, then stat: the owner finishes a segment before it creates the next one, so a segment seen
        # with a later one beside it is complete when it is measured.
        segments = sorted(int(path.stem) for path in self.path.glob("*.seg"))
        sizes = {}
        for seg in segments:
            if seg >= first:
                with contextlib.suppress(FileNotFoundError):
                    sizes[seg] = os.stat(self._segment_path(seg)).st_size
        return sizes

    def delivered_upto(self) -> Position:
        """How far the rows are delivered, as the delivering process last recorded it (read from state.json)."""
        try:
            acked = json.loads((self.path / "state.json").read_text())["acked"]
            return (int(acked[0]), int(acked[1]))
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return self.acked

    def undelivered_on_disk(self) -> int:
        """Undelivered bytes, from the files (for an owner whose rows another process delivers)."""
        delivered = self.delivered_upto()
        return _undelivered(self._sizes_on_disk(delivered[0]), delivered)

    def read_range(self, start: Position, end: Position) -> tuple[bytes, int]:
        """The CSV bytes and row count of the frames in [start, end) (one segment)."""
        seg, off = start
        read = self._unframe(self._pread(seg, off, end[1] - off))
        return read.data, read.rows

    def next_block(self, max_bytes: int, stop: Position | None = None) -> tuple[bytes, int, Position, Position] | None:
        """The next undelivered whole frames before `stop`, at most max_bytes of CSV: (bytes, rows, start, end)."""
        if self.pending is not None:
            p = self.pending
            data, rows = self.read_range(p.start, p.end)
            return data, rows, p.start, p.end
        while True:
            seg, off = self.acked
            with self.spool.lock:
                size = self.sizes.get(seg, 0)
                later = [s for s in self.sizes if s > seg]
            if stop is not None:
                if (seg, off) >= stop:
                    return None
                if stop[0] == seg:
                    size = min(size, stop[1])
                    later = []
            if seg not in self.sizes and later and seg not in self._gone:
                # Read from disk (a watched or adopted spool): a later segment exists, so this one was written, and
                # only something else deletes a segment that is not delivered yet.
                self._lost(seg, off, 0)
            if off < size:
                # Packed float64 takes up to twice its CSV (1.0 is 8 bytes): read enough for a full block.
                window = min(size - off, 2 * max_bytes + FRAME.size * 256)
                try:
                    raw = self._pread(seg, off, window)
                except FileNotFoundError:
                    self._lost(seg, off, size)
                    if not later:
                        return None  # the writer starts a new segment (Spool.reopen_deleted); then we go on there
                    self._advance(min(later))
                    continue
                read = self._unframe(raw, max_bytes)
                if not read.used and not read.damaged and len(raw) >= FRAME.size:
                    # The first frame is longer than the window (the room left in a block was small): read it
                    # whole if it is on disk; the caller sends it first in a block of its own.
                    whole = FRAME.size + FRAME.unpack_from(raw)[0]
                    if whole <= size - off:
                        read = self._unframe(self._pread(seg, off, whole))
                self._count_unreadable(seg, off, read.unreadable)
                if read.used and not read.data:  # unreadable frames only: nothing to send, go past them
                    self.ack((seg, off + read.used), 0, read.used)
                    continue
                if read.used:
                    return read.data, read.rows, (seg, off), (seg, off + read.used)
                damaged = read.damaged
                if self.spool.live and not damaged and not later:
                    return None  # its owner is still writing this frame
                # Nothing whole at `off`: only a spool left by a crash can end in a damaged frame.
                log.error(
                    "collector: spool segment %s of %s is damaged at offset %d; skipping its rest", seg, self.path, off
                )
                self._cut_short(seg, off, size)
                if not damaged and not later:
                    return None
            if not later:
                return None
            self._advance(min(later))

    def _count_unreadable(self, seg: int, off: int, unreadable: list[tuple[int, int]]) -> None:
        """Count and log the unreadable frames that `next_block` found, each once (it may read a frame again: one
        left for the next block, say)."""
        for at, nbytes in unreadable:
            if (seg, off + at) < self._unreadable_to:
                continue
            self._unreadable_to = (seg, off + at + nbytes)
            log.error(
                "collector: spool segment %s of %s holds packed records this version cannot read at offset %d "
                "(%d bytes); their rows are lost, the rows after them are delivered",
                seg,
                self.path,
                off + at,
                nbytes,
            )
            self.spool.on_lost(nbytes)

    @staticmethod
    def _unframe(raw: bytes, max_bytes: int | None = None) -> Unframed:
        """The frames at the start of raw: at most max_bytes of CSV unless the first frame alone has more."""
        parts: list[bytes] = []
        unreadable: list[tuple[int, int]] = []
        rows = total = i = 0
        while i + FRAME.size <= len(raw):
            length, n, crc = FRAME.unpack_from(raw, i)
            body = raw[i + FRAME.size : i + FRAME.size + length]
            if len(body) < length:
                break
            if zlib.crc32(body) != crc:
                return Unframed(b"".join(parts), rows, i, True, unreadable)
            # Unreadable frames come alone, never in a block with rows: a block sent again must be the same bytes,
            # and an agent of a later version, which can read them, takes over pending blocks.
            if n & PACKED:
                try:
                    body = tabular.unpack(body)
                except ValueError:
                    if parts:
                        break
                    unreadable.append((i, FRAME.size + length))
                    i += FRAME.size + length
                    continue
                n &= ~PACKED
            if unreadable:
                break
            if max_bytes is not None and parts and total + len(body) > max_bytes:
                break
            parts.append(body)
            total += len(body)
            rows += n
            i += FRAME.size + length
        return Unframed(b"".join(parts), rows, i, False, unreadable)

    def move_to(self, file: str) -> None:
        """Deliver what is left to another file, from its latest part (only with no block pending)."""
        assert self.pending is None
        self.file, self.part = file, None
        self._save_state()

    def set_pending(self, pending: Pending | None) -> None:
        self.pending = pending
        self._save_state()

    def ack(self, end: Position, rows: int, nbytes: int) -> None:
        """The blob has the rows up to `end`: move past them and forget the pending block."""
        self.acked = end
        self.pending = None
        self._save_state()
        self.spool.release_bytes(nbytes)
        with self.spool.lock:
            done_segments = [s for s in self.sizes if s < end[0]]
        for seg in done_segments:
            self._drop_segment(seg)

    def drop_lost_pending(self) -> None:
        """Forget the pending block if its segment was deleted: it can be neither checked nor sent again. Whether
        or not its first attempt landed, its rows are not sent twice."""
        p = self.pending
        if p is None:
            return
        seg, off = p.start
        if self.segment_exists(seg):
            return
        self._lost(seg, off, p.end[1])  # the block and all after it in the segment
        self.acked, self.pending = (seg, off), None  # where the segment now ends: next_block moves past it
        self._save_state()

    def _cut_short(self, seg: int, off: int, size: int) -> None:
        """What was spooled in segment `seg` from `off` on (`size` bytes, or more if the writer has added to it
        meanwhile) cannot be delivered: end the segment at `off`, and count the rest as lost."""
        with self.spool.lock:
            size = max(size, self.sizes.get(seg, size))
            if seg in self.sizes:
                self.sizes[seg] = off
        self._cuts[seg] = (off, size)
        nbytes = max(0, size - off)
        self.spool.release_bytes(nbytes)
        self.spool.on_lost(nbytes)

    def _lost(self, seg: int, off: int, size: int) -> None:
        """Segment `seg` is gone from disk (deleted by something else): its rows from `off` on are lost."""
        self._cut_short(seg, off, size)
        if seg not in self._gone:
            self._gone.add(seg)
            log.error(
                "collector: spool segment %s of %s was deleted before its rows were delivered (from offset %d on); "
                "they are lost, the rows after them are delivered. Nothing but the collector may delete spool files.",
                seg,
                self.path,
                off,
            )

    def _advance(self, seg: int) -> None:
        self.acked = (seg, 0)
        self._save_state()  # first: a segment missing at `acked` means one deleted by something else
        with self.spool.lock:  # the writer thread may be adding a segment
            done_segments = [s for s in self.sizes if s < seg]
        for old in done_segments:
            self._drop_segment(old)

    def _drop_segment(self, seg: int) -> None:
        with self.spool.lock:
            self.sizes.pop(seg, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._segment_path(seg))

    def _pread(self, seg: int, off: int, n: int) -> bytes:
        # Opened for each read: an open and a close (microseconds) per block of up to 4 MiB that then takes an HTTP
        # request, and the uploader holds no descriptor per destination, however many there are.
        fd = os.open(self._segment_path(seg), os.O_RDONLY)
        try:
            return os.pread(fd, n, off)
        finally:
            os.close(fd)

    def make_folder(self, state: bool = True) -> None:
        """Its folder, with state.json (unless `state` is False) and, last, destination.json: a folder with
        destination.json is complete (the delivery agent loads it from then on)."""
        self.path.mkdir(exist_ok=True)
        if state:
            self._save_state()
        meta = {"container": self.container, "folder": self.folder, "header": self.header.decode("utf-8")}
        (self.path / "destination.json").write_text(json.dumps(meta))

    def size_of(self, seg: int) -> int:
        with self.spool.lock:
            return self.sizes.get(seg, 0)

    def segment_exists(self, seg: int) -> bool:
        return not _known_missing(self._segment_path(seg))

    def _segment_path(self, seg: int) -> Path:
        return self.path / f"{seg:08d}.seg"

    def _save_state(self) -> None:
        state = {
            "acked": list(self.acked),
            "pending": self.pending.to_json() if self.pending else None,
            "file": self.file,
            "part": self.part,
        }
        tmp = self.path / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path / "state.json")

    def load(self) -> int:
        """Read state and segments left by a previous owner; returns undelivered bytes."""
        with contextlib.suppress(FileNotFoundError):
            state = json.loads((self.path / "state.json").read_text())
            self.acked = (state["acked"][0], state["acked"][1])
            self.pending = Pending.from_json(state["pending"]) if state.get("pending") else None
            self.file = state.get("file", "data")
            self.part = state.get("part")
        for seg_path in self.path.glob("*.seg"):
            seg = int(seg_path.stem)
            if seg < self.acked[0]:
                seg_path.unlink()
            else:
                self.sizes[seg] = seg_path.stat().st_size
        return self.backlog()

    def close(self) -> None:
        self.close_writer()


def _undelivered(sizes: dict[int, int], acked: Position) -> int:
    """Bytes in the segments of `sizes` past the position `acked`."""
    return sum(sizes.values()) - (acked[1] if acked[0] in sizes else 0)


def _try_lock(fd: int) -> bool:
    """Take the owner's lock without waiting: True if its owner is gone (the lock is now ours)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _known_missing(path: Path) -> bool:
    """True only if `path` is known not to exist: an error reading its folder (a stale mount, say) is not a no."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _write_owner(folder: Path, lease_id: str, shared: bool) -> None:
    """owner.json, replaced whole: a scan never reads half of it."""
    tmp = folder / "owner.json.tmp"
    tmp.write_text(json.dumps({"lease_id": lease_id, "pid": os.getpid(), "shared": shared}))
    os.replace(tmp, folder / "owner.json")


def _hold_folder(root: Path) -> int:
    """A descriptor of the spool folder with a shared flock() on it, kept open while the spool lives, or -1:
    systemd-tmpfiles skips a folder it cannot lock, so it does not age out the files of a long-lived process."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # a cleaner holds it this moment; its own checks keep files modified lately
        os.close(fd)
        return -1
    return fd


def frame(chunk: bytes, rows: int, packed: bool = False) -> bytes:
    return FRAME.pack(len(chunk), rows | PACKED if packed else rows, zlib.crc32(chunk)) + chunk


# (payload, rows, CSV bytes at most): a CSV chunk of whole rows has 0 as its last field, a packed record
# (collector.tabular.pack) the most bytes its CSV can take.
Chunk = tuple[bytes, int, int]


def frames(chunks: list[Chunk], max_bytes: int = FRAME_BYTES) -> bytes:
    """Chunks in as few frames as fit in `max_bytes` of CSV (or one chunk); a frame holds CSV rows or packed
    records, not both, and its CSV fits in a block whatever its kind."""
    out = []
    part: list[bytes] = []
    size = rows = 0
    packed = False
    for chunk, n, csv_bytes in chunks:
        is_packed = csv_bytes > 0
        csv_bytes = csv_bytes or len(chunk)
        if part and (size + csv_bytes > max_bytes or is_packed != packed):
            out.append(frame(b"".join(part), rows, packed))
            part, size, rows = [], 0, 0
        part.append(chunk)
        packed = is_packed
        size += csv_bytes
        rows += n
    if part:
        out.append(frame(b"".join(part), rows, packed))
    return b"".join(out)


def destination_id(container: str, folder: str, header: bytes) -> str:
    h = hashlib.sha256(b"\0".join([container.encode(), folder.encode(), header])).hexdigest()
    return h[:24]


class Spool:
    """One owner's spool folder: this process's own, or one adopted from a dead process."""

    def __init__(self, path: Path, lease_id: str, lock_fd: int, own: bool, shared: bool = False) -> None:
        self.path = path
        self.lease_id = lease_id
        self.own = own
        self.shared = shared  # delivered by the delivery agent
        self.live = not own and lock_fd < 0  # the agent watches it while its owner writes it
        self.lock = threading.Lock()
        self.destinations: dict[str, Destination] = {}
        self.bytes = 0  # undelivered bytes, frames included
        self._lock_fd = lock_fd
        self._by_target: dict[tuple[str, str, bytes], Destination] = {}  # the writer's lookup, without hashing
        # Destinations with a segment open for writing, least recently written first (see WRITERS_OPEN).
        self.writing: OrderedDict[Destination, None] = OrderedDict()
        # Told the bytes of spooled rows that cannot be delivered (a segment deleted or damaged); the engine counts.
        self.on_lost: Callable[[int], None] = lambda nbytes: None
        self.gone = False  # its folder was deleted from under it (by something else)
        self._root_fd = -1  # the spool folder, flock()ed shared (own spools; see the module docstring)

    @classmethod
    def create(cls, root: Path, shared: bool = False, lease_id: str | None = None) -> Spool:
        root.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        hidden = root / f".{name}"
        hidden.mkdir(mode=0o700)
        lock_fd = os.open(hidden / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lease_id = lease_id or str(uuid.uuid4())
        _write_owner(hidden, lease_id, shared)
        os.rename(hidden, root / name)
        spool = cls(root / name, lease_id, lock_fd, own=True, shared=shared)
        spool._root_fd = _hold_folder(root)
        return spool

    @classmethod
    def scan(cls, root: Path, skip: set[Path], *, agent: bool = False) -> Iterator[Spool]:
        """The spool folders this process should deliver, besides its own (empty ones are removed on the way).

        Dead owners' folders, locked for this process so that no one else delivers them; those of shared spools
        only for the delivery agent (`agent=True`), which also gets the folders of shared spools whose owners are
        alive, watched rather than locked.
        """
        try:
            entries = list(root.iterdir())
        except FileNotFoundError:
            return
        for path in entries:
            if path.name.startswith(".") or path in skip or not path.is_dir():
                continue
            try:
                owner = json.loads((path / "owner.json").read_text())
                lease_id, shared = owner["lease_id"], bool(owner.get("shared"))
                lock_fd = os.open(path / "lock", os.O_RDWR)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("collector: cannot read the spool %s (%s); leaving it", path, exc)
                continue
            if shared and not agent:
                os.close(lock_fd)
                continue  # the delivery agent's
            if not _try_lock(lock_fd):
                os.close(lock_fd)
                if not (agent and shared):
                    continue  # alive, and delivering its own rows
                lock_fd = -1
            spool = cls(path, lease_id, lock_fd, own=False, shared=shared)
            try:
                spool._load()
            except (OSError, ValueError, KeyError) as exc:
                log.error("collector: cannot read the spool %s (%s); leaving it", path, exc)
                spool.close()
                continue
            if spool.live or spool.has_work():
                yield spool
            else:
                spool.remove()

    def refresh(self) -> None:
        """For a watched spool: take it over if its owner has died, then pick up what the owner wrote since."""
        if not self.live:
            return
        # The lock first: once the owner is dead nothing more is written, so what is read next is final.
        with contextlib.suppress(OSError):
            fd = os.open(self.path / "lock", os.O_RDWR)
            if _try_lock(fd):
                self._lock_fd = fd
                self.live = False
            else:
                os.close(fd)
        try:
            entries = list(self.path.iterdir())
        except FileNotFoundError:
            if not self.gone:
                self.gone = True
                log.error(
                    "collector: the spool %s was deleted before its rows were delivered; they are lost", self.path
                )
            return
        for dest_path in entries:
            if dest_path.name not in self.destinations and (dest_path / "destination.json").exists():
                self._load_destination(dest_path)
        for dest in list(self.destinations.values()):
            dest.refresh_sizes()
        total = sum(dest.backlog() for dest in list(self.destinations.values()))
        with self.lock:
            self.bytes = total

    def measure(self) -> None:
        """Count the undelivered bytes from the files (an owner whose rows the delivery agent delivers)."""
        total = sum(dest.undelivered_on_disk() for dest in list(self.destinations.values()))
        with self.lock:
            self.bytes = total

    def _load(self) -> None:
        for dest_path in self.path.iterdir():
            if (dest_path / "destination.json").exists():
                self._load_destination(dest_path)

    def _load_destination(self, dest_path: Path) -> None:
        info = json.loads((dest_path / "destination.json").read_text())
        dest = Destination(self, dest_path, info["container"], info["folder"], info["header"].encode("utf-8"))
        backlog = dest.load()
        with self.lock:
            self.bytes += backlog
            self.destinations[dest_path.name] = dest

    def destination(self, container: str, folder: str, header: bytes) -> Destination:
        """The destination for these rows, created on first use (the spool writer calls this for every item)."""
        dest = self._by_target.get((container, folder, header))
        if dest is None:
            dest = self._create_destination(container, folder, header)
            self._by_target[(container, folder, header)] = dest
        return dest

    def _create_destination(self, container: str, folder: str, header: bytes) -> Destination:
        key = destination_id(container, folder, header)
        dest = self.destinations.get(key)
        if dest is None:
            dest = Destination(self, self.path / key, container, folder, header)
            dest.make_folder()
            with self.lock:
                self.destinations[key] = dest
        return dest

    def close_writers(self, current: Callable[[Destination], bool]) -> None:
        """Close the files the writer holds open for destinations that no longer get rows (an earlier day's or
        hour's), so that a process collecting for years keeps a few files open, not one per file it ever wrote.
        A late row for one of them (collected just before midnight) opens it again."""
        for target, dest in list(self._by_target.items()):
            if not current(dest):
                dest.close_writer()
                del self._by_target[target]

    def deleted(self) -> bool:
        """True if this process's own folder was deleted whole (by something else)."""
        return self.own and _known_missing(self.path)

    def mend(self) -> None:
        """Make again what something else deleted in this process's own folder, the folder left (a cleaner that
        goes by modification time takes the files written once, at the start; `rm -rf` of its contents): the
        lock, so that no other process takes this live spool for a dead one's and the next one can adopt it once
        this one dies; owner.json; and the destinations' folders, so that the writer can go on in them (the rows
        in their deleted segments are lost: the uploader counts them). Also hold the spool folder's shared lock if
        that failed at the start (see _hold_folder)."""
        if self._root_fd < 0:
            self._root_fd = _hold_folder(self.path.parent)
        if self._lock_fd >= 0 and os.fstat(self._lock_fd).st_nlink == 0:
            # Locked before it is in place: a scan never finds it unlocked and takes this live spool for dead.
            tmp = self.path / f".lock-{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(tmp, self.path / "lock")
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            os.close(self._lock_fd)
            self._lock_fd = fd
            log.warning("collector: the lock file of the spool %s was deleted; made again", self.path)
        if _known_missing(self.path / "owner.json"):
            _write_owner(self.path, self.lease_id, self.shared)
        for dest in list(self.destinations.values()):
            if _known_missing(dest.path / "destination.json"):
                # Not state.json: the uploader thread writes it; its next write makes it again.
                dest.make_folder(state=False)

    def reopen_deleted(self) -> None:
        """Start a new segment for each one open for writing that was deleted meanwhile (writer thread only): the
        next rows go to a file that the uploader can read, and the uploader, seeing a later segment, moves past the
        deleted one (so flush() returns)."""
        for dest in list(self.writing):
            fd = dest._fd
            if fd is not None and os.fstat(fd).st_nlink == 0:
                with self.lock:
                    dest._open_segment()

    def written(self, dest: Destination) -> None:
        """`dest` was just written to (under the lock): it is now the most recently written."""
        self.writing[dest] = None
        self.writing.move_to_end(dest)

    def make_room(self, dest: Destination) -> None:
        """Before `dest` opens a segment (under the lock): close the least recently written while WRITERS_OPEN
        others are open."""
        while len(self.writing) >= WRITERS_OPEN and self._close_least_recent(dest):
            pass

    def open_file(self, path: Path, flags: int) -> int:
        """os.open() for the writer (under the lock). At the process's open-file limit (the script's own files and
        the server's sockets count too), it closes the least recently written segments, one at a time, and tries
        again: rows that would have been dropped go to disk, and the others reopen theirs when they next get rows."""
        while True:
            try:
                return os.open(path, flags, 0o600)
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE) or not self._close_least_recent(None):
                    raise

    def _close_least_recent(self, keep: Destination | None) -> bool:
        """Close the segment written least recently, other than `keep`'s; False if there is none."""
        for dest in self.writing:
            if dest is not keep:
                fd = dest.let_go()
                if fd is not None:
                    os.close(fd)
                return True
        return False

    def release_bytes(self, n: int) -> None:
        with self.lock:
            self.bytes = max(0, self.bytes - n)

    def has_work(self) -> bool:
        return any(d.has_work() for d in list(self.destinations.values()))

    def close(self) -> None:
        for dest in list(self.destinations.values()):
            dest.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def remove(self) -> None:
        """Delete this (fully delivered) folder, then let go of its lock."""
        for dest in list(self.destinations.values()):
            dest.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self.close()
