"""What a service's scoring runtime says of itself (its `GET /status`, see scoring/README.md), shaped for the
service's page: requests, latency, and what the collector did with the rows, dropped ones first. On this machine
it is the service's process; on Kubernetes, each of its pods, through the API server's pod proxy, added up."""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from collector import tabular
from deployments import actions, drivers
from deployments.compute import DesiredSpec, DriverError
from deployments.logs import without_secrets
from deployments.models import ComputeTarget, Service

if TYPE_CHECKING:
    from deployments.compute.kubernetes import KubernetesDriver


@dataclass(frozen=True)
class Drop:
    reason: str
    rows: int
    why: str


@dataclass(frozen=True)
class RuntimeFigures:
    """Counts since the runtime's process started (a restart, such as an update's, begins them again)."""

    workers: int
    workers_ready: int
    workers_restarted: int
    score_requests: int
    answered: int
    refused: int  # 4xx: a body run() cannot take, a request id too long, a missing or wrong key
    failed: int  # 5xx: run() raised, or the runtime could not answer
    p50_ms: float | None
    p99_ms: float | None
    collection: str  # "off", "storage", "debug" (standard output)
    rows_collected: int
    rows_delivered: int
    spool_bytes: int  # written to the local spool, not yet in storage
    upload_failures: int  # each one retried: rows wait in the spool meanwhile
    drops: tuple[Drop, ...]
    last_error: str  # the collector's newest error, as it logged it
    last_error_at: datetime | None
    pods: int = 0  # on Kubernetes: the service's pods, and how many of them answered
    pods_answering: int = 0

    @property
    def rows_dropped(self) -> int:
        return sum(d.rows for d in self.drops)


def figures(status: dict[str, Any]) -> RuntimeFigures | None:
    """The figures of a runtime's status document; None if it is not one (another program on the port, say)."""
    try:
        requests, latency, collector = status["requests"], status["latency"], status["collector"]
        dropped = collector.get("rows_dropped") or {}
        return RuntimeFigures(
            workers=len(status["workers"]),
            workers_ready=sum(1 for w in status["workers"] if w["ready"]),
            workers_restarted=int(status.get("workers_exited") or 0),
            score_requests=int(requests["score_requests"]),
            answered=int(requests["score_ok"]),
            refused=int(requests["score_client_errors"]),
            failed=int(requests["score_errors"]),
            p50_ms=latency["p50_ms"],
            p99_ms=latency["p99_ms"],
            collection=str(collector.get("mode") or "off"),
            rows_collected=int(collector.get("rows_collected") or 0),
            rows_delivered=int(collector.get("rows_delivered") or 0),
            spool_bytes=int(collector.get("spool_bytes") or 0),
            upload_failures=int(collector.get("upload_failures") or 0),
            drops=tuple(
                Drop(reason, int(rows), tabular.explain(reason)) for reason, rows in sorted(dropped.items()) if rows
            ),
            last_error=_without_secrets(str(collector.get("last_error") or "")),
            last_error_at=datetime.fromtimestamp(collector["last_error_at"], UTC)
            if collector.get("last_error_at")
            else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class Autoscaler:
    """What a Kubernetes service's HorizontalPodAutoscaler says it sees and does (its status)."""

    replicas: int | None = None  # the pods it counts now
    desired: int | None = None  # what it last decided
    cpu_utilization: int | None = None  # the pods' average CPU use, in % of what each requests
    # Why it cannot scale as asked (the cluster's own words: no metrics server, no CPU request...), or why there is
    # nothing to say (it is not there yet, the cluster did not answer).
    problem: str = ""
    limited: str = ""  # it would go beyond its fewest or most replicas


@dataclass(frozen=True)
class Runtime:
    """What the service's page shows of its runtime: the figures, or why there are none."""

    figures: RuntimeFigures | None
    pods: int = 0  # on Kubernetes, whether or not they answered
    error: str = ""  # the cluster did not answer, say
    autoscaler: Autoscaler | None = None  # on Kubernetes, of a service that autoscales


def of_service(service: Service) -> Runtime:
    if service.state == Service.State.DELETING:
        return Runtime(None)
    if service.compute_target.kind == ComputeTarget.Kind.LOCAL:
        status = drivers.local_driver().runtime_status(service.pk)
        return Runtime(figures(status) if status else None)
    from deployments.compute.kubernetes import KubernetesDriver

    try:
        driver = drivers.driver_for(service)
    except DriverError as exc:
        return Runtime(None, error=str(exc))
    assert isinstance(driver, KubernetesDriver)
    spec = actions.desired_spec(service, 0)  # names only: no update is meant
    # The autoscaler beside the pods, not after them: each read may take the whole READ_TIMEOUT.
    with ThreadPoolExecutor(max_workers=1) as pool:
        scaler = pool.submit(_autoscaler, driver, spec) if service.autoscale_enabled else None
        try:
            statuses = driver.pod_statuses(spec)
        except DriverError as exc:
            return Runtime(None, error=str(exc), autoscaler=scaler.result() if scaler else None)
        return Runtime(figures_of_pods(statuses), pods=len(statuses), autoscaler=scaler.result() if scaler else None)


def _autoscaler(driver: KubernetesDriver, spec: DesiredSpec) -> Autoscaler:
    try:
        return autoscaler_of(driver.autoscaler(spec))
    except DriverError as exc:
        return Autoscaler(problem=str(exc))


def autoscaler_of(hpa: Any) -> Autoscaler:
    """The page's view of a HorizontalPodAutoscaler (autoscaling/v2, as the client reads it), or of none."""
    if hpa is None:
        return Autoscaler(problem="The cluster has no autoscaler for this service: the service's update makes it.")
    status = hpa.status
    if status is None or status.current_replicas is None:  # a real server answers desiredReplicas: 0 at first
        return Autoscaler(problem="The autoscaler has not counted the pods yet.")
    cpu = None
    for metric in status.current_metrics or []:
        if metric.type == "Resource" and metric.resource and metric.resource.name == "cpu":
            cpu = metric.resource.current.average_utilization if metric.resource.current else None
    conditions = {c.type: c for c in status.conditions or []}
    # AbleToScale and ScalingActive False: it cannot do its job (the metrics API is missing, a pod requests no
    # CPU...); ScalingLimited True: it wants more, or fewer, replicas than its bounds allow.
    problem = next(
        (
            f"{c.reason}: {c.message}" if c.message else str(c.reason)
            for kind in ("AbleToScale", "ScalingActive")
            if (c := conditions.get(kind)) is not None and c.status == "False"
        ),
        "",
    )
    limited = conditions.get("ScalingLimited")
    return Autoscaler(
        replicas=status.current_replicas,
        desired=status.desired_replicas,
        cpu_utilization=cpu,
        problem=problem,
        limited=(limited.message or str(limited.reason)) if limited is not None and limited.status == "True" else "",
    )


def figures_of_pods(statuses: dict[str, dict[str, Any] | None]) -> RuntimeFigures | None:
    """The figures of a Kubernetes service's pods together: counts added up, the slowest pod's latency, the newest
    error; None when no pod answered."""
    each = [f for f in (figures(status) for status in statuses.values() if status) if f]
    if not each:
        return None
    dropped: Counter[str] = Counter()
    for f in each:
        dropped.update({d.reason: d.rows for d in f.drops})
    newest = max(each, key=lambda f: f.last_error_at or datetime.min.replace(tzinfo=UTC))
    latencies = [(f.p50_ms, f.p99_ms) for f in each if f.p99_ms is not None]
    return RuntimeFigures(
        workers=sum(f.workers for f in each),
        workers_ready=sum(f.workers_ready for f in each),
        workers_restarted=sum(f.workers_restarted for f in each),
        score_requests=sum(f.score_requests for f in each),
        answered=sum(f.answered for f in each),
        refused=sum(f.refused for f in each),
        failed=sum(f.failed for f in each),
        p50_ms=max((p50 for p50, _ in latencies if p50 is not None), default=None),
        p99_ms=max((p99 for _, p99 in latencies if p99 is not None), default=None),
        # Pods of one rollout may differ for a while: storage if any pod collects into it.
        collection=next((f.collection for f in each if f.collection == "storage"), each[0].collection),
        rows_collected=sum(f.rows_collected for f in each),
        rows_delivered=sum(f.rows_delivered for f in each),
        spool_bytes=sum(f.spool_bytes for f in each),
        upload_failures=sum(f.upload_failures for f in each),
        drops=tuple(Drop(reason, rows, tabular.explain(reason)) for reason, rows in sorted(dropped.items())),
        last_error=newest.last_error,
        last_error_at=newest.last_error_at,
        pods=len(statuses),
        pods_answering=len(each),
    )


_URL_QUERY = re.compile(r"\?[^\s'\"]*")


def _without_secrets(message: str) -> str:
    # Readers see this page. A storage error may quote a URL, and a SAS token is its query: gone whole. The rest is
    # redacted as the service's log is (an account key or a connection string in the message).
    return without_secrets(_URL_QUERY.sub("?…", message))
