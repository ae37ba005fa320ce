"""The environment contract between the platform and the collector: the one place it is defined.

The scoring runtime and the portal's compute drivers set these variables on every scoring process; the collector
reads them once per process (`from_environ()`), so a script passes only the model name and its designation.
Import the names from here instead of spelling them out (`from collector import config; env[config.ENABLED]`),
or build a whole environment with `environ_for(...)`.

| variable | meaning | default |
| --- | --- | --- |
| `AML_MODEL_DC_STORAGE_ENABLED` | `true` turns collection on (legacy name) | off |
| `AML_MODEL_DC_STORAGE` | blob storage connection string (legacy name); a secret | none: collection stays off |
| `AML_MODEL_DC_BOUNDARY` | `day` or `hour`: one `data.csv` per day, or per hour under `<dd>/<HH>/` | `day` |
| `AML_MODEL_DC_DEBUG` | `true` prints the CSV (header, then rows) to standard output instead of uploading | off |
| `SERVICE_NAME` | the web service's name (legacy name) | the constructor's `webservice_name` |
| `AML_MODEL_DC_WORKSPACE` | `<subscription_id>/<resource_group>/<workspace_name>` | the constructor's `workspace` |
| `AML_MODEL_DC_MODEL_VERSIONS` | JSON object, model name to version: `{"best_model": "3"}` | the constructor's `model_version` |
| `AML_MODEL_DC_CONTAINER` | blob container | `modeldata` |
| `AML_MODEL_DC_SPOOL_DIR` | local spool folder; shared safely by the processes of one replica | `<tmp>/tributary-collector-spool` |
| `AML_MODEL_DC_SPOOL_MAX_BYTES` | spool bound; when full, new rows are dropped and counted. The scoring runtime gives each of its N workers 1/N of it, so that it bounds the replica | 1 GiB |
| `AML_MODEL_DC_QUEUE_MAX_ROWS` | rows waiting in memory for the spool writer; over it, new rows are dropped and counted | 100000 |
| `AML_MODEL_DC_FLUSH_INTERVAL` | seconds between upload rounds (rows are visible within about this long) | 1.0 |
| `AML_MODEL_DC_MAX_BLOCKS_PER_BLOB` | committed blocks after which a file rolls over to its next part (Azure's limit: 50000) | 50000 |
| `AML_MODEL_DC_MAX_ROW_BYTES` | encoded rows larger than this are dropped and counted | 1 MiB |
| `AML_MODEL_DC_REQUEST_TIMEOUT` | seconds to wait for one storage request before treating it as failed | 10 |
| `AML_MODEL_DC_SHUTDOWN_TIMEOUT` | seconds that exit and SIGTERM wait for uploads (rows stay spooled after) | 10 |
| `AML_MODEL_DC_DELIVERY` | `process`: each collecting process uploads its own rows, in a thread; `agent`: it only spools them and a delivery agent (`python -m collector.agent`) uploads for every process of the replica. The scoring runtime sets `agent` on its workers and runs the agent itself | `process` |
| `AML_MODEL_DC_STRICT` | `true` raises `CollectError` on bad input instead of dropping it (for tests) | off |

Platform values win over constructor arguments: on the platform, the rows must land where the portal looks for
them. Outside it (nothing set), the constructor's arguments are used, as in the legacy package.
An invalid value is logged once and replaced by its default: configuration never stops a scoring script.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENABLED = "AML_MODEL_DC_STORAGE_ENABLED"
STORAGE = "AML_MODEL_DC_STORAGE"
BOUNDARY = "AML_MODEL_DC_BOUNDARY"
DEBUG = "AML_MODEL_DC_DEBUG"
SERVICE_NAME = "SERVICE_NAME"
WORKSPACE = "AML_MODEL_DC_WORKSPACE"
MODEL_VERSIONS = "AML_MODEL_DC_MODEL_VERSIONS"
CONTAINER = "AML_MODEL_DC_CONTAINER"
SPOOL_DIR = "AML_MODEL_DC_SPOOL_DIR"
SPOOL_MAX_BYTES = "AML_MODEL_DC_SPOOL_MAX_BYTES"
MIN_SPOOL_MAX_BYTES = 1024
QUEUE_MAX_ROWS = "AML_MODEL_DC_QUEUE_MAX_ROWS"
FLUSH_INTERVAL = "AML_MODEL_DC_FLUSH_INTERVAL"
MAX_BLOCKS_PER_BLOB = "AML_MODEL_DC_MAX_BLOCKS_PER_BLOB"
MAX_ROW_BYTES = "AML_MODEL_DC_MAX_ROW_BYTES"
REQUEST_TIMEOUT = "AML_MODEL_DC_REQUEST_TIMEOUT"
SHUTDOWN_TIMEOUT = "AML_MODEL_DC_SHUTDOWN_TIMEOUT"
STRICT = "AML_MODEL_DC_STRICT"
DELIVERY = "AML_MODEL_DC_DELIVERY"

ALL = (
    ENABLED,
    STORAGE,
    BOUNDARY,
    DEBUG,
    SERVICE_NAME,
    WORKSPACE,
    MODEL_VERSIONS,
    CONTAINER,
    SPOOL_DIR,
    SPOOL_MAX_BYTES,
    QUEUE_MAX_ROWS,
    FLUSH_INTERVAL,
    MAX_BLOCKS_PER_BLOB,
    MAX_ROW_BYTES,
    REQUEST_TIMEOUT,
    SHUTDOWN_TIMEOUT,
    STRICT,
    DELIVERY,
)

DELIVERY_MODES = ("process", "agent")

# Azure's hard limits for append blobs.
AZURE_MAX_BLOCKS = 50_000
AZURE_MAX_APPEND_BLOCK_BYTES = 4 * 1024 * 1024

log = logging.getLogger("collector")

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Everything the collector reads from the environment, parsed and checked."""

    storage_enabled: bool = False
    connection_string: str = field(default="", repr=False)  # a secret: never in a repr or a log
    boundary: str = "day"
    debug: bool = False
    service_name: str | None = None
    workspace: str | None = None
    model_versions: Mapping[str, str] = field(default_factory=dict)
    container: str = "modeldata"
    spool_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "tributary-collector-spool")
    spool_max_bytes: int = 1024**3
    queue_max_rows: int = 100_000
    flush_interval: float = 1.0
    max_blocks_per_blob: int = AZURE_MAX_BLOCKS
    max_row_bytes: int = 1024 * 1024
    request_timeout: float = 10.0
    shutdown_timeout: float = 10.0
    strict: bool = False
    delivery: str = "process"

    @property
    def uploading(self) -> bool:
        """Rows go to blob storage (debug mode prints them instead)."""
        return self.storage_enabled and bool(self.connection_string) and not self.debug

    @property
    def boundary_minutes(self) -> int:
        return 60 if self.boundary == "hour" else 1440


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in _TRUE


def _number(env: Mapping[str, str], name: str, default: float, kind: type, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        log.error("collector: %s=%r is not a number; using %s", name, raw, default)
        return default
    if not low <= value <= high:
        log.error("collector: %s=%s is outside [%s, %s]; using %s", name, value, low, high, default)
        return default
    return float(value)


def _model_versions(env: Mapping[str, str]) -> dict[str, str]:
    raw = env.get(MODEL_VERSIONS, "").strip()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
        if not isinstance(parsed, dict):
            raise ValueError("not a JSON object")
        return {str(k): str(v) for k, v in parsed.items()}
    except ValueError as exc:
        log.error('collector: %s must be a JSON object like {"model": "1"} (%s); ignoring it', MODEL_VERSIONS, exc)
        return {}


def from_environ(env: Mapping[str, str] | None = None) -> Settings:
    """Parse the contract from `env` (default: `os.environ`). Never raises: bad values fall back to defaults."""
    env = os.environ if env is None else env
    defaults = Settings()
    boundary = env.get(BOUNDARY, "day").strip().lower() or "day"
    if boundary not in ("day", "hour"):
        log.error("collector: %s=%r must be 'day' or 'hour'; using 'day'", BOUNDARY, boundary)
        boundary = "day"
    enabled = _flag(env, ENABLED)
    connection_string = env.get(STORAGE, "").strip()
    if enabled and not connection_string and not _flag(env, DEBUG):
        log.error("collector: %s=true but %s is empty; collection stays off", ENABLED, STORAGE)
    workspace = env.get(WORKSPACE, "").strip() or None
    if workspace is not None and len(workspace.split("/")) != 3:
        log.error("collector: %s must be <subscription_id>/<resource_group>/<workspace>; ignoring it", WORKSPACE)
        workspace = None
    delivery = env.get(DELIVERY, "").strip().lower() or defaults.delivery
    if delivery not in DELIVERY_MODES:
        log.error("collector: %s=%r must be 'process' or 'agent'; using 'process'", DELIVERY, delivery)
        delivery = defaults.delivery
    max_blocks = int(_number(env, MAX_BLOCKS_PER_BLOB, AZURE_MAX_BLOCKS, int, 2, AZURE_MAX_BLOCKS))
    return Settings(
        storage_enabled=enabled,
        connection_string=connection_string,
        boundary=boundary,
        debug=_flag(env, DEBUG),
        service_name=env.get(SERVICE_NAME, "").strip() or None,
        workspace=workspace,
        model_versions=_model_versions(env),
        container=env.get(CONTAINER, "").strip() or defaults.container,
        spool_dir=Path(env[SPOOL_DIR]) if env.get(SPOOL_DIR, "").strip() else defaults.spool_dir,
        spool_max_bytes=int(_number(env, SPOOL_MAX_BYTES, defaults.spool_max_bytes, int, MIN_SPOOL_MAX_BYTES, 2**50)),
        queue_max_rows=int(_number(env, QUEUE_MAX_ROWS, defaults.queue_max_rows, int, 1, 10**9)),
        flush_interval=_number(env, FLUSH_INTERVAL, defaults.flush_interval, float, 0.01, 3600),
        max_blocks_per_blob=max_blocks,
        max_row_bytes=int(_number(env, MAX_ROW_BYTES, defaults.max_row_bytes, int, 64, 3 * 1024 * 1024)),
        request_timeout=_number(env, REQUEST_TIMEOUT, defaults.request_timeout, float, 0.1, 600),
        shutdown_timeout=_number(env, SHUTDOWN_TIMEOUT, defaults.shutdown_timeout, float, 0, 3600),
        strict=_flag(env, STRICT),
        delivery=delivery,
    )


def environ_for(
    *,
    enabled: bool,
    connection_string: str = "",
    workspace: str | None = None,
    service_name: str | None = None,
    model_versions: Mapping[str, str] | None = None,
    boundary: str = "day",
    **extra: str,
) -> dict[str, str]:
    """The variables a compute driver sets on a scoring process (extra: other names of this module, by value)."""
    env = {ENABLED: "true" if enabled else "false", BOUNDARY: boundary}
    if connection_string:
        env[STORAGE] = connection_string
    if workspace:
        env[WORKSPACE] = workspace
    if service_name:
        env[SERVICE_NAME] = service_name
    if model_versions:
        env[MODEL_VERSIONS] = json.dumps(dict(model_versions), sort_keys=True)
    for name, value in extra.items():
        if name not in ALL:
            raise ValueError(f"{name} is not part of the collector's environment contract")
        env[name] = value
    return env
