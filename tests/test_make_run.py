"""`make run` as a new user meets it: the printed URL and credentials log in, in Chromium, and Ctrl-C stops all."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

import devstack
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parent.parent


class RunCommand:
    """`python -m devstack.run` (what `make run` runs) in a fresh state folder, its output read line by line."""

    def __init__(self, var_dir: Path) -> None:
        self.port = devstack.free_port()
        self.var_dir = var_dir
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BLOB_CONNECTION_STRING", "REDIS_URL")}
        env.update(PORT=str(self.port), VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1")
        env.pop("DJANGO_SUPERUSER_PASSWORD", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devstack.run"],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 90) -> re.Match[str]:
        def seen() -> re.Match[str] | None:
            while not self.lines.empty():
                self.output.append(self.lines.get())
            return next(filter(None, (re.search(pattern, line) for line in self.output)), None)

        if self.process.poll() is not None and not seen():
            pytest.fail("make run exited:\n" + "".join(self.output))
        return wait_until(seen, timeout=timeout, interval=0.1, message=f"{pattern!r} in make run's output")

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(30)


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[RunCommand]:
    run = RunCommand(tmp_path / "var")
    yield run
    if run.process.poll() is None:
        run.process.kill()


def _port_is_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.browser
def test_it_logs_in_with_the_printed_credentials_and_shows_the_demo_workspace(make_run: RunCommand, page: Page) -> None:
    url = make_run.wait_for(r"Tributary is running at (http://\S+)").group(1)
    password = make_run.wait_for(r"Log in as admin with the generated password: (\S+)").group(1)
    assert url == f"http://127.0.0.1:{make_run.port}/"

    page.goto(url)
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()

    expect(page.get_by_role("heading", name="Workspaces")).to_be_visible()
    expect(page.get_by_role("link", name="demo", exact=True)).to_be_visible()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Deployments").click()
    expect(page.get_by_role("heading", name="Deployments")).to_be_visible()

    # The demo service runs on this machine: its page follows the deployment until it is Healthy.
    page.get_by_role("link", name="demo-scoring").click()
    expect(page.get_by_test_id("service-state")).to_have_text("Healthy", timeout=90_000)
    page.reload()
    scoring_url = page.locator("dd code").first.inner_text()
    request = urllib.request.Request(scoring_url, data=(REPO / "examples" / "sample_request.json").read_bytes())
    with urllib.request.urlopen(request, timeout=30) as response:
        assert len(json.load(response)) == 2

    # Its two rows reach blob storage within seconds, and the Data page previews them.
    page.get_by_role("link", name="Data", exact=True).click()
    day = datetime.now(UTC).strftime("%Y/%m/%d")
    data_page = page.url.split("?")[0]  # the workspace's Data page, opened at the service's folder
    preview = f"{data_page}preview/?blob=demo-scoring/sample-model/1/inputs/{day}/data.csv"

    def rows_shown() -> bool:
        page.goto(preview)
        return page.locator("table.csv").first.locator("tbody tr td:not(.empty)").count() > 0

    wait_until(rows_shown, timeout=30, interval=0.5, message="the collected rows in the preview")
    expect(page.locator("table.csv").first.locator("tbody tr")).to_have_count(2)

    # Celery beat runs in the worker (it re-enqueues updates that crashes left behind): its schedule is kept.
    assert list(make_run.var_dir.glob("celerybeat-schedule*"))

    assert make_run.interrupt() == 0
    make_run.wait_for(r"\[tributary\] stopping")
    assert _port_is_closed(make_run.port)


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live process."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            found[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
    return found


def _groups_started_by(pid: int) -> set[int]:
    """The process groups of what `pid` started: each service make run starts leads a session of its own."""
    processes = _processes()
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        children = {child for child, (ppid, _) in processes.items() if ppid == parent}
        todo.extend(children - found)
        found |= children
    return {processes[child][1] for child in found if child in processes}


def test_a_second_signal_while_it_stops_does_not_leave_anything_running(make_run: RunCommand) -> None:
    make_run.wait_for(r"Tributary is running at")
    redis_port = int(make_run.wait_for(r"Redis: started a private server at redis://[^:]+:(\d+)").group(1))
    groups = _groups_started_by(make_run.process.pid) - {make_run.process.pid}
    assert len(groups) >= 4  # Redis, Azurite, the worker, the web server (and the local services)

    make_run.process.send_signal(signal.SIGTERM)
    make_run.wait_for(r"\[tributary\] stopping")
    make_run.process.send_signal(signal.SIGTERM)  # while it stops what it started
    make_run.process.send_signal(signal.SIGINT)

    assert make_run.process.wait(60) == 0
    assert _port_is_closed(make_run.port)
    assert _port_is_closed(redis_port)
    # Nothing of theirs is left, a child forked after the groups were read (Celery's beat, say) included.
    assert not [pid for pid, (_, group) in _processes().items() if group in groups]
