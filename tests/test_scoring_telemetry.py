"""Request telemetry ("Enable AppInsights diagnostics"): spans in memory, over OTLP, and nothing at all when off."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import subprocess
import sys
import threading
import time
import wsgiref.util
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import collector
from scoring import app as scoring_app
from scoring import config
from scoring.stats import WorkerStatus
from tests.conftest import REPO, wait_until
from tests.test_scoring_runtime import RAISING_SCRIPT, SLEEPING_SCRIPT, start_runtime, write_script

WSGI = Callable[[dict[str, Any], Any], Any]


def call(application: WSGI, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    environ: dict[str, Any] = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ.update(
        {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    )
    for name, value in (headers or {}).items():
        environ[f"HTTP_{name.upper().replace('-', '_')}"] = value
    seen: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        seen["status"] = int(status.split()[0])

    out = b"".join(application(environ, start_response))
    return seen["status"], out


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[WSGI, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    settings = config.Settings(entry_script=str(write_script(tmp_path, RAISING_SCRIPT)), app_insights=True)
    app, application, telemetry = scoring_app.build(settings, WorkerStatus(None, collector.stats), exporter=exporter)
    assert app.wait_ready(10), app.failure
    yield application, exporter
    telemetry.shutdown()


def test_it_emits_a_span_per_request(traced) -> None:
    application, exporter = traced
    body = json.dumps({"x": 3}).encode()

    status, out = call(application, "POST", "/score", body, {"x-request-id": "req-7"})

    assert (status, json.loads(out)) == (200, {"y": 30})
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /score"
    assert span.kind == SpanKind.SERVER
    assert span.status.status_code == StatusCode.UNSET
    assert span.attributes["http.request.method"] == "POST"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["http.request.body.size"] == len(body)
    assert span.attributes["http.response.body.size"] == len(out)
    assert span.attributes["request.id"] == "req-7"
    assert span.end_time > span.start_time


def test_it_marks_failed_requests_as_errors(traced) -> None:
    application, exporter = traced

    status, _ = call(application, "POST", "/score", json.dumps({"x": -1}).encode())

    assert status == 500
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "x must be positive, not -1"
    assert span.attributes["http.response.status_code"] == 500


def test_it_skips_the_probes_and_joins_the_callers_trace(traced) -> None:
    application, exporter = traced
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    assert call(application, "GET", "/")[0] == 200
    assert call(application, "GET", "/ready")[0] == 200
    call(application, "POST", "/score", b'{"x": 1}', {"traceparent": f"00-{trace_id}-{parent_id}-01"})

    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == trace_id
    assert format(span.parent.span_id, "016x") == parent_id


def test_it_runs_no_telemetry_code_when_off(tmp_path: Path) -> None:
    # A fresh interpreter, so that nothing imported by other tests can hide an import.
    script = write_script(tmp_path, RAISING_SCRIPT)
    program = """
import io, json, sys, wsgiref.util
import collector
from scoring import app, config
from scoring.stats import WorkerStatus
a, application, telemetry = app.build(config.Settings(entry_script=sys.argv[1]), WorkerStatus(None, collector.stats))
assert telemetry is None and a.wait_ready(10), a.failure
for body in (b'{"x": 1}', b'{"x": -1}'):
    environ = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD="POST", PATH_INFO="/score", CONTENT_LENGTH=str(len(body)))
    environ["wsgi.input"] = io.BytesIO(body)
    b"".join(application(environ, lambda status, headers: None))
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("opentelemetry", "azure.monitor", "scoring.telemetry")))))
"""
    result = subprocess.run(
        [sys.executable, "-c", program, str(script)], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, body))  # type: ignore[attr-defined]
        time.sleep(self.server.answer_after)  # type: ignore[attr-defined]  # a collector far away
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []  # type: ignore[attr-defined]
    server.answer_after = 0.0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def score_spans(receiver: ThreadingHTTPServer) -> list[tuple[str, Any]]:
    """(service name, span) of each POST /score span the OTLP receiver got."""
    found = []
    for path, body in list(receiver.received):  # type: ignore[attr-defined]
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            for scope in resource_spans.scope_spans:
                found.extend((service, span) for span in scope.spans if span.name == "POST /score")
    return found


def otlp_env(receiver: ThreadingHTTPServer, **extra: str) -> dict[str, str]:
    """Telemetry on, exported over OTLP to `receiver`."""
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    return {"AML_APP_INSIGHTS_ENABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, **extra}


def test_it_exports_spans_over_otlp(tmp_path: Path, otlp_receiver: ThreadingHTTPServer) -> None:
    runtime = start_runtime(
        write_script(tmp_path, RAISING_SCRIPT),
        tmp_path,
        env=otlp_env(otlp_receiver, OTEL_BSP_SCHEDULE_DELAY="50", SERVICE_NAME="otlp-svc"),
    )
    try:
        runtime.wait_ready()
        assert runtime.score({"x": 4}) == (200, {"y": 40})
        assert runtime.status()["telemetry"] == "otlp"

        ((service, span),) = wait_until(
            lambda: score_spans(otlp_receiver), timeout=20, message="a span at the OTLP receiver"
        )
    finally:
        runtime.stop()
    attributes = {a.key: a.value for a in span.attributes}
    assert service == "otlp-svc"
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["http.request.body.size"].int_value == len(b'{"x": 4}')


def test_a_stopping_worker_flushes_its_spans_though_a_request_outlasts_the_grace_period(
    tmp_path: Path, otlp_receiver: ThreadingHTTPServer
) -> None:
    # The master kills what is left at its deadline: the worker must stop waiting for its requests before that,
    # with time left to export its buffered spans (here to a collector that takes a second to answer) and to flush
    # the collector's rows.
    otlp_receiver.answer_after = 1.0  # type: ignore[attr-defined]
    env = otlp_env(otlp_receiver, OTEL_BSP_SCHEDULE_DELAY="600000")  # exported at shutdown only
    runtime = start_runtime(
        write_script(tmp_path, SLEEPING_SCRIPT), tmp_path, env={**env, config.GRACEFUL_TIMEOUT: "4"}
    )
    try:
        runtime.wait_ready()
        assert runtime.score(f"0 {tmp_path / 'first'}") == (200, "slept")
        started = tmp_path / "second"

        def outlasting_request() -> None:
            with contextlib.suppress(OSError, http.client.HTTPException):  # cut off when the worker is killed
                runtime.request("POST", "/score", f"60 {started}")

        threading.Thread(target=outlasting_request, daemon=True).start()
        wait_until(started.exists, message="the second request in run()")
        assert score_spans(otlp_receiver) == []
    finally:
        runtime.stop()
    assert len(score_spans(otlp_receiver)) == 1  # the first request's
    assert "SIGKILL" not in runtime.log()  # the worker finished its flush


def test_it_configures_the_azure_monitor_exporter(monkeypatch) -> None:
    from scoring import telemetry

    monkeypatch.setenv("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")
    monkeypatch.setenv(
        config.APPLICATIONINSIGHTS_CONNECTION_STRING,
        "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/",
    )
    monkeypatch.delenv(config.OTLP_ENDPOINT, raising=False)

    built = telemetry.setup("svc", InMemorySpanExporter())

    assert built is not None
    assert built.exporters == ["InMemorySpanExporter", "azure-monitor"]
    built.shutdown()


def test_its_warning_that_nothing_receives_telemetry_names_the_logger_once(monkeypatch, caplog) -> None:
    # The runtime's log format already starts each line with the logger's name; the Logs page once showed
    # "scoring: scoring: AML_APP_INSIGHTS_ENABLED is on but ...".
    import logging

    from scoring import telemetry
    from scoring.cli import LOG_FORMAT

    monkeypatch.delenv(config.APPLICATIONINSIGHTS_CONNECTION_STRING, raising=False)
    monkeypatch.delenv(config.OTLP_ENDPOINT, raising=False)

    with caplog.at_level(logging.WARNING, logger="scoring"):
        assert telemetry.setup("svc") is None

    lines = [logging.Formatter(LOG_FORMAT).format(record) for record in caplog.records]
    assert any("no telemetry is sent" in line for line in lines)
    assert not any("scoring: scoring:" in line for line in lines)
