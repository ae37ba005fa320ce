"""The delivery agent (`python -m collector.agent`) uploading what other processes spool: real processes, Azurite
behind the fault proxy, kills at the worst moments."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import child_env, read_files, readline_within, rows_of, spooled_rows, wait_for
from test_collector_delivery import HEADER, assert_exactly_once
from test_collector_processes import expect_line, expected_rows, finish, spawn

import collector
from collector import ModelDataCollector, config, engine
from collector import spool as spool_module


def agent_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, config.DELIVERY: "agent"}


@pytest.fixture
def start_agent() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """start_agent(env, status_file, *args): an agent process, killed at the end of the test if still running."""
    started: list[subprocess.Popen[str]] = []

    def start(env: dict[str, str], status: Path, *args: str) -> subprocess.Popen[str]:
        agent = subprocess.Popen(
            [sys.executable, "-m", "collector.agent", "--status-file", str(status), *args],
            env=child_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()


def stop_agent(agent: subprocess.Popen[str]) -> str:
    """SIGTERM, then its log; it must exit by itself, with 0."""
    agent.send_signal(signal.SIGTERM)
    _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    return err


def status_of(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def test_it_delivers_what_live_writers_spool_each_row_once(
    base_env, proxy, proxy_url, blobs, workspace, tmp_path, start_agent
):
    # Three writers spool only; the agent appends for all of them while storage fails now and then.
    proxy.add("reset_before", every=5, times=-1)
    proxy.add("error_500", every=7, times=-1)
    proxy.add("reset_after", every=6, times=-1)
    env = {**base_env, config.STORAGE: proxy_url}
    status = tmp_path / "agent.json"
    agent = start_agent(env, status)
    writers = [spawn(agent_env(env), f"w{n}", 120, "flush", 40) for n in range(3)]
    results = [finish(w) for w in writers]

    assert all(r["flushed"] for r in results)  # flush() in a writer waits for the agent's deliveries
    assert all(r["rows_delivered"] == 0 and r["blocks_appended"] == 0 for r in results)  # none uploaded itself
    expected = [row for n in range(3) for row in expected_rows(f"w{n}", 120)]
    files = read_files(blobs, workspace)
    assert_exactly_once(files, expected)
    rows = rows_of(next(iter(files.values())))[1:]
    for n in range(3):
        assert [int(r[1]) for r in rows if r[0] == f"w{n}"] == list(range(120))
    wait_for(lambda: status_of(status).get("rows_delivered") == 360, message="the agent's counters")
    assert status_of(status)["upload_failures"] >= 3
    stop_agent(agent)


def test_one_block_per_file_and_round_carries_every_writers_rows(
    base_env, proxy, proxy_url, blobs, workspace, tmp_path, start_agent
):
    env = {**base_env, config.STORAGE: proxy_url}
    writers = [spawn(agent_env(env), f"w{n}", 50, "spool") for n in range(3)]
    for writer in writers:
        expect_line(writer, "spooled")
    status = tmp_path / "agent.json"
    agent = start_agent(env, status)
    wait_for(lambda: status_of(status).get("rows_delivered") == 150, message="the three writers' rows")

    assert_exactly_once(read_files(blobs, workspace), [r for n in range(3) for r in expected_rows(f"w{n}", 50)])
    appends = [p for m, p, _ in proxy.log if m == "PUT" and "comp=appendblock" in p]
    assert len(appends) == 2  # the header, then one block with the rows of all three
    leases = [p for m, p, _ in proxy.log if m == "PUT" and "comp=lease" in p]
    assert len(leases) == 1  # taken once for the three of them, and kept for the next rounds
    for writer in writers:
        writer.kill()
    stop_agent(agent)


def test_it_takes_over_the_spool_of_a_writer_killed_mid_way(
    base_env, proxy, proxy_url, blobs, workspace, spool_dir, start_agent
):
    proxy.refusing = True  # storage down: the rows can only be in the spool
    env = {**base_env, config.STORAGE: proxy_url}
    status = spool_dir.parent / "agent.json"
    agent = start_agent(env, status)
    writer = spawn(agent_env(env), "k", 60, "spool")
    expect_line(writer, "spooled")
    writer.kill()
    writer.wait()
    assert read_files(blobs, workspace) == {}

    proxy.refusing = False
    wait_for(lambda: status_of(status).get("rows_delivered") == 60, message="the dead writer's rows delivered")
    assert_exactly_once(read_files(blobs, workspace), expected_rows("k", 60))
    # Only the agent's own files are left (its lock, and the lease id the next agent reuses).
    wait_for(lambda: sorted(p.name for p in spool_dir.iterdir()) == [".agent-lease", ".agent.lock"], message="no spool")
    stop_agent(agent)


def test_a_new_agent_settles_the_block_a_killed_agent_left_unconfirmed(
    base_env, proxy, proxy_url, blobs, workspace, start_agent
):
    # Storage commits the block, the answer is lost, storage goes away; then the agent is killed.
    proxy.add("reset_after_then_refuse")
    env = {**base_env, config.STORAGE: proxy_url}
    writer = spawn(agent_env(env), "p", 30, "spool")
    expect_line(writer, "spooled")
    first = start_agent(env, Path(base_env[config.SPOOL_DIR]).parent / "first.json")
    wait_for(lambda: proxy.count("reset_after_then_refuse") == 1, message="the lost answer")
    first.kill()
    first.wait()
    assert_exactly_once(read_files(blobs, workspace), expected_rows("p", 30))  # it is in, once

    proxy.clear()
    status = Path(base_env[config.SPOOL_DIR]).parent / "second.json"
    second = start_agent(env, status)
    wait_for(lambda: status_of(status).get("rows_delivered") == 30, message="the block settled as delivered")
    assert_exactly_once(read_files(blobs, workspace), expected_rows("p", 30))
    appends = [p for m, p, _ in proxy.log if m == "PUT" and "comp=appendblock" in p]
    assert len(appends) == 2  # the header, and the one block: not appended again
    writer.kill()
    stop_agent(second)


def frame_kinds(segment: Path) -> list[str]:
    """The kinds of a spool segment's frames in order, "packed" or "csv", a run of one kind once (the writer may
    wake between two collect() calls and write their rows in two frames)."""
    raw, kinds, i = segment.read_bytes(), [], 0
    while i + spool_module.FRAME.size <= len(raw):
        length, rows, _ = spool_module.FRAME.unpack_from(raw, i)
        kind = "packed" if rows & spool_module.PACKED else "csv"
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
        i += spool_module.FRAME.size + length
    return kinds


def test_the_agent_writes_the_csv_of_numeric_arrays_that_writers_spool_packed(
    configure, proxy, proxy_url, blobs, workspace, spool_dir, start_agent
):
    # The writer (this process) spools numpy arrays as packed records and a list as CSV; the agent writes the
    # same CSV a process that delivers its own rows writes, once each, while storage fails now and then.
    env = configure(**{config.DELIVERY: "agent"})
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    inputs = ModelDataCollector("best_model", designation="inputs", feature_names=HEADER)
    arrays = [
        np.array([[1, 0.1, -2.5e-300]]),
        np.arange(12, dtype=np.float64).reshape(4, 3) - 6,
        np.array([np.nan, np.inf, 1 / 3]),
        pd.DataFrame({"a": [2.5, -1.0], "b": [0.0, 7.0], "c": [3.0, 4.0]}),
        np.array([[2**62, -1, 0]], dtype=np.int64),  # ints: as CSV
    ]
    expected = []
    for data in arrays:
        dc.collect(data)
        values = data.to_numpy() if isinstance(data, pd.DataFrame) else data.reshape(-1, 3)
        expected += [[repr(v) for v in row] for row in values.tolist()]
    dc.collect(["w", 1, "a list, as CSV"])
    expected.append(["w", "1", "a list, as CSV"])
    correlations = inputs.collect(np.array([[5.0, 6.0, 7.0]]))
    scores = ModelDataCollector("best_model", designation="scores", feature_names=["score"])
    scores.collect(scores.add_correlations(np.array([[0.25], [0.75]]), correlations))
    assert engine.current().spool_now()

    (segment,) = spool_dir.glob(f"*/{_destination_of(spool_dir, 'predictions')}/*.seg")
    assert frame_kinds(segment) == ["packed", "csv"]
    assert spooled_rows(segment) == expected  # as the agent reads them
    for designation in ("inputs", "scores"):
        (other,) = spool_dir.glob(f"*/{_destination_of(spool_dir, designation)}/*.seg")
        assert frame_kinds(other) == ["packed"]

    proxy.add("reset_before", every=3, times=-1)
    proxy.add("reset_after", every=4, times=-1)
    agent = start_agent({**env, config.STORAGE: proxy_url}, spool_dir.parent / "agent.json")
    assert collector.flush(60)
    files = read_files(blobs, workspace)
    predictions = {name: text for name, text in files.items() if "/predictions/" in name}
    assert_exactly_once(predictions, expected)
    (inputs_text,) = [text for name, text in files.items() if "/inputs/" in name]
    (row,) = rows_of(inputs_text)[1:]
    assert row[:3] == ["5.0", "6.0", "7.0"]
    assert row[3] == correlations["$aml_dc_correlation_id"]
    (scores_text,) = [text for name, text in files.items() if "/scores/" in name]
    assert rows_of(scores_text) == [
        ["score", *correlations],
        ["0.25", *correlations.values()],
        ["0.75", *correlations.values()],
    ]
    assert proxy.count("reset_before") + proxy.count("reset_after") >= 1
    stop_agent(agent)


def test_a_writer_writes_the_csv_itself_while_the_agent_is_behind(configure, spool_dir, monkeypatch):
    # No agent: what is spooled is all undelivered. Past the limit, the writer takes the CSV back from the agent.
    configure(**{config.DELIVERY: "agent"})
    monkeypatch.setattr(engine, "MEASURE_SECONDS", 0)
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    dc.collect(np.array([[1.0, 2.0, 3.0]]))
    assert engine.current().spool_now()
    monkeypatch.setattr(engine, "PACK_BACKLOG_BYTES", engine.current().spool_bytes())
    dc.collect(np.array([[4.0, 5.0, 6.0]]))
    assert engine.current().spool_now()

    (segment,) = spool_dir.glob("*/*/*.seg")
    assert frame_kinds(segment) == ["packed", "csv"]
    assert spooled_rows(segment) == [["1.0", "2.0", "3.0"], ["4.0", "5.0", "6.0"]]


def test_a_writer_gathers_calls_of_floats_and_keeps_the_rows_of_each_file_in_order(configure, spool_dir, monkeypatch):
    # The calls of floats of one wake go in one record per file (tabular.Calls); a call of anything else in between
    # comes after the floats before it and before those after it, as collected.
    configure(**{config.DELIVERY: "agent"})
    monkeypatch.setattr(engine, "IDLE_POLL", 3600)  # the writer takes all of the calls below in one wake
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    scores = ModelDataCollector("best_model", designation="scores", feature_names=["score"])
    correlations = {"$aml_dc_correlation_id": "c1", "$aml_dc_scoring_timestamp": "t1", "$aml_request_id": "r1"}
    dc.collect(np.array([[1.0, 2.0, 3.0]]))
    scores.collect(scores.add_correlations(np.array([0.25]), correlations))
    dc.collect(np.array([[4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]))
    dc.collect(np.array([[10, 11, 12]]))  # ints: CSV
    scores.collect(scores.add_correlations(np.array([0.5]), correlations))
    dc.collect(np.array([13.0, 14.0, 15.0]))
    dc.collect(pd.DataFrame({"x": [16.0], "y": [17.0], "z": [18.0]}))  # the same file (feature names win)
    dc.collect(np.array([19.0, 20.0, 21.0]))
    assert engine.current().spool_now()

    (segment,) = spool_dir.glob(f"*/{_destination_of(spool_dir, 'predictions')}/*.seg")
    assert frame_kinds(segment) == ["packed", "csv", "packed"]
    assert spooled_rows(segment) == [
        ["1.0", "2.0", "3.0"],
        ["4.0", "5.0", "6.0"],
        ["7.0", "8.0", "9.0"],
        ["10", "11", "12"],
        ["13.0", "14.0", "15.0"],
        ["16.0", "17.0", "18.0"],
        ["19.0", "20.0", "21.0"],
    ]
    (other,) = spool_dir.glob(f"*/{_destination_of(spool_dir, 'scores')}/*.seg")
    assert frame_kinds(other) == ["packed"]
    assert spooled_rows(other) == [["0.25", "c1", "t1", "r1"], ["0.5", "c1", "t1", "r1"]]


def test_a_request_id_of_a_str_subclass_is_spooled_as_its_text(configure, spool_dir):
    class RequestId(str):
        pass

    configure(**{config.DELIVERY: "agent"})
    inputs = ModelDataCollector("best_model", designation="inputs", feature_names=["a", "b"])
    with collector.request_context(RequestId("r-1")):
        inputs.collect(np.array([[3.0, 4.0]]))
    assert engine.current().spool_now()
    (segment,) = spool_dir.glob("*/*/*.seg")
    (row,) = spooled_rows(segment)
    assert (row[:2], row[-1]) == (["3.0", "4.0"], "r-1")
    assert collector.stats()["rows_dropped_total"] == 0


def test_a_process_that_delivers_its_own_rows_spools_csv(configure, spool_dir):
    configure()
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    dc.collect(np.array([[1.0, 2.0, 3.0]]))
    assert engine.current().spool_now()
    (segment,) = spool_dir.glob("*/*/*.seg")
    assert frame_kinds(segment) == ["csv"]


def _destination_of(spool_dir: Path, designation: str) -> str:
    """The spool folder name of the destination of `designation`'s rows."""
    for meta in spool_dir.glob("*/*/destination.json"):
        if f"/{designation}/" in json.loads(meta.read_text())["folder"]:
            return meta.parent.name
    raise AssertionError(f"no destination for {designation}")


def test_the_agent_goes_past_a_spool_file_deleted_by_something_else(
    configure, blobs, workspace, spool_dir, start_agent, monkeypatch
):
    env = configure(**{config.DELIVERY: "agent"})  # this process spools its rows; the agent delivers them
    monkeypatch.setattr(engine, "REOPEN_CHECK_SECONDS", 0.05)
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    dc.collect(["w", 0, "lost"])
    assert engine.current().spool_now()
    (segment,) = spool_dir.glob("*/*/*.seg")
    segment.unlink()  # the writer still has it open
    wait_for(lambda: len(list(spool_dir.glob("*/*/*.seg"))) == 1, 5, "the writer's new segment")
    agent = start_agent(env, spool_dir.parent / "agent.json")

    assert collector.flush(30)  # the agent moved past the deleted segment, though no row came after it
    dc.collect(["w", 1, "after"])
    assert collector.flush(30)
    assert_exactly_once(read_files(blobs, workspace), [["w", "1", "after"]])
    assert "was deleted before its rows were delivered" in stop_agent(agent)


def _frame(body: bytes, rows: int, crc: int | None = None) -> bytes:
    return spool_module.FRAME.pack(len(body), rows, zlib.crc32(body) if crc is None else crc) + body


def test_a_frame_of_packed_records_the_agent_cannot_read_loses_its_rows_only_and_is_counted_once(
    configure, blobs, workspace, spool_dir, start_agent
):
    # Whole, its crc right, its records unreadable (as a later version's format would be to this agent): the agent
    # skips that frame alone, counts its bytes once, and delivers the rows before and after it.
    env = configure(**{config.DELIVERY: "agent"})
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    dc.collect(np.array([[1.0, 2.0, 3.0]]))
    assert engine.current().spool_now()
    (segment,) = spool_dir.glob("*/*/*.seg")
    unreadable = _frame(b"\xff", 1 | spool_module.PACKED)
    with segment.open("ab") as f:
        f.write(unreadable)
    dc.collect(np.array([[4.0, 5.0, 6.0]]))
    assert engine.current().spool_now()
    status = spool_dir.parent / "agent.json"
    agent = start_agent(env, status)

    assert collector.flush(30)
    dc.collect(np.array([[7.0, 8.0, 9.0]]))  # and more rounds over the same file
    expected = [["1.0", "2.0", "3.0"], ["4.0", "5.0", "6.0"], ["7.0", "8.0", "9.0"]]
    wait_for(lambda: len(rows_of(next(iter(read_files(blobs, workspace).values()), ""))) == 4, 30, "the rows")
    assert_exactly_once(read_files(blobs, workspace), expected)
    log = stop_agent(agent)
    assert log.count("packed records this version cannot read") == 1, log
    assert status_of(status)["spool_bytes_lost"] == len(unreadable)


def test_a_block_never_holds_an_unreadable_frame() -> None:
    # A block is sent again byte for byte after a failure, maybe by the next agent; one of a later version could
    # read the frame this one skips, and would send other bytes. So the rows before and after it are separate blocks.
    before, unreadable, after = _frame(b"a,1\n", 1), _frame(b"\xff", 1 | spool_module.PACKED), _frame(b"b,2\n", 1)
    raw = before + unreadable + after
    first = spool_module.Destination._unframe(raw)
    second = spool_module.Destination._unframe(raw[first.used :])
    third = spool_module.Destination._unframe(raw[first.used + second.used :])

    assert (first.data, first.used, first.unreadable) == (b"a,1\n", len(before), [])
    assert (second.data, second.used, second.unreadable) == (b"", len(unreadable), [(0, len(unreadable))])
    assert (third.data, third.used, third.unreadable) == (b"b,2\n", len(after), [])


def test_a_damaged_frame_in_a_live_writers_file_cuts_the_file_short_once(
    configure, blobs, workspace, spool_dir, start_agent, monkeypatch
):
    # A frame whose crc is wrong: nothing after it in the file can be trusted. The agent delivers the rows before
    # it, counts the rest of the file lost, once, and what the writer adds to that file later, once; then goes on
    # in the writer's next file.
    env = configure(**{config.DELIVERY: "agent"})
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    dc.collect(["w", 1, "before"])
    assert engine.current().spool_now()
    (segment,) = spool_dir.glob("*/*/*.seg")
    damaged = _frame(b"w,2,damaged\n", 1, crc=0)
    with segment.open("ab") as f:
        f.write(damaged)
    status = spool_dir.parent / "agent.json"
    agent = start_agent(env, status)
    assert collector.flush(30)
    wait_for(lambda: status_of(status).get("spool_bytes_lost") == len(damaged), 10, "the damage counted")

    size = segment.stat().st_size
    dc.collect(["w", 3, "after it, in its file"])
    assert engine.current().spool_now()
    late = segment.stat().st_size - size
    wait_for(lambda: status_of(status).get("spool_bytes_lost") == len(damaged) + late, 10, "the late rows counted")
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 1)  # the writer's next rows go to a new file
    dc.collect(["w", 4, "in the next file"])
    assert collector.flush(30)

    assert_exactly_once(read_files(blobs, workspace), [["w", "1", "before"], ["w", "4", "in the next file"]])
    log = stop_agent(agent)
    assert log.count("is damaged at offset") == 1, log
    assert status_of(status)["spool_bytes_lost"] == len(damaged) + late


def test_a_writers_flush_waits_for_the_rows_before_a_deleted_spool_file_and_not_for_its_own(
    configure, blobs, workspace, spool_dir, start_agent, monkeypatch
):
    env = configure(**{config.DELIVERY: "agent"})
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 40)  # a few rows per segment
    monkeypatch.setattr(engine, "REOPEN_CHECK_SECONDS", 3600)  # no new segment after the deleted one
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=HEADER)
    expected = [["w", str(i), "x"] for i in range(12)]
    for row in expected:
        dc.collect(row)
        assert engine.current().spool_now()
    segments = sorted(spool_dir.glob("*/*/*.seg"))
    assert len(segments) >= 3
    lost = spooled_rows(segments[-1])
    segments[-1].unlink()

    assert not collector.flush(0.5)  # no agent yet: the rows in the files before it are still to deliver
    agent = start_agent(env, spool_dir.parent / "agent.json")
    assert collector.flush(30)
    assert_exactly_once(read_files(blobs, workspace), [row for row in expected if row not in lost])
    stop_agent(agent)


def test_a_writers_spool_folder_deleted_while_the_agent_watches_it_stops_no_other_delivery(
    base_env, proxy, proxy_url, blobs, workspace, spool_dir, start_agent
):
    proxy.refusing = True  # storage down: the rows wait in the spools
    env = {**base_env, config.STORAGE: proxy_url}
    status = spool_dir.parent / "agent.json"
    agent = start_agent(env, status)
    writers = {tag: spawn(agent_env(env), tag, 10, "spool") for tag in ("a", "b")}
    for writer in writers.values():
        expect_line(writer, "spooled")
    spooled = sum(seg.stat().st_size for seg in spool_dir.glob("*/*/*.seg"))
    wait_for(lambda: status_of(status).get("spool_bytes") == spooled, message="the agent watching both spools")
    (folder_a,) = [p for p in spool_dir.glob("*/owner.json") if json.loads(p.read_text())["pid"] == writers["a"].pid]
    shutil.rmtree(folder_a.parent)

    proxy.refusing = False
    wait_for(lambda: status_of(status).get("rows_delivered") == 10, message="b's rows delivered")
    assert_exactly_once(read_files(blobs, workspace), expected_rows("b", 10))
    for writer in writers.values():
        writer.kill()
    assert "was deleted before its rows were delivered" in stop_agent(agent)


def test_processes_that_upload_their_own_rows_leave_shared_spools_alone(
    base_env, blobs, workspace, spool_dir, start_agent
):
    # A writer's rows wait on disk for an agent; a process that delivers its own rows must not take them.
    shared_writer = spawn(agent_env(base_env), "s", 20, "spool")
    expect_line(shared_writer, "spooled")
    shared_writer.kill()
    shared_writer.wait()
    own = finish(spawn(base_env, "own", 10, "flush"))
    assert own["flushed"]
    assert own["spools_adopted"] == 0
    assert_exactly_once(read_files(blobs, workspace), expected_rows("own", 10))

    status = spool_dir.parent / "agent.json"
    agent = start_agent(base_env, status)
    wait_for(lambda: status_of(status).get("rows_delivered") == 20, message="the agent delivering them")
    assert_exactly_once(read_files(blobs, workspace), expected_rows("own", 10) + expected_rows("s", 20))
    stop_agent(agent)


def test_one_agent_per_spool_folder_and_it_exits_with_its_parent(base_env, blobs, workspace, spool_dir, start_agent):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    first = start_agent(base_env, spool_dir.parent / "first.json", "--parent", str(parent.pid))
    wait_for(lambda: (spool_dir / ".agent.lock").exists(), message="the first agent's lock")
    second = start_agent(base_env, spool_dir.parent / "second.json")
    assert second.stderr is not None
    assert "another agent delivers" in readline_within(second.stderr)

    parent.kill()
    parent.wait()
    first.wait(30)  # it noticed, delivered what there was (nothing) and exited
    assert first.returncode == 0
    assert first.stderr is not None
    assert "is gone" in first.stderr.read()
    # The second one takes over the folder.
    writer = spawn(agent_env(base_env), "after", 15, "flush")
    assert finish(writer)["flushed"]
    assert_exactly_once(read_files(blobs, workspace), expected_rows("after", 15))
    stop_agent(second)


def test_it_refuses_to_run_without_storage(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collector.agent"],
        env=child_env({config.SPOOL_DIR: str(tmp_path)}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "nothing to deliver" in result.stderr
