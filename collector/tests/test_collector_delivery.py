"""Delivery to blob storage (Azurite): layout, exactly-once under faults, outages, bounds and roll-over."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobLeaseClient
from conftest import read_files, rows_of, spooled_rows, wait_for

import collector
from collector import ModelDataCollector, config, engine, tabular, upload
from collector import spool as spool_module
from collector.spool import FRAME, Pending, Spool, frame, frames

HEADER = ["writer", "seq", "payload"]


def day_folder(workspace: str, designation: str, ts: float | None = None) -> str:
    t = time.gmtime(ts or time.time())
    return f"{workspace}/svc/best_model/3/{designation}/{t.tm_year:04d}/{t.tm_mon:02d}/{t.tm_mday:02d}"


def assert_exactly_once(files: dict[str, str], expected: list[list[str]]) -> None:
    """Every part starts with the header, has it once, and the rows are the expected ones, each once."""
    seen: list[tuple[str, ...]] = []
    for name in sorted(files):
        rows = rows_of(files[name])
        assert rows[0] == HEADER, name
        assert HEADER not in rows[1:], f"a second header in {name}"
        seen += [tuple(r) for r in rows[1:]]
    dupes = [row for row, n in Counter(seen).items() if n > 1]
    assert not dupes, f"{len(dupes)} rows twice, e.g. {dupes[:3]}"
    assert sorted(seen) == sorted(tuple(r) for r in expected)


def test_it_writes_the_legacy_path_with_one_header_within_seconds(configure, blobs, workspace) -> None:
    configure()
    inputs = ModelDataCollector("best_model", designation="inputs", feature_names=["feat1", "feat2"])
    predictions = ModelDataCollector("best_model", designation="predictions", feature_names=["prediction"])
    started = time.monotonic()
    for i in range(3):
        corr = inputs.collect([[i, i + 0.5]])
        predictions.collect(predictions.add_correlations([i * 10], corr))
    # No flush: the uploader delivers by itself, within a few flush intervals.
    wait_for(lambda: len(read_files(blobs, workspace)) == 2, timeout=10, message="both files")
    wait_for(lambda: all(t.count("\n") == 4 for t in read_files(blobs, workspace).values()), 10, "all rows")
    assert time.monotonic() - started < 5
    files = read_files(blobs, workspace)
    assert set(files) == {
        f"{day_folder(workspace, 'inputs')}/data.csv",
        f"{day_folder(workspace, 'predictions')}/data.csv",
    }
    inputs_rows = rows_of(files[f"{day_folder(workspace, 'inputs')}/data.csv"])
    prediction_rows = rows_of(files[f"{day_folder(workspace, 'predictions')}/data.csv"])
    assert inputs_rows[0][:3] == ["feat1", "feat2", "$aml_dc_correlation_id"]
    assert prediction_rows[0] == [
        "prediction",
        "$aml_dc_correlation_id",
        "$aml_dc_scoring_timestamp",
        "$aml_request_id",
    ]
    # Inputs and predictions of one request join on the correlation id.
    by_id = {r[2]: r[:2] for r in inputs_rows[1:]}
    assert [by_id[r[1]] for r in prediction_rows[1:]] == [["0", "0.5"], ["1", "1.5"], ["2", "2.5"]]
    stats = collector.stats()
    assert stats["rows_collected"] == stats["rows_delivered"] == 6
    assert stats["spool_bytes"] == 0


def test_it_writes_one_file_per_hour_with_the_hour_boundary(configure, blobs, workspace) -> None:
    configure(**{config.BOUNDARY: "hour"})
    ModelDataCollector("best_model", designation="labels").collect([1, 2])
    assert collector.flush(10)
    t = time.gmtime()
    (name,) = read_files(blobs, workspace)
    assert name == f"{day_folder(workspace, 'labels')}/{t.tm_hour:02d}/data.csv"


def open_segments(spool_dir: Path) -> dict[str, int]:
    """This process's open spool segment files, by access mode: how many open for writing and for reading."""
    out = {"write": 0, "read": 0}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            flags = int(Path(f"/proc/self/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
        except (OSError, IndexError, ValueError):
            continue
        if target.startswith(str(spool_dir)) and target.endswith(".seg"):
            out["write" if flags & os.O_ACCMODE == os.O_WRONLY else "read"] += 1
    return out


def test_a_new_day_closes_the_files_of_the_day_before(configure, blobs, workspace, spool_dir, monkeypatch) -> None:
    """A process that collects for years keeps a few spool files open, not one per file it ever wrote."""
    configure()
    clock = {"now": time.time() - 86400}
    monkeypatch.setattr(
        collector, "time", SimpleNamespace(time=lambda: clock["now"], gmtime=time.gmtime, strftime=time.strftime)
    )
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    yesterday, today = clock["now"], time.time()

    dc.collect(["w", 1, "yesterday"])
    assert collector.flush(10)
    clock["now"] = today
    dc.collect(["w", 2, "today"])
    assert collector.flush(10)
    # One file open for writing (today's): yesterday's segment is closed (a late row opens it again, below), and the
    # uploader holds none.
    assert open_segments(spool_dir) == {"write": 1, "read": 0}

    clock["now"] = yesterday  # a late row, collected just before midnight, still reaches its day's file
    dc.collect(["w", 3, "late"])
    assert collector.flush(10)
    files = read_files(blobs, workspace)
    assert [r[2] for r in rows_of(files[f"{day_folder(workspace, 'predictions', yesterday)}/data.csv"])[1:]] == [
        "yesterday",
        "late",
    ]
    assert [r[2] for r in rows_of(files[f"{day_folder(workspace, 'predictions', today)}/data.csv"])[1:]] == ["today"]
    assert collector.stats()["rows_delivered"] == 3


def test_it_delivers_each_row_once_through_resets_500s_and_timeouts(configure, proxy, proxy_url, blobs, workspace):
    configure(**{config.STORAGE: proxy_url})
    proxy.add("reset_before", every=3, times=4)
    proxy.add("error_500", every=4, times=4)
    proxy.add("reset_after", every=3, times=4)  # committed, but the client never hears so
    proxy.add("stall_after", every=5, times=2)  # committed, answered after the client gave up
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    expected = []
    for i in range(60):
        dc.collect(["w", i, f"row {i}"])
        expected.append(["w", str(i), f"row {i}"])
        if i % 3 == 2:
            assert collector.flush(30)  # one block per flush: many appends, many faults
    assert sum(r.hits for r in proxy.rules) >= 10
    assert proxy.count("reset_after") >= 3
    files = read_files(blobs, workspace)
    assert_exactly_once(files, expected)
    # Each block holds whole rows in order: the file reads back in collect() order.
    assert [r[1] for r in rows_of(next(iter(files.values())))[1:]] == [str(i) for i in range(60)]
    assert collector.stats()["upload_failures"] >= 10


def test_it_waits_out_an_outage_then_delivers(configure, proxy, proxy_url, blobs, workspace) -> None:
    configure(**{config.STORAGE: proxy_url})
    proxy.refusing = True
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    for i in range(100):
        dc.collect(["w", i, "during outage"])
    wait_for(lambda: collector.stats()["last_error"], message="an upload error")
    assert not collector.flush(0.5)
    stats = collector.stats()
    assert stats["rows_delivered"] == 0
    assert stats["spool_bytes"] > 0
    assert "Connection" in stats["last_error"] or "connection" in stats["last_error"]
    proxy.refusing = False
    assert collector.flush(30)
    assert_exactly_once(read_files(blobs, workspace), [["w", str(i), "during outage"] for i in range(100)])
    assert collector.stats()["spool_bytes"] == 0


def test_it_bounds_the_spool_and_counts_what_it_drops(configure, proxy, proxy_url, blobs, workspace) -> None:
    configure(**{config.STORAGE: proxy_url, config.SPOOL_MAX_BYTES: "4096"})
    proxy.refusing = True
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    for i in range(500):
        dc.collect(["w", i, "x" * 40])
    assert collector.engine.current().spool_now()
    stats = collector.stats()
    assert stats["rows_dropped"]["spool_full"] > 0
    assert stats["spool_bytes"] <= 4096
    assert stats["rows_spooled"] + stats["rows_dropped"]["spool_full"] == 500
    proxy.refusing = False
    assert collector.flush(30)
    delivered = rows_of(next(iter(read_files(blobs, workspace).values())))[1:]
    assert len(delivered) == stats["rows_spooled"]
    assert [int(r[1]) for r in delivered] == list(range(len(delivered)))  # the oldest rows were kept


def test_a_failed_spool_write_drops_only_its_rows_and_leaves_the_spool_whole(
    configure, blobs, workspace, monkeypatch
) -> None:
    configure()
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    dc.collect(["w", 0, "before"])
    assert collector.engine.current().spool_now()
    real_write = os.write
    calls = []

    def disk_fills_up(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))  # half of it fits
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_fills_up)
    dc.collect(["w", 1, "disk full"])
    assert collector.engine.current().spool_now()
    monkeypatch.undo()
    assert len(calls) == 2
    dc.collect(["w", 2, "after"])
    assert collector.flush(30)
    stats = collector.stats()
    assert stats["rows_dropped"]["internal_error"] == 1
    assert stats["rows_delivered"] == 2
    assert "No space left" not in stats["last_error"]  # a spool problem, not an upload error
    assert_exactly_once(read_files(blobs, workspace), [["w", "0", "before"], ["w", "2", "after"]])


def test_a_spool_file_deleted_by_something_else_loses_its_rows_and_no_others(
    configure, proxy, proxy_url, blobs, workspace, spool_dir, monkeypatch, caplog
) -> None:
    # A cleaner of old temporary files, or an operator, deletes spool files while storage is down: a finished
    # segment, and the one the writer has open. Before, the uploader retried the missing file forever and every
    # later row of that file stayed in the spool; flush() never returned True again.
    configure(**{config.STORAGE: proxy_url})
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 100)  # a few frames per segment
    monkeypatch.setattr(engine, "REOPEN_CHECK_SECONDS", 0.05)
    proxy.refusing = True
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    for i in range(12):
        dc.collect(["w", i, "before"])
        assert collector.engine.current().spool_now()  # one frame each
    segments = sorted(spool_dir.glob("*/*/*.seg"))
    assert len(segments) >= 3
    deleted = [segments[0], segments[-1]]
    lost = [row for seg in deleted for row in spooled_rows(seg)]
    lost_bytes = sum(seg.stat().st_size for seg in deleted)
    for seg in deleted:
        seg.unlink()
    # The writer notices that its open segment is gone, and starts a new one for the next rows.
    wait_for(lambda: len(list(spool_dir.glob("*/*/*.seg"))) == len(segments) - 1, 5, "a new segment")
    dc.collect(["w", 12, "after"])

    proxy.refusing = False
    assert collector.flush(30)
    expected = [["w", str(i), "before"] for i in range(12)] + [["w", "12", "after"]]
    assert_exactly_once(read_files(blobs, workspace), [row for row in expected if row not in lost])
    stats = collector.stats()
    assert stats["spool_bytes_lost"] == lost_bytes
    assert stats["spool_bytes"] == 0
    assert "was deleted before its rows were delivered" in caplog.text


def test_a_block_whose_spool_file_was_deleted_unconfirmed_is_neither_sent_again_nor_waited_for(
    configure, proxy, proxy_url, blobs, workspace, spool_dir, monkeypatch
) -> None:
    # The block lands, its answer is lost, storage goes away, a row more is spooled after it, then their segment is
    # deleted: the block can neither be checked nor sent again. It is given up (here it had landed: its rows are
    # there once), the row after it is lost and counted with it, and the next rows go out.
    configure(**{config.STORAGE: proxy_url})
    monkeypatch.setattr(engine, "REOPEN_CHECK_SECONDS", 0.05)
    proxy.add("reset_after_then_refuse")
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    dc.collect(["w", 0, "landed"])
    wait_for(lambda: proxy.count("reset_after_then_refuse") == 1, message="the lost answer")
    dc.collect(["w", 0, "spooled after it"])
    assert collector.engine.current().spool_now()
    (segment,) = spool_dir.glob("*/*/*.seg")
    assert '"pending": {' in next(spool_dir.glob("*/*/state.json")).read_text()
    size = segment.stat().st_size
    segment.unlink()
    wait_for(lambda: len(list(spool_dir.glob("*/*/*.seg"))) == 1, 5, "the writer's new segment")

    proxy.clear()
    dc.collect(["w", 1, "after"])
    assert collector.flush(30)
    assert_exactly_once(read_files(blobs, workspace), [["w", "0", "landed"], ["w", "1", "after"]])
    stats = collector.stats()
    assert (stats["spool_bytes_lost"], stats["spool_bytes"]) == (size, 0)


def one_row_spooled_while_storage_is_down(
    configure, proxy, proxy_url, spool_dir: Path, row: list[object]
) -> tuple[ModelDataCollector, Path]:
    """Storage down and a collector's first row on disk: the collector, and this process's spool folder."""
    configure(**{config.STORAGE: proxy_url})
    proxy.refusing = True
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    dc.collect(row)
    assert collector.engine.current().spool_now()
    (folder,) = [path for path in spool_dir.iterdir() if path.is_dir()]
    return dc, folder


def only_the_next_row_is_delivered(dc, proxy, blobs, workspace: str, lost_bytes: int) -> None:
    """With storage back, a row collected after the loss is delivered alone; the loss is counted, nothing dropped."""
    dc.collect(["w", 1, "after"])
    proxy.refusing = False
    assert collector.flush(30)
    assert_exactly_once(read_files(blobs, workspace), [["w", "1", "after"]])
    stats = collector.stats()
    assert (stats["spool_bytes_lost"], stats["spool_bytes"], stats["rows_dropped_total"]) == (lost_bytes, 0, 0)


def test_shutdown_does_not_wait_for_rows_in_a_spool_file_deleted_by_something_else(
    configure, proxy, proxy_url, blobs, workspace, spool_dir, monkeypatch
) -> None:
    # No new segment comes after the deleted one (the writer has stopped): the uploader cannot move past it, and
    # shutdown must still see that nothing is left to deliver, at once rather than at its deadline.
    monkeypatch.setattr(engine, "REOPEN_CHECK_SECONDS", 3600)
    _, folder = one_row_spooled_while_storage_is_down(configure, proxy, proxy_url, spool_dir, ["w", 0, "lost"])
    (segment,) = folder.glob("*/*.seg")
    size = segment.stat().st_size
    segment.unlink()
    proxy.refusing = False
    started = time.monotonic()
    assert collector.shutdown(20)
    assert time.monotonic() - started < 10
    assert collector.stats()["spool_bytes_lost"] == size


def test_a_spool_whose_lock_file_was_deleted_is_locked_again_and_its_rows_delivered(
    configure, proxy, proxy_url, blobs, workspace, spool_dir, monkeypatch
) -> None:
    # A cleaner that goes by modification time alone removes the files written once, at the start (lock,
    # owner.json), and leaves the segments: the rows in them are delivered, and the folder can be adopted again.
    monkeypatch.setattr(engine, "REOPEN_CHECK_SECONDS", 0.05)
    dc, folder = one_row_spooled_while_storage_is_down(configure, proxy, proxy_url, spool_dir, ["w", 0, "spooled"])
    owner = json.loads((folder / "owner.json").read_text())
    (folder / "lock").unlink()
    (folder / "owner.json").unlink()
    wait_for(lambda: (folder / "owner.json").exists(), 5, "the spool's files made again")
    assert json.loads((folder / "owner.json").read_text()) == owner
    lock = os.open(folder / "lock", os.O_RDWR)
    try:  # held by the collector: no other process takes this live spool for a dead one's
        with pytest.raises(BlockingIOError):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(lock)

    proxy.refusing = False
    dc.collect(["w", 1, "after"])
    assert collector.flush(30)
    assert_exactly_once(read_files(blobs, workspace), [["w", "0", "spooled"], ["w", "1", "after"]])
    assert collector.stats()["spool_bytes_lost"] == 0


def test_a_spool_folder_emptied_is_made_again_and_collection_goes_on_in_it(
    configure, proxy, proxy_url, blobs, workspace, spool_dir, monkeypatch
) -> None:
    # `rm -rf <spool>/<owner>/*`: the folder stays, all in it goes. Its rows are lost; its lock, owner.json and
    # destination folders are made again, and the next rows are delivered.
    monkeypatch.setattr(engine, "REOPEN_CHECK_SECONDS", 0.05)
    dc, folder = one_row_spooled_while_storage_is_down(configure, proxy, proxy_url, spool_dir, ["w", 0, "lost"])
    (destination,) = [path for path in folder.iterdir() if path.is_dir()]
    lost_bytes = sum(segment.stat().st_size for segment in destination.glob("*.seg"))
    for path in folder.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    wait_for(lambda: (destination / "destination.json").exists(), 5, "the destination's folder made again")
    assert {path.name for path in folder.iterdir()} >= {"lock", "owner.json", destination.name}

    only_the_next_row_is_delivered(dc, proxy, blobs, workspace, lost_bytes)


def test_a_spool_folder_deleted_whole_loses_its_rows_and_collection_goes_on_in_a_new_one(
    configure, proxy, proxy_url, blobs, workspace, spool_dir, monkeypatch, caplog
) -> None:
    # An operator deletes the process's spool folder while storage is down: its rows are lost, the next ones are
    # spooled in a new folder and delivered.
    monkeypatch.setattr(engine, "REOPEN_CHECK_SECONDS", 0.05)
    dc, folder = one_row_spooled_while_storage_is_down(configure, proxy, proxy_url, spool_dir, ["w", 0, "before"])
    lost_bytes = sum(segment.stat().st_size for segment in folder.glob("*/*.seg"))
    shutil.rmtree(folder)
    wait_for(lambda: [path for path in spool_dir.iterdir() if path.is_dir()], 5, "a new spool folder")

    only_the_next_row_is_delivered(dc, proxy, blobs, workspace, lost_bytes)
    assert "was deleted before its rows were delivered" in caplog.text


def test_a_cleaner_of_old_temporary_files_leaves_a_live_spool_alone(
    configure, proxy, proxy_url, blobs, workspace, spool_dir, tmp_path
) -> None:
    # The default spool is under /tmp, which systemd-tmpfiles ages out: there a process that has run for weeks has
    # files last modified at its start (lock, owner.json, destination.json). The real cleaner, told to remove all
    # that was not modified in the last second, must leave the spool of a live process whole.
    tmpfiles = shutil.which("systemd-tmpfiles")
    if tmpfiles is None:
        pytest.fail("this test needs systemd-tmpfiles (apt-get install systemd)")
    dc, _ = one_row_spooled_while_storage_is_down(configure, proxy, proxy_url, spool_dir, ["w", 0, "old"])
    files = sorted(path for path in spool_dir.rglob("*") if path.is_file())
    assert {path.name for path in files} >= {"lock", "owner.json", "destination.json"}
    for path in [*files, *(path for path in spool_dir.rglob("*") if path.is_dir()), spool_dir]:
        os.utime(path, (0, 0))  # 1970: older than any age
    rules = tmp_path / "tributary.conf"
    rules.write_text(f"e {spool_dir.parent} - - - m:1s\n")
    cleaned = subprocess.run([tmpfiles, "--clean", str(rules)], capture_output=True, text=True)
    assert cleaned.returncode == 0, cleaned.stderr

    assert [path for path in files if not path.exists()] == []
    proxy.refusing = False
    dc.collect(["w", 1, "new"])
    assert collector.flush(30)
    assert_exactly_once(read_files(blobs, workspace), [["w", "0", "old"], ["w", "1", "new"]])


def test_without_a_spool_it_drops_and_counts_and_tries_again_only_after_a_while(
    configure, tmp_path, monkeypatch, caplog
) -> None:
    # A spool folder that cannot be made (here its parent is a file; on a pod, a read-only or full disk).
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    configure(**{config.SPOOL_DIR: str(blocked / "spool")})
    monkeypatch.setattr(engine, "START_RETRY_SECONDS", 1.0)
    tries = []
    real_create = engine.Spool.create
    monkeypatch.setattr(engine.Spool, "create", lambda *a, **k: tries.append(1) or real_create(*a, **k))
    dc = ModelDataCollector("best_model", designation="predictions")  # tries once, at construction

    for i in range(100):
        dc.collect([[i, 0.5], [i, 0.25]])  # never raises into run()

    stats = collector.stats()
    assert len(tries) == 1  # not once per collect(): the next try waits START_RETRY_SECONDS (1 s here)
    assert stats["rows_dropped"]["internal_error"] == 200
    assert stats["queue_rows"] == 0  # nothing held in memory for a writer that never started
    assert "cannot create the spool" in stats["last_error"]
    blocked.unlink()
    blocked.mkdir()

    def collected() -> bool:
        dc.collect([[100, 0.5]])
        return collector.stats()["rows_collected"] > 0

    wait_for(collected, timeout=5, message="rows kept again once the spool can be made")
    assert 2 <= len(tries) <= 3


def test_it_bounds_the_memory_queue(configure) -> None:
    configure(**{config.QUEUE_MAX_ROWS: "50"})
    dc = ModelDataCollector("best_model", designation="predictions")
    dc.collect(np.zeros((100, 2)))
    assert collector.stats()["rows_dropped"]["queue_full"] == 100


def test_it_rolls_over_to_predictable_part_names(configure, blobs, workspace) -> None:
    configure(**{config.MAX_BLOCKS_PER_BLOB: "3"})  # the header and two blocks of rows per part
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    expected = []
    for i in range(7):
        dc.collect(["w", i, "p"])
        expected.append(["w", str(i), "p"])
        assert collector.flush(10)
    folder = day_folder(workspace, "predictions")
    container = blobs.get_container_client("modeldata")
    names = list(container.list_blob_names(name_starts_with=f"{folder}/data"))  # one listing finds every part
    assert names == [f"{folder}/data.csv", *(f"{folder}/data_{n:04d}.csv" for n in (1, 2, 3))]
    files = read_files(blobs, workspace)
    assert_exactly_once(files, expected)
    assert [len(rows_of(files[n])) for n in names] == [3, 3, 3, 2]
    assert collector.stats()["parts_rolled"] == 3


def test_a_prediction_of_another_length_goes_to_a_file_of_its_own(configure, blobs, workspace) -> None:
    """A 1-D predict() result is one row of as many cells as the request had inputs (the legacy shape)."""
    configure(**{config.MAX_BLOCKS_PER_BLOB: "3"})
    inputs = ModelDataCollector("best_model", designation="inputs", feature_names=["x"])
    predictions = ModelDataCollector("best_model", designation="predictions", feature_names=["prediction"])
    sent = []
    for batch in [2, 3, 2, 1, 3, 3, 2, 3]:
        corr = inputs.collect([[i] for i in range(batch)])
        result = np.arange(batch) * 10
        predictions.collect(predictions.add_correlations(result, corr))
        sent.append((corr["$aml_dc_correlation_id"], [str(v) for v in result]))
        assert collector.flush(10)  # a block each: the files roll over
    stats = collector.stats()
    assert stats["rows_dropped_total"] == 0
    assert stats["rows_delivered"] == stats["rows_collected"] == 19 + 8
    folder = day_folder(workspace, "predictions")
    files = {n: rows_of(t) for n, t in read_files(blobs, workspace).items() if n.startswith(folder)}
    tail = ["$aml_dc_correlation_id", "$aml_dc_scoring_timestamp", "$aml_request_id"]
    headers = {
        2: ["prediction", "feature_2", *tail],
        3: ["prediction", "feature_2", "feature_3", *tail],
        1: ["prediction", *tail],
    }
    other = {n: f"data-{hashlib.sha256(tabular.header_line(h)).hexdigest()[:8]}" for n, h in headers.items()}
    # data.csv is the first width's; each other width has its own file and parts, named after its header.
    assert set(files) == {
        f"{folder}/data.csv",
        f"{folder}/data_0001.csv",
        f"{folder}/{other[1]}.csv",
        f"{folder}/{other[3]}.csv",
        f"{folder}/{other[3]}_0001.csv",
    }
    got = []
    for name, rows in files.items():
        width = len(rows[0]) - len(tail)
        assert rows[0] == headers[width], name
        assert all(len(row) == len(rows[0]) for row in rows[1:]), name
        got += [(row[width], row[:width]) for row in rows[1:]]
    assert sorted(got) == sorted(sent)


@pytest.mark.parametrize("landed", [True, False], ids=["block-landed", "block-not-landed"])
def test_a_block_pending_in_a_file_of_another_header_is_finished_there_and_the_rest_moves(
    azurite, blobs, workspace, tmp_path, landed
) -> None:
    """A spool left by a version that did not check headers: its unconfirmed block settles where it was sent (moving
    it could write it twice), then its rows and another spool's go to the file of their header."""
    container = blobs.get_container_client("modeldata")
    if not container.exists():
        container.create_container()
    folder = f"{workspace}/m/1/predictions/2026/11/24"
    blob = container.get_blob_client(f"{folder}/data.csv")
    blob.create_append_blob()
    blob.append_block(b"a\n1\n")  # another shape started the file
    if landed:
        blob.append_block(b"1,2\n")  # the old process's block, appended before it died unconfirmed
    old = Spool.create(tmp_path / "spool")
    left = old.destination("modeldata", folder, b"a,b\n")
    left.write(frame(b"1,2\n", 1) + frame(b"5,6\n", 1))
    left.part = 0
    left.set_pending(Pending(0, 4, (1, 0), (1, FRAME.size + 4), 4, 1))
    new = Spool.create(tmp_path / "spool").destination("modeldata", folder, b"a,b\n")
    new.write(frame(b"3,4\n", 1))
    uploader = upload.Uploader(azurite.url, max_blocks=100, on_delivered=lambda rows, nbytes: None)

    outcome = uploader.deliver([left, new], old.lease_id)
    uploader.close()

    assert outcome == upload.DONE, uploader.last_error
    assert (left.pending, left.has_work(), new.has_work()) == (None, False, False)
    files = read_files(blobs, folder)
    assert files.pop(f"{folder}/data.csv") == "a\n1\n1,2\n"
    (other,) = files.values()
    assert other.startswith("a,b\n")
    assert sorted(other.splitlines()[1:]) == ["3,4", "5,6"]


def test_it_turns_on_and_off_without_a_restart(configure, base_env, blobs, workspace) -> None:
    configure(**{config.ENABLED: "false"})
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    dc.collect(["w", 0, "while off"])
    collector.reconfigure({**base_env, config.ENABLED: "true"})
    dc.collect(["w", 1, "while on"])
    assert collector.flush(10)
    assert_exactly_once(read_files(blobs, workspace), [["w", "1", "while on"]])


def test_collectors_of_one_file_share_it(configure, blobs, workspace) -> None:
    configure()
    a = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    b = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    a.collect(["a", 1, "x"])
    b.collect(["b", 1, "y"])
    assert collector.flush(10)
    assert_exactly_once(read_files(blobs, workspace), [["a", "1", "x"], ["b", "1", "y"]])


@pytest.mark.parametrize("rows", [1, 100])
def test_it_delivers_large_volumes_in_big_blocks(configure, blobs, workspace, rows) -> None:
    configure()
    dc = ModelDataCollector("best_model", designation="predictions")
    for _ in range(2000 // rows):
        dc.collect(np.ones((rows, 10)) if rows > 1 else [1.0] * 10)
    assert collector.flush(30)
    stats = collector.stats()
    assert stats["rows_delivered"] == 2000
    assert stats["blocks_appended"] < 20


# -- leases: kept across rounds by a lone writer, taken and given back each round when others write too ---------


def storage_calls(proxy) -> Counter:
    """The requests the collector sent, by kind."""
    kinds: Counter = Counter()
    for method, path, _ in list(proxy.log):
        if "comp=appendblock" in path:
            kinds["append"] += 1
        elif "comp=lease" in path:
            kinds["lease"] += 1
        elif method == "HEAD":
            kinds["properties"] += 1
        else:
            kinds["other"] += 1
    return kinds


def data_blob(blobs, workspace):  # type: ignore[no-untyped-def]
    return blobs.get_blob_client("modeldata", f"{day_folder(workspace, 'predictions')}/data.csv")


def test_a_lone_writer_keeps_its_lease_so_each_round_is_one_append(
    configure, proxy, proxy_url, blobs, workspace, monkeypatch
) -> None:
    # Long enough for the six rounds below on a busy machine, short enough to wait for.
    monkeypatch.setattr(upload, "KEEP_SECONDS", 6.0)
    configure(**{config.STORAGE: proxy_url})
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    dc.collect(["w", 0, "x"])
    assert collector.flush(10)
    first = storage_calls(proxy)
    assert first == Counter(other=3, lease=1, properties=1, append=2)  # 2 creates, 1 listing; the header, the row
    proxy.log.clear()
    for i in range(1, 6):
        dc.collect(["w", i, "x"])
        assert collector.flush(10)
    assert storage_calls(proxy) == Counter(append=5)  # the lease and the blob's length are known
    # Kept long enough: it is given back, rows or not, so that another writer can have the file.
    wait_for(lambda: storage_calls(proxy)["lease"] == 1, message="the lease given back")
    # The proxy logs a request before storage has answered it: the lease is free a moment later, and well before
    # the 15 s it was taken for would run out.
    wait_for(lambda: _acquired(data_blob(blobs, workspace)), 5, "the lease free")
    assert_exactly_once(read_files(blobs, workspace), [["w", str(i), "x"] for i in range(6)])


def _acquired(blob) -> bool:
    try:
        BlobLeaseClient(blob).acquire(lease_duration=15)
    except ResourceExistsError:
        return False
    return True


def test_when_another_writer_shows_up_the_lease_is_taken_and_given_back_each_round(
    configure, proxy, proxy_url, blobs, workspace, monkeypatch
) -> None:
    monkeypatch.setattr(upload, "KEEP_SECONDS", 0.5)
    configure(**{config.STORAGE: proxy_url})
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    dc.collect(["w", 0, "x"])
    assert collector.flush(10)
    # Another replica's uploader: it gets the file once ours lets go of it, and appends under its own lease.
    other = BlobLeaseClient(data_blob(blobs, workspace))

    def acquired() -> bool:
        try:
            other.acquire(lease_duration=15)
        except ResourceExistsError:
            return False
        return True

    wait_for(acquired, timeout=5, message="the other writer's lease")
    data_blob(blobs, workspace).append_block(b"other,0,y\n", lease=other)
    dc.collect(["w", 1, "x"])
    wait_for(lambda: storage_calls(proxy)["lease"] >= 3, message="our uploader finding the lease busy")
    assert not collector.flush(0.2)  # busy: it waits
    other.release()
    assert collector.flush(10)
    wait_for(acquired, timeout=2, message="the lease given back after the round")
    other.release()
    proxy.log.clear()
    for i in range(2, 4):
        dc.collect(["w", i, "x"])
        assert collector.flush(10)
        # Taken, length read, appended, given back: the other writer can have the file between our rounds.
        wait_for(acquired, timeout=2, message="the lease given back after the round")
        other.release()
    assert storage_calls(proxy) == Counter(lease=4, properties=2, append=2)
    expected = [["w", str(i), "x"] for i in range(4)] + [["other", "0", "y"]]
    assert_exactly_once(read_files(blobs, workspace), expected)


def test_a_lost_lease_is_taken_again_and_the_refused_block_sent_once(configure, proxy, proxy_url, blobs, workspace):
    configure(**{config.STORAGE: proxy_url})
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    dc.collect(["w", 0, "x"])
    assert collector.flush(10)
    # As if this process had stalled past the lease: it is broken, and another writer appends meanwhile.
    blob = data_blob(blobs, workspace)
    BlobLeaseClient(blob).break_lease(lease_break_period=0)
    blob.append_block(b"other,0,y\n")
    dc.collect(["w", 1, "x"])
    assert collector.flush(10)
    stats = collector.stats()
    assert stats["upload_failures"] >= 1
    assert "Lease" in stats["last_error"]
    expected = [["w", "0", "x"], ["other", "0", "y"], ["w", "1", "x"]]
    assert_exactly_once(read_files(blobs, workspace), expected)
    assert stats["rows_delivered"] == 2


def test_a_block_sent_again_lower_after_lost_blocks_before_it_is_not_written_twice(
    base_env, proxy, proxy_url, blobs, workspace, spool_dir
) -> None:
    # The agent sends a's, b's and c's rows in one append at L; its outcome is unknown. a's segment is deleted: a's
    # rows are given up, and b's and c's are sent again from L on; unknown again. b's segment is deleted: c's rows
    # are sent again at L. If the second request, still in flight, lands just ahead of the third, the third is
    # refused, and c's rows are in the blob where the second put them: the check must look at every position they
    # were sent to, or they are appended a second time.
    folder = day_folder(workspace, "inputs")
    header = (",".join(HEADER) + "\n").encode()
    spools = {name: Spool.create(spool_dir / name, shared=True) for name in "abc"}
    lease_id = spools["a"].lease_id  # the agent gives its writers' spools its own lease
    rows = {name: [[name, str(i), name * (10 + 10 * n)] for i in range(5)] for n, name in enumerate("abc")}
    dests = []
    for name, spool in spools.items():
        dest = spool.destination("modeldata", folder, header)
        dest.write(frames([("".join(",".join(r) + "\n" for r in rows[name]).encode(), 5, 0)]))
        dests.append(dest)
    uploader = upload.Uploader(proxy_url, max_blocks=50_000, on_delivered=lambda rows, nbytes: None)
    proxy.add("reset_before", times=2)
    assert uploader.deliver(dests, lease_id) == upload.FAILED
    next(spool_dir.glob("a/*/*/*.seg")).unlink()
    assert uploader.deliver(dests, lease_id) == upload.FAILED
    _, b, c = (dest.pending for dest in dests)
    assert b is not None
    assert c is not None
    second = b"".join(dest.read_range(p.start, p.end)[0] for dest, p in zip(dests[1:], (b, c), strict=True))
    next(spool_dir.glob("b/*/*/*.seg")).unlink()

    blob = blobs.get_blob_client("modeldata", f"{folder}/data.csv")

    def second_request_lands() -> None:
        blob.append_block(second, appendpos_condition=b.pos, lease=lease_id)

    proxy.add("run_first", before=second_request_lands)
    assert uploader.deliver(dests, lease_id) == upload.DONE, uploader.last_error
    uploader.close()
    assert proxy.count("run_first") == 1
    assert_exactly_once(read_files(blobs, folder), rows["b"] + rows["c"])
    assert not any(dest.has_work() for dest in dests)


def test_a_frame_larger_than_the_room_left_in_a_block_waits_for_the_next_block(
    base_env, blobs, workspace, spool_dir
) -> None:
    # The agent sends one file's rows from several writers' spools in one block. The first spool fills 4 MiB but
    # 100 KiB; the second spool's frames are 100 KiB: they go in the next block, whole, never skipped as damaged.
    from collector.spool import Spool, frames

    folder = day_folder(workspace, "inputs")
    header = (",".join(HEADER) + "\n").encode()
    first, second = Spool.create(spool_dir / "a", shared=True), Spool.create(spool_dir / "b", shared=True)
    second.lease_id = first.lease_id  # as the agent gives its writers' spools its own lease
    expected = []
    for spool, name, frame_count in ((first, "a", 41), (second, "b", 3)):
        dest = spool.destination("modeldata", folder, header)
        for f in range(frame_count):
            rows = [[name, str(f * 1000 + i), "y" * 95] for i in range(1000)]
            expected += rows
            dest.write(frames([("".join(",".join(r) + "\n" for r in rows).encode(), len(rows), 0)]))
    delivered = []
    uploader = upload.Uploader(
        base_env[config.STORAGE], max_blocks=50_000, on_delivered=lambda rows, nbytes: delivered.append(rows)
    )

    dests = [first.destination("modeldata", folder, header), second.destination("modeldata", folder, header)]
    while any(d.has_work() for d in dests):
        assert uploader.deliver(dests, first.lease_id) == upload.DONE, uploader.last_error
    uploader.close()

    assert_exactly_once(read_files(blobs, folder), expected)
    assert sum(delivered) == 44_000
