"""The scoring runtime's WSGI application: one per worker process.

    GET  /         liveness: 200 "Healthy" as soon as the worker runs (even while init() works)
    GET  /ready    200 once init() has returned in every worker, then while one is; 503 with the reason before
    GET  /status   JSON: request counts, latency percentiles, the collector's counters, the workers
    GET  /swagger.json  the API document of a run() with inference_schema decorators (`?version=2`, `3`, `3.1`);
                   404 saying why for other scripts. No key needed, as with azmlinfsrv: it describes, it does not score
    POST /score    the body, as a string, to run(); its return value answered as JSON (with
                   SCORING_KEY_HASHES set, only for `Authorization: Bearer <key>` of one of the service's keys)

The script is imported and its init() called in a background thread, so the probes answer during a long model
load. A score request that arrives before init() has returned waits for it (up to `INIT_WAIT` seconds). run()
raising is answered 500 with the exception's message, and logged with its traceback; the collector never raises
into run(), so a collection problem never fails a request.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import collector
from scoring import config, swagger
from scoring import script as scripts
from scoring.config import Settings
from scoring.stats import WorkerStatus

log = logging.getLogger("scoring")

INIT_WAIT = 60.0
MAX_REQUEST_ID = 100  # characters, as azmlinfsrv
PROBES = (("GET", "/"), ("HEAD", "/"), ("GET", "/ready"), ("HEAD", "/ready"))

Response = tuple[int, list[tuple[str, str]], bytes, str]

_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}
_JSON = ("Content-Type", "application/json")
_TEXT = ("Content-Type", "text/plain; charset=utf-8")


def _json_default(value: Any) -> Any:
    """JSON for what scoring scripts commonly return besides plain Python: numpy and pandas values, bytes, dates."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and hasattr(value, "columns"):  # a pandas DataFrame: a list of row objects
        return to_dict(orient="records")
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, pandas Series
    if callable(tolist):
        return tolist()
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    raise TypeError(f"run() returned a {type(value).__name__}, which cannot be answered as JSON")


def _error(status: int, message: str, **extra: Any) -> Response:
    body = json.dumps({"message": message, **extra}).encode()
    return status, [_JSON], body, message


class ScoringApp:
    """Serves one entry script in this process. `start()` loads it; `handle(environ)` answers one request."""

    def __init__(
        self,
        settings: Settings,
        status: WorkerStatus,
        *,
        on_fatal: Callable[[str], None] | None = None,
        telemetry: str = "off",
    ) -> None:
        self.settings = settings
        self.status = status
        self.telemetry = telemetry
        self.script: scripts.EntryScript | None = None
        self.failure = ""
        # GET /swagger.json: the encoded documents by version, built once after init(); or why there are none.
        self.swagger: dict[str, bytes] = {}
        self.no_swagger = ""
        self._ready = threading.Event()
        self._on_fatal = on_fatal
        # One run() at a time by default, as the legacy runtime: scripts keep module globals and are rarely thread-safe.
        n = settings.run_concurrency
        self._gate: Any = threading.Lock() if n == 1 else threading.BoundedSemaphore(n)
        # The run() calls under way: when each started (time.monotonic()) and for which request, by thread.
        self.running: dict[int, tuple[float, str]] = {}
        # Set when the worker gives up on a stuck run(): requests waiting for their turn at run() then answer 503
        # instead of waiting for a gate that the stuck call holds for good.
        self.stopping = threading.Event()

    # -- loading -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Import the script and call init() in a background thread (the probes answer meanwhile)."""
        threading.Thread(target=self._load, name="scoring-init", daemon=True).start()

    def _load(self) -> None:
        started = time.monotonic()
        stage = "loading the entry script raised"
        try:
            loaded = scripts.load(self.settings.entry_script)
            stage = "init() raised"
            log.info("calling init() of %s", loaded.path)
            loaded.init()
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from a script are failures too
            reason = f"{stage} {type(exc).__name__}: {exc}".rstrip(": ")
            log.error("init failed", exc_info=exc)
            # The compute drivers look for this marker to report why the service failed.
            log.error("FAILED: %s", reason)
            self.failure = reason
            self.status.init_error = reason
            self.status.publish()
            self._ready.set()
            if self._on_fatal is not None:
                self._on_fatal(reason)
            return
        self._build_swagger(loaded)
        self.script = loaded
        self.status.note_ready()
        self._ready.set()
        log.info("init() returned in %.2fs; ready", time.monotonic() - started)

    def _build_swagger(self, loaded: scripts.EntryScript) -> None:
        if not loaded.schema_decorated:
            self.no_swagger = swagger.NOT_DECORATED
            return
        title = os.environ.get(collector.config.SERVICE_NAME) or "ML service"  # azmlinfsrv's default title
        try:
            documents = swagger.generate(loaded.run, title=title, key_required=self.settings.key_hashes is not None)
            self.swagger = {v: json.dumps(d, default=_json_default).encode() for v, d in documents.items()}
        except Exception as exc:
            # The service scores all the same: only its document is missing, and a 404 says why (a 500 would invite
            # retries of what fails every time).
            log.error("cannot generate the swagger document from run()'s decorators", exc_info=exc)
            self.no_swagger = (
                f"Swagger not found: generating it from run()'s decorators raised {type(exc).__name__}: {exc}"
            )

    def wait_ready(self, timeout: float | None) -> bool:
        """Wait for init() to return (None: for as long as it takes): True if it did, False if it failed."""
        return self._ready.wait(timeout) and self.script is not None

    # -- requests ------------------------------------------------------------------------------------------------

    def handle(self, environ: dict[str, Any]) -> Response:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/score":
            if method != "POST":
                self.status.requests.request()
                status, headers, body, message = _error(405, "use POST /score")
                return status, [*headers, ("Allow", "POST")], body, message
            return self._score(environ)
        self.status.requests.request()
        if method not in ("GET", "HEAD"):
            return _error(405, f"{method} is not allowed on {path}")
        if path == "/":
            return 200, [_TEXT], b"Healthy", ""
        if path == "/ready":
            if self.failure:
                return _error(503, self.failure)
            if not self.status.replica_ready():
                return _error(
                    503, "init() has not returned yet" if self.script is None else "other workers are loading"
                )
            return 200, [_TEXT], b"Ready", ""
        if path == "/status":
            return 200, [_JSON], json.dumps(self.status_document()).encode(), ""
        if path == "/swagger.json":
            return self._swagger(environ)
        return _error(404, f"no such path: {path}")

    def _swagger(self, environ: dict[str, Any]) -> Response:
        if self.failure:
            return _error(503, self.failure)
        if self.script is None:  # the document comes from the loaded script; /ready says when that is
            return _error(503, "init() has not returned yet")
        if self.no_swagger:
            return _error(404, self.no_swagger)
        asked = parse_qs(environ.get("QUERY_STRING", "")).get("version", [swagger.DEFAULT_VERSION])[0]
        refusal = swagger.unavailable_version(asked, self.swagger)
        if refusal is not None:
            return _error(404, refusal)
        return 200, [_JSON], self.swagger[swagger.VERSIONS[asked]], ""

    def status_document(self) -> dict[str, Any]:
        doc = self.status.status()
        doc["failure"] = self.failure or None
        doc["entry_script"] = self.settings.entry_script
        doc["model_dir"] = os.environ.get("AZUREML_MODEL_DIR") or None
        doc["workers_configured"] = self.settings.workers
        doc["telemetry"] = self.telemetry
        # Whether POST /score checks keys: the portal looks for it before it calls a service that needs one Healthy.
        doc["key_required"] = self.settings.key_hashes is not None
        return doc

    def _score(self, environ: dict[str, Any]) -> Response:
        started = time.perf_counter()
        request_id = environ.get("HTTP_X_REQUEST_ID") or str(uuid.uuid4())
        environ["scoring.request_id"] = request_id
        bytes_in = 0
        if len(request_id) > MAX_REQUEST_ID:
            response = _error(431, f"x-request-id must not exceed {MAX_REQUEST_ID} characters")
        elif (refusal := self._key_refusal(environ)) is not None:
            response = refusal
        else:
            response, bytes_in = self._run(environ, request_id)
            headers = response[1]
            headers.append(("x-request-id", request_id))
            headers.append(("x-ms-request-id", environ.get("HTTP_X_MS_REQUEST_ID") or request_id))
        self.status.requests.score(response[0], time.perf_counter() - started, bytes_in, len(response[2]))
        return response

    def _key_refusal(self, environ: dict[str, Any]) -> Response | None:
        """401 unless the service needs no key or the request presents one of its keys (`SCORING_KEY_HASHES`)."""
        wanted = self.settings.key_hashes
        if wanted is None:
            return None
        scheme, _, key = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
        if scheme.lower() == "bearer" and key.strip() and config.key_hash(key.strip()) in wanted:
            return None
        if scheme:
            response = _error(401, "the key is not one of this service's keys")
        else:
            response = _error(401, "this service needs a key: send it as Authorization: Bearer <key>")
        response[1].append(("WWW-Authenticate", 'Bearer realm="scoring"'))
        return response

    def _run(self, environ: dict[str, Any], request_id: str) -> tuple[Response, int]:
        loaded = self.script
        if loaded is None:
            if not self.wait_ready(INIT_WAIT):
                return _error(503, self.failure or "the model is still loading: init() has not returned"), 0
            loaded = self.script
            assert loaded is not None
        raw_length = environ.get("CONTENT_LENGTH") or ""
        limit = self.settings.max_request_bytes
        stream = environ["wsgi.input"]
        if raw_length:
            try:
                length = int(raw_length)
            except ValueError:
                return _error(400, "Content-Length is not a number"), 0
            if length > limit:
                return _error(413, f"the body is larger than {limit} bytes"), 0
            raw = stream.read(length) if length else b""
        else:  # chunked, or no body
            raw = stream.read(limit + 1)
            if len(raw) > limit:
                return _error(413, f"the body is larger than {limit} bytes"), len(raw)
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _error(400, f"the body cannot be decoded as UTF-8: {exc}"), len(raw)
        headers = _headers(environ) if loaded.wants_headers else None
        if headers is not None and self.settings.key_hashes is not None:
            headers.pop("Authorization", None)  # the service's key is the portal's, not the script's
        run_started = time.perf_counter()
        if not self._enter_gate():
            message = "this worker is restarting (a run() did not return): send the request again"
            status, hdrs, out, msg = _error(503, message)
            return (status, [*hdrs, ("Retry-After", "1"), ("Connection", "close")], out, msg), len(raw)
        with _Held(self._gate), collector.request_context(request_id):
            thread = threading.get_ident()
            self.running[thread] = (time.monotonic(), request_id)
            try:
                result = loaded.call(body, headers)
            except scripts.BadInput as exc:
                return _error(400, str(exc)), len(raw)
            except BaseException as exc:  # sys.exit() too: it must not end the worker and its other requests
                message = str(exc) or type(exc).__name__
                log.error("run() raised %s: %s (request %s)", type(exc).__name__, message, request_id, exc_info=exc)
                status, hdrs, out, msg = _error(500, message, error=type(exc).__name__)
                return (status, [*hdrs, ("x-ms-run-function-failed", "True")], out, msg), len(raw)
            finally:
                del self.running[thread]
        elapsed_ms = (time.perf_counter() - run_started) * 1000
        try:
            out = json.dumps(result, default=_json_default).encode()
        except (TypeError, ValueError) as exc:
            log.error("run() returned an answer that is not JSON (request %s): %s", request_id, exc)
            return _error(500, str(exc), error=type(exc).__name__), len(raw)
        return (200, [_JSON, ("x-ms-run-fn-exec-ms", f"{elapsed_ms:.3f}")], out, ""), len(raw)

    def _enter_gate(self) -> bool:
        """Take a turn at run() (the gate); False once the worker has given up on a stuck run()."""
        if self._gate.acquire(blocking=False):  # the usual case: nobody else is in run()
            return True
        while not self.stopping.is_set():
            if self._gate.acquire(timeout=0.5):
                return True
        return False

    def longest_run(self) -> tuple[float, str] | None:
        """The run() call under way for the longest: for how many seconds, and for which request; None if none is."""
        # list() copies the values in one step under the GIL: the request threads add and remove theirs meanwhile.
        started = min(list(self.running.values()), default=None)
        if started is None:
            return None
        return time.monotonic() - started[0], started[1]


class _Held:
    """Releases a gate taken by ScoringApp._enter_gate when the block ends."""

    def __init__(self, gate: Any) -> None:
        self.gate = gate

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        self.gate.release()


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    out = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        out["Content-Type"] = environ["CONTENT_TYPE"]
    if environ.get("CONTENT_LENGTH"):
        out["Content-Length"] = environ["CONTENT_LENGTH"]
    return out


def wsgi(handle: Callable[[dict[str, Any]], Response]) -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
    """A WSGI application around a handler."""

    def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        status, headers, body, _ = handle(environ)
        headers.append(("Content-Length", str(len(body))))
        start_response(_STATUS_LINES[status], headers)
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else [b""]

    return application


def build(
    settings: Settings,
    status: WorkerStatus,
    *,
    on_fatal: Callable[[str], None] | None = None,
    exporter: Any = None,
) -> tuple[ScoringApp, Callable[[dict[str, Any], Any], Iterable[bytes]], Any]:
    """The app, its WSGI callable and its telemetry (None when off). Starts loading the script."""
    telemetry = None
    if settings.app_insights or exporter is not None:
        from scoring import telemetry as otel  # imported only when on

        telemetry = otel.setup(os.environ.get(collector.config.SERVICE_NAME) or "scoring", exporter)
    app = ScoringApp(
        settings, status, on_fatal=on_fatal, telemetry=",".join(telemetry.exporters) if telemetry else "off"
    )
    handle = telemetry.traced(app.handle, PROBES) if telemetry is not None else app.handle
    app.start()
    return app, wsgi(handle), telemetry
