"""The local compute target: scoring-runtime processes started, restarted, found again, stopped, and watched."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from deployments.compute import DesiredSpec, ModelRef, PermanentError, RolloutState, local
from deployments.compute.local import LocalDriver
from tests.conftest import REPO, wait_until
from tests.test_scoring_runtime import SLEEPING_SCRIPT, SLOW_INIT_SCRIPT, write_script

EXAMPLES = REPO / "examples"
SECRET_NAME = "BLOB_CONNECTION_STRING"


@pytest.fixture
def drivers(tmp_path: Path, azurite: str) -> Iterator[Any]:
    """Builds drivers on one state dir (as portal restarts would); stops whatever they started at the end."""
    made: list[LocalDriver] = []

    def make(**kwargs: Any) -> LocalDriver:
        driver = LocalDriver(tmp_path / "services", secrets={SECRET_NAME: azurite}, **kwargs)
        made.append(driver)
        return driver

    yield make
    if made:
        made[0].stop_all()


def sample_spec(**changes: Any) -> DesiredSpec:
    spec = DesiredSpec(
        update_id=1,
        service_id=7,
        service_name="sample-svc",
        workspace_path="sub-1/rg-1/ws-1",
        models=(ModelRef("sample-model", "1", str(EXAMPLES / "sample_model")),),
        entry_script=str(EXAMPLES / "score.py"),
        storage_secret=SECRET_NAME,
    )
    return dataclasses.replace(spec, **changes)


def healthy(driver: LocalDriver, spec: DesiredSpec, timeout: float = 30) -> RolloutState:
    def settled() -> RolloutState | None:
        state = driver.rollout_state(spec)
        if state.status == "Failed":
            pytest.fail(f"the rollout failed: {state.reason}\n{driver.logs(spec, 50)}")
        return state if state.finished else None

    return wait_until(settled, timeout=timeout, message=f"update {spec.update_id} to be Healthy")


def score(url: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=(EXAMPLES / "sample_request.json").read_bytes(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def state_file(driver: LocalDriver, spec: DesiredSpec) -> dict[str, Any]:
    return json.loads((driver.state_dir / f"service-{spec.service_id}" / "state.json").read_text())


def test_it_starts_a_service_that_becomes_healthy_and_scores(drivers) -> None:
    driver = drivers()
    spec = sample_spec()

    driver.apply(spec)

    assert driver.rollout_state(spec).status == "Transitioning"
    state = healthy(driver, spec)
    assert state.status == "Healthy"
    assert state.scoring_url.startswith("http://127.0.0.1:")
    status, answer = score(state.scoring_url)
    assert status == 200
    assert len(answer) == 2


def test_its_log_says_where_it_serves_and_no_line_with_an_empty_address(drivers) -> None:
    driver = drivers()
    spec = sample_spec()
    driver.apply(spec)
    url = healthy(driver, spec).scoring_url

    log = driver.logs(spec, 50)  # what the service's Logs page shows

    master = state_file(driver, spec)["pid"]
    assert f"[{master}] [INFO] scoring: serving {EXAMPLES / 'score.py'} on {url.removesuffix('/score')} " in log
    # gunicorn's master named no socket there (its workers listen, each on its own): "Listening at:  (<pid>)".
    assert not re.search(r"Listening at: *\(", log), log


def test_it_collects_into_storage_with_the_resolved_secret(drivers, blob_container, azurite) -> None:
    driver = drivers()
    spec = sample_spec(collect_model_data=True, environment={"AML_MODEL_DC_CONTAINER": blob_container.container_name})
    driver.apply(spec)
    url = healthy(driver, spec).scoring_url

    score(url)

    prefix = "sub-1/rg-1/ws-1/sample-svc/sample-model/1/inputs/"
    wait_until(lambda: list(blob_container.list_blobs(name_starts_with=prefix)), message="collected inputs")
    # The connection string went to the process, never to a file of the state dir.
    secret = azurite.encode()
    for path in driver.state_dir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
    with open(f"/proc/{state_file(driver, spec)['pid']}/environ", "rb") as environ:
        assert b"AML_MODEL_DC_STORAGE=" + secret in environ.read().split(b"\0")


def test_services_with_diagnostics_on_send_their_telemetry_and_only_they_get_its_secret(drivers) -> None:
    received: list[str] = []

    class Collector(http.server.BaseHTTPRequestHandler):  # an OTLP/HTTP receiver: what an exporter POSTs
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    secret = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"
    driver = drivers(environ={"APPLICATIONINSIGHTS_CONNECTION_STRING": secret})
    endpoint = f"http://127.0.0.1:{receiver.server_port}"
    on = sample_spec(
        enable_app_insights=True,
        environment={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    off = sample_spec(update_id=2, service_id=8, service_name="quiet-svc")
    try:
        driver.apply(on)
        driver.apply(off)
        assert score(healthy(driver, on).scoring_url)[0] == 200
        healthy(driver, off)

        wait_until(lambda: "/v1/traces" in received, timeout=20, message="the request's span at the OTLP receiver")
        environ = {
            spec.service_name: Path(f"/proc/{state_file(driver, spec)['pid']}/environ").read_bytes()
            for spec in (on, off)
        }
        assert secret.encode() in environ["sample-svc"]
        assert secret.encode() not in environ["quiet-svc"]  # a secret goes only where it is used
    finally:
        receiver.shutdown()


def test_it_does_nothing_when_the_same_update_is_applied_again(drivers) -> None:
    driver = drivers()
    spec = sample_spec()
    driver.apply(spec)
    healthy(driver, spec)
    pid = state_file(driver, spec)["pid"]

    driver.apply(spec)  # a redelivered task
    driver.apply(dataclasses.replace(spec, update_id=2))  # a new update with the same settings

    assert state_file(driver, spec)["pid"] == pid
    assert state_file(driver, spec)["update_id"] == 2
    assert healthy(driver, dataclasses.replace(spec, update_id=2)).status == "Healthy"


def test_it_finds_its_processes_again_after_a_portal_restart(drivers) -> None:
    spec = sample_spec()
    first = drivers()
    first.apply(spec)
    url = healthy(first, spec).scoring_url
    pid = state_file(first, spec)["pid"]

    again = drivers()  # what a restarted portal builds

    assert again.rollout_state(spec) == RolloutState("Healthy", "", url)
    again.apply(spec)
    assert state_file(again, spec)["pid"] == pid
    assert score(url)[0] == 200


def test_it_restarts_with_new_settings(drivers, blob_container) -> None:
    driver = drivers()
    spec = sample_spec(environment={"AML_MODEL_DC_CONTAINER": blob_container.container_name})
    driver.apply(spec)
    url = healthy(driver, spec).scoring_url
    old_pid, probe_port = state_file(driver, spec)["pid"], state_file(driver, spec)["probe_port"]

    update = dataclasses.replace(spec, update_id=2, collect_model_data=True, replicas=2)
    driver.apply(update)

    assert driver.rollout_state(spec).reason == "superseded by update 2"
    state = healthy(driver, update)
    assert state.scoring_url == url  # the same port again
    assert state_file(driver, update)["probe_port"] == probe_port  # though the probes left it in TIME_WAIT
    assert state_file(driver, update)["pid"] != old_pid
    assert not Path(f"/proc/{old_pid}").exists() or "Z" in Path(f"/proc/{old_pid}/stat").read_text().split()[2]
    with urllib.request.urlopen(url.replace("/score", "/status"), timeout=10) as response:
        status = json.loads(response.read())
    assert len(status["workers"]) == 2
    assert status["collector"]["mode"] == "upload"


def test_it_reports_a_crash_with_the_reason(drivers) -> None:
    driver = drivers()
    spec = sample_spec()
    driver.apply(spec)
    healthy(driver, spec)

    os.kill(state_file(driver, spec)["pid"], signal.SIGKILL)

    state = wait_until(
        lambda: (s := driver.rollout_state(spec)).status == "Failed" and s, message="the crash to be seen"
    )
    assert state.reason.startswith("the process was killed by SIGKILL")
    # Applying again starts it anew.
    driver.apply(spec)
    assert healthy(driver, spec).status == "Healthy"


FAILING_SCRIPT = """
    import os
    def init():
        raise RuntimeError("weights file " + os.environ["AZUREML_MODEL_DIR"] + "/w.bin is corrupt")

    def run(raw_data):
        return None
"""


def test_it_fails_with_the_init_error_from_the_log(drivers, tmp_path: Path) -> None:
    driver = drivers()
    spec = sample_spec(entry_script=str(write_script(tmp_path, FAILING_SCRIPT)))

    driver.apply(spec)

    state = wait_until(lambda: (s := driver.rollout_state(spec)).finished and s, timeout=30, message="a result")
    assert state.status == "Failed"
    assert state.reason.startswith("the process exited with code 3: init() raised RuntimeError: weights file ")
    assert state.reason.endswith("services/service-7/models/sample-model/1/w.bin is corrupt")


def test_it_fails_a_service_that_never_becomes_ready(drivers, tmp_path: Path) -> None:
    driver = drivers(ready_timeout=1.0)
    spec = sample_spec(
        entry_script=str(write_script(tmp_path, SLOW_INIT_SCRIPT)),
        environment={"RELEASE_FILE": str(tmp_path / "never")},
    )

    driver.apply(spec)

    state = wait_until(lambda: (s := driver.rollout_state(spec)).finished and s, timeout=30, message="a result")
    assert state.status == "Failed"
    assert state.reason.startswith("not ready within 1s: ")


def test_a_service_busy_for_longer_than_the_ready_timeout_stays_healthy(drivers, tmp_path: Path) -> None:
    # Its one request thread is in run() for seconds: on the main port GET /ready would wait behind it, past the
    # driver's 2 s, and the service would be reported Failed. The driver asks on the runtime's probe port.
    driver = drivers(ready_timeout=1.0)
    spec = sample_spec(entry_script=str(write_script(tmp_path, SLEEPING_SCRIPT)), environment={"SCORING_THREADS": "1"})
    driver.apply(spec)
    url = healthy(driver, spec).scoring_url
    started = tmp_path / "started"
    busy = ThreadPoolExecutor(1)
    answer = busy.submit(urllib.request.urlopen, urllib.request.Request(url, data=f"6 {started}".encode()), timeout=30)
    wait_until(started.exists, message="a request in run()")
    wait_until(lambda: time.time() - state_file(driver, spec)["started_at"] > 1.5, message="the ready timeout past")

    state = driver.rollout_state(spec)

    assert (state.status, state.scoring_url) == ("Healthy", url)
    assert state_file(driver, spec)["probe_port"] not in (None, state_file(driver, spec)["port"])
    assert answer.result(timeout=30).status == 200
    busy.shutdown()


def test_it_stops_and_removes_a_service(drivers) -> None:
    driver = drivers()
    spec = sample_spec()
    driver.apply(spec)
    url = healthy(driver, spec).scoring_url
    pid = state_file(driver, spec)["pid"]

    driver.remove(spec)
    driver.remove(spec)  # already gone: not an error

    assert not (driver.state_dir / "service-7").exists()
    assert driver.rollout_state(spec).status == "Failed"
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        score(url)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_it_stops_all_services_and_starts_them_again_on_apply(drivers) -> None:
    driver = drivers()
    specs = [sample_spec(), sample_spec(service_id=8, service_name="other-svc")]
    for spec in specs:
        driver.apply(spec)
    for spec in specs:
        healthy(driver, spec)

    assert sorted(driver.stop_all()) == [7, 8]

    for spec in specs:
        assert driver.rollout_state(spec).reason.startswith("stopped when the portal shut down")
    driver.apply(specs[0])
    assert healthy(driver, specs[0]).status == "Healthy"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"entry_script": "/nowhere/score.py"}, "entry script /nowhere/score.py does not exist"),
        ({"collect_model_data": True, "storage_secret": "OTHER"}, "storage secret 'OTHER' is not known"),
        ({"collect_model_data": True, "storage_secret": ""}, "needs a storage secret"),
        ({"models": (ModelRef("m", "1", "/nowhere"),)}, "model m:1 has no files"),
        ({"models": (ModelRef("../m", "1", str(EXAMPLES)),)}, "model name '../m' must be"),
        ({"replicas": 0}, "replicas must be between 1 and 64"),
    ],
)
def test_it_refuses_a_spec_it_cannot_run(drivers, changes: dict[str, Any], message: str) -> None:
    driver = drivers()

    with pytest.raises(PermanentError, match=message):
        driver.apply(sample_spec(**changes))

    assert not (driver.state_dir / "service-7" / "state.json").exists()


@pytest.mark.parametrize(
    ("content", "lines", "max_bytes", "tail"),
    [
        (b"aaaa\nbbbb\ncccc\n", 5, 10, ["bbbb", "cccc"]),  # the read begins a line: it stays
        (b"aaaa\nbbbb\ncccc\n", 5, 8, ["cccc"]),  # it begins inside "bbbb": that goes
        (b"aaaa\nbbbb\ncccc", 2, 100, ["bbbb", "cccc"]),  # no newline at the end
        (b"x" * 100 + b"\n", 5, 10, ["…" + "x" * 9]),  # one line longer than the read: its end, marked
        (b"10%\r50%\r100%\ndone\n", 2, 100, ["10%\r50%\r100%", "done"]),  # "\r" does not end a line
        (b"caf\xc3\xa9\n\xe9t\xe9\n", 5, 100, ["café", "\ufffdt\ufffd"]),  # not UTF-8: replaced, not an error
        (b"", 5, 100, []),
    ],
)
def test_the_tail_of_a_log_is_its_last_whole_lines(
    tmp_path: Path, content: bytes, lines: int, max_bytes: int, tail: list[str]
) -> None:
    log = tmp_path / "runtime.log"
    log.write_bytes(content)

    assert local._tail(log, lines, max_bytes=max_bytes) == tail
