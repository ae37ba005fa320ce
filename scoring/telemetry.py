"""Request telemetry with OpenTelemetry ("Enable AppInsights diagnostics"), imported only when it is on.

With `AML_APP_INSIGHTS_ENABLED=true`, every request except the liveness and readiness probes becomes a SERVER
span named like `POST /score`, carrying the HTTP method, path, status code, request and response body sizes and
the request id; its duration is the span's. A 5xx answer sets the span's status to ERROR with the message. Spans go
to Azure Monitor when `APPLICATIONINSIGHTS_CONNECTION_STRING` is set and over OTLP/HTTP when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set (both, if both are). An incoming W3C `traceparent` header is honoured, and the
provider is made global, so spans that the scoring script makes itself nest under the request's span.

With telemetry off, none of this module's code, nor OpenTelemetry, is imported or runs on the request path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from scoring import config

log = logging.getLogger("scoring")

# (environ) -> (status, headers, body, message): the runtime's request handler, see scoring.app.
Handler = Callable[[dict[str, Any]], tuple[int, list[tuple[str, str]], bytes, str]]


class Telemetry:
    """A tracer and the processors behind it; `shutdown()` flushes what is buffered."""

    def __init__(self, provider: Any, exporters: list[str]) -> None:
        from opentelemetry import propagate, trace

        self.provider = provider
        self.exporters = exporters
        self.tracer = provider.get_tracer("scoring")
        self._extract = propagate.extract
        self._server = trace.SpanKind.SERVER
        self._error = trace.Status(trace.StatusCode.ERROR)
        self._status = trace.Status
        self._status_error = trace.StatusCode.ERROR

    def traced(self, handler: Handler, skip: Iterable[tuple[str, str]]) -> Handler:
        """`handler`, with one span per request (except the (method, path) pairs in `skip`)."""
        skip = frozenset(skip)
        tracer, extract, server = self.tracer, self._extract, self._server

        def handle(environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes, str]:
            method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
            if (method, path) in skip:
                return handler(environ)
            carrier = {}
            if "HTTP_TRACEPARENT" in environ:
                carrier["traceparent"] = environ["HTTP_TRACEPARENT"]
                carrier["tracestate"] = environ.get("HTTP_TRACESTATE", "")
            with tracer.start_as_current_span(
                f"{method} {path}", context=extract(carrier) if carrier else None, kind=server
            ) as span:
                status, headers, body, message = handler(environ)
                span.set_attributes(
                    {
                        "http.request.method": method,
                        "url.path": path,
                        "http.route": path,
                        "http.response.status_code": status,
                        "http.request.body.size": int(environ.get("CONTENT_LENGTH") or 0),
                        "http.response.body.size": len(body),
                        "request.id": environ.get("scoring.request_id", ""),
                    }
                )
                if status >= 500:
                    span.set_status(self._status(self._status_error, message or f"HTTP {status}"))
                return status, headers, body, message

        return handle

    def shutdown(self) -> None:
        try:
            self.provider.shutdown()
        except Exception as exc:
            log.warning("telemetry did not shut down cleanly: %s", exc)


def setup(service_name: str, exporter: Any = None) -> Telemetry | None:
    """Build the tracer from the environment, or around `exporter` (tests pass an in-memory one).

    Returns None, after a warning, when no exporter is configured: spans that go nowhere are not worth their cost.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    names = []
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        names.append(type(exporter).__name__)
    connection_string = os.environ.get(config.APPLICATIONINSIGHTS_CONNECTION_STRING, "").strip()
    if connection_string:
        from azure.monitor.opentelemetry.exporter import AzureMonitorTraceExporter

        provider.add_span_processor(
            BatchSpanProcessor(AzureMonitorTraceExporter.from_connection_string(connection_string))
        )
        names.append("azure-monitor")
    if os.environ.get(config.OTLP_ENDPOINT, "").strip():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        names.append("otlp")
    if not names:
        log.warning(
            "%s is on but neither %s nor %s is set: no telemetry is sent",
            config.APP_INSIGHTS_ENABLED,
            config.APPLICATIONINSIGHTS_CONNECTION_STRING,
            config.OTLP_ENDPOINT,
        )
        return None
    if exporter is None:  # tests build several providers in one process; the global one can be set only once
        trace.set_tracer_provider(provider)
    return Telemetry(provider, names)
