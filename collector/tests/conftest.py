"""Fixtures: one Azurite for the session, a fault proxy per test, and a collector configured per test.

Every test gets its own workspace id (so its blobs have their own prefix) and its own spool folder; nothing
skips when Azurite cannot start: the session fails with Azurite's own words.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from azure.storage.blob import BlobServiceClient
from faultproxy import FaultProxy

import collector
from collector import config, engine
from collector.spool import Destination
from devstack import AZURITE_ACCOUNT_KEY, start_azurite

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def azurite() -> Iterator[object]:
    service = start_azurite()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def blobs(azurite) -> BlobServiceClient:  # type: ignore[no-untyped-def]
    return BlobServiceClient.from_connection_string(azurite.url)


@pytest.fixture
def proxy(azurite) -> Iterator[FaultProxy]:  # type: ignore[no-untyped-def]
    port = azurite.url.split("BlobEndpoint=http://127.0.0.1:")[1].split("/")[0]
    p = FaultProxy(target=f"http://127.0.0.1:{port}")
    yield p
    p.close()


@pytest.fixture
def proxy_url(proxy: FaultProxy) -> str:
    return proxy.connection_string(AZURITE_ACCOUNT_KEY)


@pytest.fixture
def workspace() -> str:
    return f"sub-{uuid.uuid4().hex[:12]}/rg/ws"


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def base_env(azurite, workspace: str, spool_dir: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """What a compute driver would set, with short intervals for tests."""
    return config.environ_for(
        enabled=True,
        connection_string=azurite.url,
        workspace=workspace,
        service_name="svc",
        model_versions={"best_model": "3"},
        **{
            config.SPOOL_DIR: str(spool_dir),
            config.FLUSH_INTERVAL: "0.05",
            config.REQUEST_TIMEOUT: "2",
            config.SHUTDOWN_TIMEOUT: "5",
        },
    )


@pytest.fixture
def configure(base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., dict[str, str]]]:
    """configure(**env) sets the collector's environment for this process and applies it."""
    for name in config.ALL:
        monkeypatch.delenv(name, raising=False)

    def apply(**overrides: str) -> dict[str, str]:
        env = {**base_env, **overrides}
        for name in config.ALL:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        collector.reconfigure(timeout=5)
        engine.COUNTERS.reset()
        return env

    yield apply
    collector.reconfigure({}, timeout=5)


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.02)


def readline_within(stream: IO[str], seconds: float = 30.0) -> str:
    """The next line a child process writes to `stream` (a pipe), or fail after `seconds`: never hang the suite.
    (A thread rather than select(): a line may already wait in the stream's buffer, where select() cannot see it.)"""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    if not line:
        raise AssertionError(f"no line from the child within {seconds}s")
    return line[0]


def spooled_rows(segment: Path) -> list[list[str]]:
    """The CSV rows in a spool segment's frames, as the uploader reads them (packed records written as CSV)."""
    read = Destination._unframe(segment.read_bytes())
    assert not read.damaged, f"{segment} has a damaged frame"
    assert not read.unreadable, f"{segment} has packed records that cannot be read"
    return rows_of(read.data.decode())


def read_files(blobs: BlobServiceClient, prefix: str) -> dict[str, str]:
    container = blobs.get_container_client("modeldata")
    if not container.exists():
        return {}
    return {
        name: container.download_blob(name).readall().decode("utf-8")
        for name in container.list_blob_names(name_starts_with=prefix)
    }


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def run_child(script: str, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def child_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in config.ALL}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    base.update(env)
    return base
