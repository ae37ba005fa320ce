"""Compute drivers: make a target (a Kubernetes cluster, or this machine) run a service as its desired spec says.

One small interface for every kind of target, so that tasks never know which one they drive:

- `apply(spec)` makes the target match the whole desired spec. It is idempotent: applying the same spec (the
  same `update_id`) twice does no harm, and a redelivered task can call it again.
- `rollout_state(spec)` says where the rollout of that spec stands: Transitioning, Healthy, or Failed with a
  reason. Tasks poll it until it is terminal or their deadline passes.
- `remove(spec)` stops and deletes what `apply` made; removing what is already gone is not an error.
- `logs(spec, lines)` is the last lines of what the service's processes wrote ("" when there is nothing yet).

Drivers raise `TransientError` for what may succeed on retry (connection refused, 5xx, 429, a conflict) and
`PermanentError` for what never will (invalid spec, 403, 404 of the target itself). Secrets never travel in a
spec: it names them (`storage_secret`), and each driver resolves the reference in its own way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

# The key of a workspace's Kubernetes Secret that holds the Azure Monitor connection string its pods send their
# telemetry to with "Enable AppInsights diagnostics" on (the storage connection string is under "connection-string").
APP_INSIGHTS_KEY = "appinsights-connection-string"

RolloutStatus = Literal["Transitioning", "Healthy", "Failed"]


class DriverError(Exception):
    """A driver could not do what was asked; the message is safe to show (no secrets)."""


class TransientError(DriverError):
    """Worth retrying later."""


class PermanentError(DriverError):
    """Will fail again however often it is retried."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    # Where the model's files are: a folder on this machine for the local target, a path in the image otherwise.
    path: str = ""


@dataclass(frozen=True)
class DesiredSpec:
    """Everything a driver needs to run one service: stored as JSON on each ServiceUpdate, applied whole."""

    update_id: int
    service_id: int
    service_name: str
    # `<subscription_id>/<resource_group>/<workspace_name>`: where the collector writes (AML_MODEL_DC_WORKSPACE).
    workspace_path: str
    models: tuple[ModelRef, ...]
    replicas: int = 1
    # The local target runs `entry_script` with the scoring runtime; Kubernetes runs `image` (entry script inside).
    entry_script: str = ""
    image: str = ""
    collect_model_data: bool = False
    enable_app_insights: bool = False
    # POST /score needs a key whose SHA-256 digest is in `key_hashes` (SCORING_KEY_HASHES; digests are not
    # secrets). Its own flag, so that a service that requires a key but has no digest refuses every request.
    require_key: bool = False
    key_hashes: tuple[str, ...] = ()
    # Kubernetes only: the scoring container's `resources`, as Kubernetes quantities, e.g.
    # {"requests": {"cpu": "500m", "memory": "1000M"}, "limits": {...}}; empty: it asks for none.
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    # Kubernetes only: {"min_replicas": 1, "max_replicas": 10, "target_cpu_utilization": 70} for a
    # HorizontalPodAutoscaler that sets the replicas instead of `replicas`; empty: `replicas`, fixed.
    autoscale: dict[str, int] = field(default_factory=dict)
    # Kubernetes only: the liveness probe's settings that differ from the driver's, e.g. {"initialDelaySeconds": 310}.
    liveness: dict[str, int] = field(default_factory=dict)
    # A reference, never the value: an env var name of the worker for the local target, a Secret name for k8s.
    storage_secret: str = ""
    # Non-secret extra environment for the scoring processes.
    environment: dict[str, str] = field(default_factory=dict)
    # Target-specific placement: e.g. {"namespace": "ml"} for Kubernetes.
    target: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DesiredSpec:
        models = tuple(ModelRef(**m) for m in data.get("models", ()))
        return cls(**{**data, "models": models, "key_hashes": tuple(data.get("key_hashes", ()))})


@dataclass(frozen=True)
class RolloutState:
    status: RolloutStatus
    reason: str = ""
    # Where the service answers `POST /score` once Healthy.
    scoring_url: str = ""

    @property
    def finished(self) -> bool:
        return self.status != "Transitioning"


class ComputeDriver(Protocol):
    def apply(self, spec: DesiredSpec) -> None: ...

    def rollout_state(self, spec: DesiredSpec) -> RolloutState: ...

    def remove(self, spec: DesiredSpec) -> None: ...

    def logs(self, spec: DesiredSpec, lines: int) -> str: ...
