"""Tributary's model data collector: a drop-in `ModelDataCollector` that never loses a row.

    from collector import ModelDataCollector      # or: from azureml.monitoring import ModelDataCollector
    inputs_dc = ModelDataCollector("best_model", designation="inputs", feature_names=["feat1", "feat2"])
    correlations = inputs_dc.collect(data)        # never raises (unless strict); returns a dict for inputs

For the scoring runtime: `stats()` (counters), `flush(timeout)`, `shutdown(timeout)`, `request_context(id)`,
`reconfigure()` and `install_sigterm_handler()`. The environment contract is `collector.config`.
See collector/README.md for the blob layout and the delivery guarantees.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from collector import config, engine
from collector.engine import COUNTERS, Sink, cells, header_of, install_sigterm_handler, suffix_of
from collector.tabular import ARRAY, INTERNAL, QUEUE_FULL, CollectError, capture, encode

__all__ = [
    "CollectError",
    "ModelDataCollector",
    "config",
    "flush",
    "install_sigterm_handler",
    "reconfigure",
    "request_context",
    "shutdown",
    "stats",
]

log = logging.getLogger("collector")

DESIGNATIONS = ("inputs", "predictions", "labels", "signals", "general")
CORRELATION_COLUMNS = ("$aml_dc_correlation_id", "$aml_dc_scoring_timestamp", "$aml_request_id")

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("collector_request_id", default="")


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Within this block, inputs rows carry `request_id` in `$aml_request_id` (set by the scoring runtime)."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


# Correlation ids: uuid-shaped, a random per-process prefix and a counter (a uuid4() per call costs ~5 us).
_ids: list[Any] = []


def _reset_ids() -> None:
    prefix = uuid.uuid4().hex
    _ids[:] = [f"{prefix[:8]}-{prefix[8:12]}-{prefix[12:16]}-{prefix[16:20]}-{prefix[20:24]}", itertools.count()]


_reset_ids()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_ids)


def _next_id() -> str:
    prefix, counter = _ids
    return f"{prefix}{next(counter) & 0xFFFFFFFF:08x}"


_ts_cache: tuple[int, str] = (-1, "")


def _format_ts(ts: float) -> str:
    """ISO 8601 UTC with milliseconds: 2026-11-24T00:06:58.123Z (the second's text is cached)."""
    global _ts_cache
    sec = int(ts)
    cached, text = _ts_cache
    if cached != sec:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ts_cache = (sec, text)
    return f"{text}.{int((ts - sec) * 1000):03d}Z"


_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


def _segment(value: Any, what: str) -> str:
    text = str(value)
    if not text or text in (".", "..") or _UNSAFE.search(text) or text != text.strip() or len(text) > 255:
        raise ValueError(
            f"{what} {text!r} cannot be a blob path segment: use a non-empty name without '/', '\\', control "
            "characters or surrounding spaces, other than '.' and '..'"
        )
    return text


@dataclass(slots=True)
class _Binding:
    """A collector's settings as of one engine (rebuilt when the process reconfigures)."""

    engine: engine.Engine
    workspace: str
    service: str
    model: str
    version: str
    boundary: str
    strict: bool
    mode: int
    sink: Sink


_OFF, _UPLOAD, _DEBUG = 0, 1, 2
_print_lock = threading.Lock()


class ModelDataCollector:
    """Collects rows for one model and designation (legacy `azureml.monitoring` signature, DESIGN.md section 2).

    `identifier=` is the pre-0.1.0a16 name of `designation`; `designation="default"` means `general`;
    `collection_name` is accepted and unused, as before. On the platform, the workspace, service name and model
    version come from the environment (`collector.config`) and win over the arguments. `strict=True` (or
    `AML_MODEL_DC_STRICT=true`) makes `collect()` raise `CollectError` on bad input instead of dropping it.
    A name that cannot be a path segment raises ValueError here, in the constructor, never in `collect()`.
    """

    def __init__(
        self,
        model_name: str,
        designation: str | None = None,
        feature_names: Iterable[Any] | None = None,
        workspace: str = "default/default/default",
        webservice_name: str = "default",
        model_version: str = "default",
        collection_name: str = "default",
        *,
        identifier: str | None = None,
        strict: bool | None = None,
    ) -> None:
        if identifier is not None and designation is not None and identifier != designation:
            raise ValueError("pass designation= or its old name identifier=, not both")
        designation = designation or identifier or "default"
        if designation == "default":
            designation = "general"
        self.model_name = _segment(model_name, "model_name")
        self.designation = _segment(designation, "designation")
        if isinstance(feature_names, str):
            raise ValueError("feature_names must be a list of names, not one string")
        self.feature_names = None if feature_names is None else [str(n) for n in feature_names]
        self.workspace = workspace
        self.webservice_name = webservice_name
        self.model_version = model_version
        self.collection_name = collection_name
        self._strict = strict
        self._inputs = self.designation == "inputs"
        # add_correlations()'s last result on each thread, and the names of the columns it added: the collect()
        # of that very object names them in its header (a script's run() calls the two on one thread).
        self._correlated = threading.local()
        self._binding: _Binding | None = None
        self._bind(engine.current())  # checks workspace etc. now, in init(), rather than in run()
        binding = self._binding
        if binding is not None and binding.mode == _UPLOAD:
            # Start now, not on the first request: rows that a killed process left in the spool go out at once.
            try:
                binding.engine.start()
            except Exception as exc:
                log.error("collector: cannot start: %s", exc)

    def _bind(self, eng: engine.Engine) -> _Binding:
        s = eng.settings
        workspace = s.workspace or self.workspace
        parts = str(workspace).split("/")
        if len(parts) != 3:
            raise ValueError(f"workspace {workspace!r} must be <subscription_id>/<resource_group>/<workspace_name>")
        for part in parts:
            _segment(part, "workspace part")
        mode = _DEBUG if s.debug else _UPLOAD if s.uploading else _OFF
        workspace_id = "/".join(parts)
        service = _segment(s.service_name or self.webservice_name, "webservice_name")
        version = _segment(s.model_versions.get(self.model_name, self.model_version), "model_version")
        folder = f"{workspace_id}/{service}/{self.model_name}/{version}/{self.designation}"
        sink = Sink(s.container, folder, self.feature_names, self._inputs, f"{self.model_name}/{self.designation}")
        b = _Binding(
            engine=eng,
            workspace=workspace_id,
            service=service,
            model=self.model_name,
            version=version,
            boundary=str(s.boundary_minutes),
            strict=bool(s.strict if self._strict is None else self._strict),
            mode=mode,
            sink=sink,
        )
        self._binding = b
        return b

    def collect(self, input_data: Any, user_correlation_id: str = "") -> dict[str, str] | None:
        """Collect one row or many (see collector.tabular); for `inputs`, return the correlation values.

        The returned dict ({'$aml_dc_correlation_id', '$aml_dc_scoring_timestamp', '$aml_request_id'}) goes to
        the predictions collector's `add_correlations()`, so that inputs and predictions can be joined.
        """
        correlations = None
        strict = bool(self._strict)
        try:
            eng = engine._engine
            if eng is None or eng.closed:
                eng = engine.current()
            b = self._binding
            if b is None or b.engine is not eng:
                b = self._bind(eng)
            strict = b.strict
            ts = time.time()
            suffix_values = None
            if self._inputs:
                cid = str(user_correlation_id) if user_correlation_id else _next_id()
                stamp = _format_ts(ts)
                rid = _request_id.get()
                correlations = {CORRELATION_COLUMNS[0]: cid, CORRELATION_COLUMNS[1]: stamp, CORRELATION_COLUMNS[2]: rid}
                suffix_values = (cid, stamp, b.boundary, b.workspace, b.service, b.model, b.version, rid)
            mode = b.mode
            if mode == _OFF and not strict:
                return correlations
            tail: tuple[str, ...] = ()
            tail_values: tuple[str, ...] | None = None
            correlated = self._correlated
            if input_data is not None and getattr(correlated, "data", None) is input_data:
                tail, correlated.data = correlated.names, None
            if tail and correlated.values is not None:
                # Floats with text added, taken apart again: the floats as add_correlations() had them (its copy),
                # and the text as cells that end each row (the same CSV), so that the spool writer packs the floats
                # as they are (collector.tabular.Calls) instead of an object array's Python floats.
                source, tail_values = correlated.source, correlated.values
                kind, snap, rows = ARRAY, source, (len(source) if source.ndim == 2 else 1)
            else:
                kind, snap, rows = capture(input_data)
            if strict or mode == _DEBUG:
                self._encode_now(b, kind, snap, cells(tail_values, suffix_values), tail, tail_values, strict, mode)
            if mode == _UPLOAD:
                try:
                    item = (b.sink, ts, suffix_values, kind, snap, tail, tail_values, rows)
                    queued = eng.submit(item, rows)
                except OSError as exc:  # no spool (a read-only or full disk): the rows cannot be kept
                    if strict:
                        raise
                    COUNTERS.drop(INTERNAL, rows, str(exc), b.sink.label)
                    return correlations
                if not queued:
                    if strict:
                        raise CollectError(QUEUE_FULL)
                    COUNTERS.drop(QUEUE_FULL, rows, where=b.sink.label)
            return correlations
        except CollectError as exc:
            if strict:
                raise
            COUNTERS.drop(exc.reason, 1, exc.detail, f"{self.model_name}/{self.designation}")
            return correlations
        except Exception as exc:
            if strict:
                raise
            COUNTERS.drop(INTERNAL, 1, f"{type(exc).__name__}: {exc}", f"{self.model_name}/{self.designation}")
            return correlations

    def _encode_now(
        self,
        b: _Binding,
        kind: int,
        snap: Any,
        cells: tuple[str, ...],
        tail: tuple[str, ...],
        tail_values: tuple[str, ...] | None,
        strict: bool,
        mode: int,
    ) -> None:
        """Strict mode (raise on any bad row) and debug mode (print the CSV) do the writer's work right here."""
        sink = b.sink
        enc, data_columns = encode(kind, snap, suffix=suffix_of(cells), max_row_bytes=b.engine.settings.max_row_bytes)
        if enc.first_error is not None:
            reason, detail = enc.first_error
            if strict:
                raise CollectError(reason, detail)
            for why, n in enc.dropped.items():
                COUNTERS.drop(why, n, detail, sink.label)
        if mode == _DEBUG and enc.chunks:
            header = header_of(sink, enc.ncols + len(tail_values or ()), data_columns, tail)
            with _print_lock:
                out = sys.stdout
                if header not in sink.printed:
                    out.write(header.decode("utf-8"))
                    sink.printed.add(header)
                for chunk, _ in enc.chunks:
                    out.write(chunk.decode("utf-8"))
                out.flush()

    def add_correlations(self, input_data: Any, correlations: Mapping[str, Any] | None) -> Any:
        """A copy of `input_data` with the correlation values (from the inputs' `collect()`) as extra columns.

        Works on the same shapes as `collect()`: a flat list or 1-D array gets the values at its end (still one
        row), each row of a list of rows or 2-D array gets them, a DataFrame gets named columns. When the copy is
        then passed to this collector's `collect()`, its header names those columns.
        """
        if not correlations:
            return input_data
        try:
            keys = tuple(str(k) for k in correlations)
            values = list(correlations.values())
            data = _with_columns(input_data, keys, values)
            correlated = self._correlated
            correlated.data, correlated.names, correlated.values = data, keys, None
            np = sys.modules.get("numpy")
            if (
                np is not None
                and type(input_data) is np.ndarray
                and input_data.dtype.type is np.float64
                and input_data.ndim in (1, 2)
                and input_data.size > 0  # no floats: the rows are the text alone, as encode() writes them
                and all(type(v) is str for v in values)
            ):
                correlated.source, correlated.values = input_data.copy(), tuple(values)
            return data
        except Exception as exc:
            if self._strict:
                raise
            log.warning(
                "collector: add_correlations() could not add columns to a %s: %s", type(input_data).__name__, exc
            )
            return input_data


def _with_columns(data: Any, keys: tuple[str, ...], values: list[Any]) -> Any:
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(data, pd.DataFrame):
        out = data.copy()
        for key, value in zip(keys, values, strict=True):
            out[key] = value
        return out
    np = sys.modules.get("numpy")
    if np is not None and isinstance(data, np.ndarray):
        # One object array filled in place: half the time of astype(object) and hstack (on the request thread).
        if data.ndim == 1:
            out = np.empty(len(data) + len(values), dtype=object)
            out[: len(data)] = data
            out[len(data) :] = values
            return out
        if data.ndim == 2:
            n = data.shape[1]
            out = np.empty((data.shape[0], n + len(values)), dtype=object)
            out[:, :n] = data
            out[:, n:] = values
            return out
        raise ValueError(f"a {data.ndim}-D array")
    if isinstance(data, list | tuple):
        if data and (isinstance(data[0], list | tuple) or (np is not None and isinstance(data[0], np.ndarray))):
            return [[*list(row), *values] for row in data]
        return [*data, *values]
    if pd is not None and isinstance(data, pd.Series):
        return [*data.tolist(), *values]
    return [data, *values]


def stats() -> dict[str, Any]:
    """Counters for this process, for the scoring runtime to expose (all since the process started).

    rows_collected (accepted by collect()), rows_spooled, rows_delivered, rows_dropped (by reason, see
    collector.tabular.REASONS) and rows_dropped_total, queue_rows (in memory), spool_bytes (on disk, not yet
    delivered), blocks_appended, bytes_delivered, upload_failures, parts_rolled, spools_adopted, spool_bytes_lost
    (spooled rows that cannot be delivered: a spool file deleted by something else, or damaged), last_error
    (text, never a secret) and last_error_at (epoch seconds), plus mode ('off', 'upload' or 'debug').
    """
    eng = engine._engine
    c = COUNTERS
    with c.lock:
        out: dict[str, Any] = {
            "rows_collected": c.rows_collected,
            "rows_spooled": c.rows_spooled,
            "rows_delivered": c.rows_delivered,
            "rows_dropped": dict(c.dropped),
            "rows_dropped_total": sum(c.dropped.values()),
            "blocks_appended": c.blocks_appended,
            "bytes_delivered": c.bytes_delivered,
            "upload_failures": c.upload_failures,
            "parts_rolled": c.parts_rolled,
            "spools_adopted": c.spools_adopted,
            "spool_bytes_lost": c.spool_bytes_lost,
            "last_error": c.last_error,
            "last_error_at": c.last_error_at,
        }
    out["queue_rows"] = eng.queue_rows() if eng is not None else 0
    out["spool_bytes"] = eng.spool_bytes() if eng is not None else 0
    if eng is None:
        out["mode"] = "off"
    else:
        s = eng.settings
        out["mode"] = "debug" if s.debug else "upload" if s.uploading else "off"
    return out


def flush(timeout: float = 10.0) -> bool:
    """Block until every row collected so far is in blob storage, or `timeout` seconds; True if all arrived."""
    eng = engine._engine
    if eng is None or eng.closed:
        return True
    return eng.flush(timeout)


def shutdown(timeout: float | None = None) -> bool:
    """Flush (up to `timeout`, default AML_MODEL_DC_SHUTDOWN_TIMEOUT) and stop the threads. Runs at exit too."""
    return engine.shutdown(timeout)


def reconfigure(environ: Mapping[str, str] | None = None, timeout: float = 10.0) -> bool:
    """Flush and stop, then read the settings again from `environ` (default os.environ): turns collection on or
    off, or points it elsewhere, without restarting the process. Existing collectors follow on their next call."""
    return engine.replace(config.from_environ(environ), timeout)
