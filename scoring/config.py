"""The scoring runtime's environment contract: the one place it is defined.

Compute drivers (`deployments.compute.local`, `deployments.compute.kubernetes`) and the Dockerfile set these on
every scoring process; import the names from here (`from scoring import config; env[config.MODEL_DIR]`) or build
them with `environ_for(...)`. The collector's own variables (collection on or off, the storage connection string,
workspace, service name, model versions, spool folder) are defined in `collector.config`, its one place; a driver
sets both. Command-line options of `python -m scoring` win over these variables.

| variable | meaning | default |
| --- | --- | --- |
| `AZUREML_ENTRY_SCRIPT` | the scoring script, `score.py` (`--entry-script`) | none: required |
| `AZUREML_MODEL_DIR` | the model directory, as the legacy runtime set it (`--model-dir`); see scoring/README.md | unset |
| `SCORING_HOST` | address to listen on (`--host`); the Docker image sets `0.0.0.0` | `127.0.0.1` |
| `SCORING_PORT` | port to listen on (`--port`) | `5001` |
| `SCORING_PROBE_PORT` | a second port where each worker answers `GET /`, `GET /ready` and `GET /status` from a thread of its own, however busy its request threads are (`--probe-port`); the Kubernetes driver points its probes there, the local driver asks there | unset: none |
| `WORKER_COUNT` | worker processes, each with its own `init()` (`--workers`; azmlinfsrv's name) | `1` |
| `SCORING_THREADS` | threads per worker: probes and status are answered while `run()` works | `4` |
| `SCORING_RUN_CONCURRENCY` | `run()` calls at once in one worker; `1` serialises them as the legacy runtime did | `1` |
| `WORKER_TIMEOUT` | seconds a worker may stop answering its master, or one `run()` may take, before the worker is restarted (azmlinfsrv's name) | `300` |
| `SCORING_GRACEFUL_TIMEOUT` | seconds a SIGTERM gives a worker: for its requests in flight (all but a quarter of it, at least 2 s, and one more second), then to flush collected rows and telemetry | `30` |
| `SCORING_MAX_REQUEST_BYTES` | larger request bodies are answered 413 | `104857600` |
| `SCORING_ACCESS_LOG` | `true` logs one line per request | off |
| `SCORING_LOG_LEVEL` | `DEBUG`, `INFO`, `WARNING` or `ERROR` | `INFO` |
| `AML_APP_INSIGHTS_ENABLED` | `true`: each request emits an OpenTelemetry span ("Enable AppInsights diagnostics") | off |
| `APPLICATIONINSIGHTS_CONNECTION_STRING` | with telemetry on: export spans to Azure Monitor; a secret | unset |
| `OTEL_EXPORTER_OTLP_ENDPOINT` | with telemetry on: export spans over OTLP/HTTP (other `OTEL_*` variables apply too) | unset |
| `SCORING_KEY_HASHES` | SHA-256 digests (hex, comma-separated) of the keys that `POST /score` accepts as `Authorization: Bearer <key>`; the keys themselves are never given to the runtime. Set (even blank) but without a valid digest: every scoring request is refused | unset: no key needed |

An invalid value is logged and replaced by its default, except a missing entry script, which stops the runtime, and
an invalid key digest, which is left out (never read as "no key needed").
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

ENTRY_SCRIPT = "AZUREML_ENTRY_SCRIPT"
MODEL_DIR = "AZUREML_MODEL_DIR"
HOST = "SCORING_HOST"
PORT = "SCORING_PORT"
PROBE_PORT = "SCORING_PROBE_PORT"
WORKERS = "WORKER_COUNT"
THREADS = "SCORING_THREADS"
RUN_CONCURRENCY = "SCORING_RUN_CONCURRENCY"
WORKER_TIMEOUT = "WORKER_TIMEOUT"
GRACEFUL_TIMEOUT = "SCORING_GRACEFUL_TIMEOUT"
MAX_REQUEST_BYTES = "SCORING_MAX_REQUEST_BYTES"
ACCESS_LOG = "SCORING_ACCESS_LOG"
LOG_LEVEL = "SCORING_LOG_LEVEL"
APP_INSIGHTS_ENABLED = "AML_APP_INSIGHTS_ENABLED"
APPLICATIONINSIGHTS_CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
KEY_HASHES = "SCORING_KEY_HASHES"

ALL = (
    ENTRY_SCRIPT,
    MODEL_DIR,
    HOST,
    PORT,
    PROBE_PORT,
    WORKERS,
    THREADS,
    RUN_CONCURRENCY,
    WORKER_TIMEOUT,
    GRACEFUL_TIMEOUT,
    MAX_REQUEST_BYTES,
    ACCESS_LOG,
    LOG_LEVEL,
    APP_INSIGHTS_ENABLED,
    APPLICATIONINSIGHTS_CONNECTION_STRING,
    OTLP_ENDPOINT,
    KEY_HASHES,
)

log = logging.getLogger("scoring")

_TRUE = {"1", "true", "yes", "on"}
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Settings:
    """The runtime's settings, parsed and checked (the collector reads its own through `collector.config`)."""

    entry_script: str = ""
    model_dir: str = ""
    host: str = "127.0.0.1"
    port: int = 5001
    probe_port: int = 0  # 0: none
    workers: int = 1
    threads: int = 4
    run_concurrency: int = 1
    worker_timeout: int = 300
    graceful_timeout: float = 30.0
    max_request_bytes: int = 100 * 1024 * 1024
    access_log: bool = False
    log_level: str = "INFO"
    app_insights: bool = False
    # None: no key needed. A set (even empty: every digest given was invalid) that a scoring key's digest must be in.
    key_hashes: frozenset[str] | None = None


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in _TRUE


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        log.error("scoring: %s=%r is not a whole number; using %s", name, raw, default)
        return default
    if not low <= value <= high:
        log.error("scoring: %s=%s is outside [%s, %s]; using %s", name, value, low, high, default)
        return default
    return value


def _key_hashes(env: Mapping[str, str]) -> frozenset[str] | None:
    raw = env.get(KEY_HASHES)
    if raw is None:  # only unset means "no key needed": set, even blank, a key is required
        return None
    given = [part.strip().lower() for part in raw.split(",") if part.strip()]
    valid = frozenset(d for d in given if _DIGEST.fullmatch(d))
    if len(valid) < len(given):
        log.error(
            "scoring: %s has %d value(s) that are not SHA-256 hex digests; left out",
            KEY_HASHES,
            len(given) - len(valid),
        )
    if not valid:
        log.error("scoring: %s has no valid digest: every scoring request will be refused", KEY_HASHES)
    return valid


def key_hash(key: str) -> str:
    """The digest of a scoring key, as `SCORING_KEY_HASHES` lists it."""
    return hashlib.sha256(key.encode()).hexdigest()


def from_environ(env: Mapping[str, str] | None = None) -> Settings:
    """Parse the runtime's variables from `env` (default: `os.environ`). Never raises."""
    env = os.environ if env is None else env
    d = Settings()
    level = env.get(LOG_LEVEL, d.log_level).strip().upper() or d.log_level
    if level not in _LEVELS:
        log.error("scoring: %s=%r must be one of %s; using INFO", LOG_LEVEL, level, ", ".join(_LEVELS))
        level = d.log_level
    threads = _int(env, THREADS, d.threads, 1, 256)
    return Settings(
        entry_script=env.get(ENTRY_SCRIPT, "").strip(),
        model_dir=env.get(MODEL_DIR, "").strip(),
        host=env.get(HOST, "").strip() or d.host,
        port=_int(env, PORT, d.port, 1, 65535),
        probe_port=_int(env, PROBE_PORT, d.probe_port, 0, 65535),
        workers=_int(env, WORKERS, d.workers, 1, 64),
        threads=threads,
        run_concurrency=_int(env, RUN_CONCURRENCY, d.run_concurrency, 1, 256),
        worker_timeout=_int(env, WORKER_TIMEOUT, d.worker_timeout, 1, 86400),
        graceful_timeout=float(_int(env, GRACEFUL_TIMEOUT, int(d.graceful_timeout), 1, 3600)),
        max_request_bytes=_int(env, MAX_REQUEST_BYTES, d.max_request_bytes, 1024, 2**31),
        access_log=_flag(env, ACCESS_LOG),
        log_level=level,
        app_insights=_flag(env, APP_INSIGHTS_ENABLED),
        key_hashes=_key_hashes(env),
    )


def environ_for(
    *,
    entry_script: str,
    model_dir: str = "",
    workers: int = 1,
    app_insights: bool = False,
    **extra: str,
) -> dict[str, str]:
    """The runtime's variables that a compute driver sets (extra: other names of this module, by value)."""
    env = {ENTRY_SCRIPT: entry_script, WORKERS: str(workers), APP_INSIGHTS_ENABLED: "true" if app_insights else "false"}
    if model_dir:
        env[MODEL_DIR] = model_dir
    for name, value in extra.items():
        if name not in ALL:
            raise ValueError(f"{name} is not part of the scoring runtime's environment contract")
        env[name] = value
    return env
