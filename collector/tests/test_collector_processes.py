"""Several scoring processes, signals and kills: real child processes against Azurite through the fault proxy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import child_env, read_files, readline_within, rows_of, run_child, wait_for
from test_collector_delivery import assert_exactly_once

from collector import config

CHILD = str(Path(__file__).with_name("collector_child.py"))


def spawn(env: dict[str, str], *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, CHILD, *map(str, args)],
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def expect_line(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    got = readline_within(proc.stdout).strip()
    if got != line:
        proc.kill()
        raise AssertionError(f"child said {got!r}, not {line!r}; stderr:\n{proc.communicate()[1]}")


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def expected_rows(tag: str, n: int) -> list[list[str]]:
    return [[tag, str(i), f"{tag} row {i}"] for i in range(n)]


def test_concurrent_writers_in_several_processes_write_each_row_once(base_env, proxy, proxy_url, blobs, workspace):
    # All four share one spool folder and one file, and the storage fails now and then in every way.
    proxy.add("reset_before", every=5, times=-1)
    proxy.add("error_500", every=7, times=-1)
    proxy.add("reset_after", every=6, times=-1)
    env = {**base_env, config.STORAGE: proxy_url}
    children = [spawn(env, f"w{n}", 150, "flush", 15) for n in range(4)]
    results = [finish(c) for c in children]
    assert all(r["flushed"] for r in results)
    assert sum(r["upload_failures"] for r in results) >= 4
    assert proxy.count("reset_after") >= 2
    expected = [row for n in range(4) for row in expected_rows(f"w{n}", 150)]
    files = read_files(blobs, workspace)
    assert len(files) == 1
    assert_exactly_once(files, expected)
    # Each writer's rows stay in its own order: blocks are whole and appended in sequence.
    rows = rows_of(next(iter(files.values())))[1:]
    for n in range(4):
        assert [int(r[1]) for r in rows if r[0] == f"w{n}"] == list(range(150))


def test_processes_with_rows_of_different_widths_never_share_a_header(
    base_env, proxy, proxy_url, blobs, workspace
) -> None:
    """One file per header, whichever process starts data.csv: the other's rows go to data-<hash>.csv."""
    proxy.add("reset_after", every=5, times=-1)
    env = {**base_env, config.STORAGE: proxy_url}
    narrow, wide = spawn(env, "n", 100, "flush", 10), spawn(env, "w", 100, "flush", 10, 2)
    assert all(finish(c)["flushed"] for c in (narrow, wide))
    files = read_files(blobs, workspace)
    assert sorted(name.rsplit("/", 1)[1][:5] for name in files) == ["data-", "data."]
    by_header = {}
    for name, text in files.items():
        rows = rows_of(text)
        assert all(len(row) == len(rows[0]) for row in rows), f"rows of another width in {name}"
        assert rows.count(rows[0]) == 1, f"a second header in {name}"
        by_header[tuple(rows[0])] = sorted(rows[1:], key=lambda r: int(r[1]))
    assert by_header == {
        ("writer", "seq", "payload"): expected_rows("n", 100),
        ("writer", "seq", "payload", "feature_4", "feature_5"): [[*r, "0", "1"] for r in expected_rows("w", 100)],
    }


MANY_SHAPES = textwrap.dedent(
    """
    import json, os, resource, sys
    limit, widths, hog = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["hog"]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    import collector
    from collector import ModelDataCollector, engine

    dc = ModelDataCollector("best_model", designation="predictions")
    for round in range(2):  # the second round writes to every destination again, after it was let go
        held = []
        if hog and round == 1:  # the script takes every descriptor left (its own files, the server's sockets)
            try:
                while True:
                    held.append(open(os.devnull))
            except OSError:
                pass
        for width in range(1, widths + 1):
            dc.collect([round, *range(1, width)])  # a 1-D prediction of `width` values: one row, a shape of its own
        engine.current().spool_now()
        for f in held:
            f.close()
        collector.flush(60)
    open(os.devnull).close()  # the scoring script can still open files
    print(json.dumps({**collector.stats(), "open_fds": len(os.listdir("/proc/self/fd"))}))
    """
)


def test_a_process_with_more_shapes_than_open_files_keeps_every_row(base_env, blobs, workspace) -> None:
    """Each shape of row is a spool destination with its own files: a service whose predictions come in hundreds of
    widths must not run its process out of file descriptors (its sockets and the script's files share the limit)
    nor lose rows."""
    limit, widths = 64, 150
    done = run_child(MANY_SHAPES, base_env, str(limit), str(widths), timeout=120)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["rows_dropped_total"] == 0, stats["last_error"]
    assert stats["rows_delivered"] == 2 * widths
    assert stats["open_fds"] < limit
    files = read_files(blobs, workspace)
    assert len(files) == widths
    for name, text in files.items():
        header, *rows = rows_of(text)
        assert sorted(rows) == [[str(r), *map(str, range(1, len(header)))] for r in range(2)], name


def test_a_process_at_its_open_file_limit_spools_its_rows_in_the_files_it_has(base_env, blobs, workspace) -> None:
    """The script holds every descriptor the process may have: the spool writer closes its least recently written
    segments to open the ones it needs, rather than drop the rows."""
    limit, widths = 64, 40
    done = run_child(MANY_SHAPES, base_env, str(limit), str(widths), "hog", timeout=120)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["rows_dropped_total"] == 0, stats["last_error"]
    assert stats["rows_delivered"] == 2 * widths
    files = read_files(blobs, workspace)
    assert len(files) == widths
    for name, text in files.items():
        header, *rows = rows_of(text)
        assert sorted(rows) == [[str(r), *map(str, range(1, len(header)))] for r in range(2)], name


def test_sigterm_flushes_before_the_process_dies(base_env, blobs, workspace) -> None:
    env = {**base_env, config.FLUSH_INTERVAL: "60"}  # nothing would be uploaded for a minute
    child = spawn(env, "t", 40, "wait")
    expect_line(child, "ready")
    child.send_signal(signal.SIGTERM)
    child.wait(30)
    assert child.returncode == -signal.SIGTERM  # it still dies of the signal, as it would have
    assert_exactly_once(read_files(blobs, workspace), expected_rows("t", 40))


def test_a_normal_exit_flushes(base_env, blobs, workspace, spool_dir) -> None:
    env = {**base_env, config.FLUSH_INTERVAL: "60"}
    child = spawn(env, "e", 25, "exit")
    assert child.wait(30) == 0, child.communicate()[1]
    assert_exactly_once(read_files(blobs, workspace), expected_rows("e", 25))
    assert list(spool_dir.iterdir()) == []  # a delivered spool is removed


def test_after_a_hard_kill_the_next_process_delivers_the_spool(base_env, proxy, proxy_url, blobs, workspace, spool_dir):
    proxy.refusing = True  # storage down: the rows can only be in the spool
    env = {**base_env, config.STORAGE: proxy_url}
    child = spawn(env, "k", 60, "spool")
    expect_line(child, "spooled")
    child.kill()
    child.wait()
    assert read_files(blobs, workspace) == {}
    proxy.refusing = False
    result = finish(spawn(env, "next", 0, "adopt"))
    assert result["spools_adopted"] == 1
    assert result["flushed"]
    assert_exactly_once(read_files(blobs, workspace), expected_rows("k", 60))
    assert list(spool_dir.iterdir()) == []


def test_a_block_committed_just_before_a_kill_is_not_sent_again(base_env, proxy, proxy_url, blobs, workspace):
    # Storage commits the block, the answer is lost, storage goes away; then the process is killed.
    proxy.add("reset_after_then_refuse")
    env = {**base_env, config.STORAGE: proxy_url}
    child = spawn(env, "p", 30, "spool")
    expect_line(child, "spooled")
    wait_for(lambda: proxy.count("reset_after_then_refuse") == 1, message="the lost answer")
    child.kill()
    child.wait()
    assert_exactly_once(read_files(blobs, workspace), expected_rows("p", 30))  # it is in, once
    proxy.clear()
    result = finish(spawn(env, "next", 0, "adopt"))
    assert result["flushed"]
    assert result["rows_delivered"] == 30, result  # settled as delivered, not appended again
    assert_exactly_once(read_files(blobs, workspace), expected_rows("p", 30))
    appends = [p for m, p, _ in proxy.log if m == "PUT" and "comp=appendblock" in p]
    assert len(appends) == 2  # the header, and the one block


def test_the_legacy_import_path_coexists_with_other_azureml_packages(tmp_path: Path) -> None:
    # One distribution as a PEP 420 namespace portion, one in the pkgutil style azureml-core used.
    (tmp_path / "ns" / "azureml" / "other").mkdir(parents=True)
    (tmp_path / "ns" / "azureml" / "other" / "__init__.py").write_text("NAME = 'other'\n")
    (tmp_path / "pk" / "azureml" / "core").mkdir(parents=True)
    (tmp_path / "pk" / "azureml" / "__init__.py").write_text(
        "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"
    )
    (tmp_path / "pk" / "azureml" / "core" / "__init__.py").write_text("NAME = 'core'\n")
    script = textwrap.dedent(
        """
        import sys
        import azureml.monitoring, azureml.{0}
        from azureml.monitoring import ModelDataCollector
        from collector import ModelDataCollector as Same
        assert ModelDataCollector is Same
        assert "azureml.core.model" not in sys.modules  # the retired SDK is not needed
        print(azureml.{0}.NAME)
        """
    )
    for folder, name in (("ns", "other"), ("pk", "core")):
        env = {**os.environ, "PYTHONPATH": str(tmp_path / folder)}
        done = subprocess.run([sys.executable, "-c", script.format(name)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == name


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_sigterm_hands_on_to_the_previous_handler(base_env, blobs, workspace, signum) -> None:
    # A server with its own SIGTERM handler (gunicorn's worker, say) keeps it; atexit then delivers.
    script = textwrap.dedent(
        """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda s, f: sys.exit(3))
        from collector import ModelDataCollector
        dc = ModelDataCollector("best_model", designation="predictions", feature_names=["writer", "seq", "payload"])
        for i in range(10):
            dc.collect(["h", i, f"h row {i}"])
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    env = child_env({**base_env, config.FLUSH_INTERVAL: "60"})
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    started = time.monotonic()
    child.send_signal(signum)
    assert child.wait(30) == 3
    assert time.monotonic() - started < 10
    assert_exactly_once(read_files(blobs, workspace), expected_rows("h", 10))
