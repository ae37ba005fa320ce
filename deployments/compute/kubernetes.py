"""The Kubernetes driver: a Deployment and a Service per web service, through the official client.

The Deployment is created whole, or changed with a JSON merge patch that carries the whole pod template when it
changes (so a patched container list keeps its image on every API server; a change of the replicas alone restarts
no pod), and stamped with the update id: applying the same update again changes nothing. A rollout is followed as
`kubectl rollout status` follows it. A service that autoscales has a HorizontalPodAutoscaler (autoscaling/v2) of
its Deployment, on the pods' CPU use; it owns the replica count.

The storage connection string reaches the pods by reference only: `secretKeyRef` to the workspace's Secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, NamedTuple, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from collector import config as dc
from deployments.compute import APP_INSIGHTS_KEY, DesiredSpec, PermanentError, RolloutState, TransientError
from scoring import config as runtime

UPDATE_ANNOTATION = "tributary.dev/update-id"
TEMPLATE_ANNOTATION = "tributary.dev/pod-template-sha256"
# "true" while the service has a HorizontalPodAutoscaler of Tributary's making.
AUTOSCALED_ANNOTATION = "tributary.dev/autoscaled"
# Whose objects these are: a Deployment or Service of the same name that another service (of another workspace
# sharing the namespace) or someone else made is neither taken over by apply() nor deleted by remove().
SERVICE_ID_ANNOTATION = "tributary.dev/service-id"
MANAGED_BY = ("app.kubernetes.io/managed-by", "tributary")
SERVICE_LABEL = "tributary.dev/service"
SECRET_KEY = "connection-string"
CONTAINER_PORT = 5001  # the legacy scoring containers' port, the scoring image's default
# The probes' own port (SCORING_PROBE_PORT, the scoring image's default): answered however busy the requests are.
PROBE_PORT = 5002
MODEL_DIR = "/var/azureml-app/azureml-models"
CONTAINER_NAME = "scoring"
# (connect, read) seconds for what a page or an API call waits on, each request tried once (see from_kubeconfig):
# the list, then the pods in parallel, stay well inside a web worker's 30 s.
READ_TIMEOUT = (3, 8)
STATUS_MAX_BYTES = 256 * 1024  # a runtime's GET /status: about 150 bytes a worker
LOG_READ_BYTES = 2 * 1024 * 1024  # of all the pods' logs together, as the local target's
MAX_PODS = 50  # the pods whose figures and logs a page shows
# An emptyDir: rows spooled during a storage outage survive a container restart within the pod.
SPOOL_DIR = "/var/lib/tributary/spool"
CACHED_CLIENTS = 32  # kubeconfigs (file and context) whose API client a process keeps
# A kept client is made again after this long even if its kubeconfig has not changed: the credentials it read once
# (a token file, an exec plugin's token without an expiry) may have been rotated since.
CLIENT_MAX_AGE = 15 * 60
AUTOSCALER_RBAC = (
    "an autoscaled service needs the kubeconfig's user to have horizontalpodautoscalers get, create, patch and "
    "delete in the autoscaling API group"
)


class KubernetesDriver:
    def __init__(self, *, api_client: client.ApiClient, namespace: str) -> None:
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)
        self.namespace = namespace

    @classmethod
    def from_kubeconfig(cls, path: str, *, context: str | None, namespace: str) -> KubernetesDriver:
        return cls(api_client=_clients.get(path, context or None), namespace=namespace)

    def apply(self, spec: DesiredSpec) -> None:
        name = _name(spec)
        with _translated_errors("apply the Deployment"):
            current = self._read_deployment(name)
            if current is not None and not _ours(current.metadata, spec):
                raise PermanentError(
                    f"The namespace {self.namespace} already has a Deployment named {name} that is not this "
                    "service's: delete it, or deploy under another name or namespace."
                )
        # The autoscaler first, either way. Made or changed first, a refusal (no permission, no autoscaling/v2)
        # leaves the Deployment as it was; removed first, it cannot scale the Deployment away from its fixed count.
        scaling_before = False
        if spec.autoscale:
            scaling_before = self._apply_autoscaler(spec)
        else:
            self._remove_autoscaler(spec, made_one=_annotations(current).get(AUTOSCALED_ANNOTATION) == "true")
        with _translated_errors("apply the Deployment"):
            if current is None:
                # The client serializes plain dicts as they are: the manifest stays readable JSON.
                self.apps.create_namespaced_deployment(self.namespace, cast(Any, deployment_manifest(spec)))
            elif _annotations(current).get(UPDATE_ANNOTATION) != str(spec.update_id):
                self.apps.patch_namespaced_deployment(
                    name,
                    self.namespace,
                    deployment_patch(spec, current, scaling_before=scaling_before),
                    _content_type="application/merge-patch+json",
                )
        with _translated_errors("apply the Service"):
            try:
                existing = self.core.read_namespaced_service(name, self.namespace)
                if not _ours(existing.metadata, spec):
                    raise PermanentError(
                        f"The namespace {self.namespace} already has a Service named {name} that is not this "
                        "service's: delete it, or deploy under another name or namespace."
                    )
                self.core.patch_namespaced_service(
                    name, self.namespace, service_manifest(spec), _content_type="application/merge-patch+json"
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self.core.create_namespaced_service(self.namespace, cast(Any, service_manifest(spec)))

    def _apply_autoscaler(self, spec: DesiredSpec) -> bool:
        """Make or change the service's HorizontalPodAutoscaler; whether it had one already. One made before the
        Deployment is harmless: it waits for its target."""
        name = _name(spec)
        with _translated_errors("apply the HorizontalPodAutoscaler", forbidden=AUTOSCALER_RBAC):
            current = self._read_autoscaler(name)
            if current is not None and not _ours(current.metadata, spec):
                raise PermanentError(
                    f"The namespace {self.namespace} already has a HorizontalPodAutoscaler named {name} that is not "
                    "this service's: delete it, or deploy under another name or namespace."
                )
            if current is not None:  # a merge patch: its metrics list is replaced whole
                self.autoscaling.patch_namespaced_horizontal_pod_autoscaler(
                    name, self.namespace, autoscaler_manifest(spec), _content_type="application/merge-patch+json"
                )
                return True
            try:
                self.autoscaling.create_namespaced_horizontal_pod_autoscaler(
                    self.namespace, cast(Any, autoscaler_manifest(spec))
                )
            except ApiException as exc:
                if exc.status == 404:  # no such API (or namespace: the server's reason says which)
                    raise PermanentError(
                        f"Could not apply the HorizontalPodAutoscaler: HTTP 404 {_reason(exc)} (autoscaling needs the "
                        "cluster's autoscaling/v2 API, Kubernetes 1.23 or later)."
                    ) from exc
                raise
            return False

    def _remove_autoscaler(self, spec: DesiredSpec, *, made_one: bool = True) -> None:
        """Delete the service's HorizontalPodAutoscaler, if it has one. When the service never had one (`made_one`
        False), a user who may not read them is no obstacle: services that never autoscaled need no such
        permission."""
        with _translated_errors("remove the HorizontalPodAutoscaler", forbidden=AUTOSCALER_RBAC):
            try:
                current = self._read_autoscaler(_name(spec))
            except ApiException as exc:
                if exc.status == 403 and not made_one:
                    return
                raise
            if current is not None and _ours(current.metadata, spec):
                _found(self.autoscaling.delete_namespaced_horizontal_pod_autoscaler, _name(spec), self.namespace)

    def autoscaler(self, spec: DesiredSpec) -> client.V2HorizontalPodAutoscaler | None:
        """The service's HorizontalPodAutoscaler as the cluster has it (its status says what it sees and does),
        or None when it has none of its own."""
        with _translated_errors("read the HorizontalPodAutoscaler", forbidden=AUTOSCALER_RBAC):
            found = self._read_autoscaler(_name(spec), _request_timeout=READ_TIMEOUT)
        return found if found is not None and _ours(found.metadata, spec) else None

    def _read_autoscaler(self, name: str, **options: Any) -> client.V2HorizontalPodAutoscaler | None:
        return _found(self.autoscaling.read_namespaced_horizontal_pod_autoscaler, name, self.namespace, **options)

    def rollout_state(self, spec: DesiredSpec) -> RolloutState:
        with _translated_errors("read the Deployment"):
            deployment = self._read_deployment(_name(spec))
        if deployment is None:
            return RolloutState("Failed", "The Deployment is gone from the cluster.")
        state = rollout_state_of(deployment, scoring_url=f"http://{_name(spec)}.{self.namespace}.svc/score")
        if state.status == "Healthy" and spec.require_key:
            return self._checking_keys(spec, state)
        return state

    def _checking_keys(self, spec: DesiredSpec, healthy: RolloutState) -> RolloutState:
        """Healthy once every pod that answers says it checks keys. The check is the image's runtime's: one older
        than scoring keys ignores SCORING_KEY_HASHES and would score for anyone, while the page said a key is
        required."""
        # Not the old pods on their way out: they ran without the key.
        pods = {
            name: pod
            for name, pod in self._pods(spec).items()
            if not (pod.metadata and pod.metadata.deletion_timestamp)
        }
        try:
            answers = [status for status in self._statuses(pods).values() if status is not None]
        except PermanentError as exc:
            return RolloutState(
                "Failed",
                f"{exc} A service that requires a key asks its pods whether they check keys: grant that, or untick "
                "Require a key to score.",
            )
        if any(answer.get("key_required") is not True for answer in answers):
            return RolloutState(
                "Failed",
                f"The scoring runtime in {spec.image} does not check keys (it is older than Tributary's scoring "
                "keys), so it would score for anyone: rebuild the image on the current runtime, or untick "
                "Require a key to score.",
            )
        if not answers:  # ready pods answer on the probe port: none yet is a moment of the rollout
            return RolloutState(
                "Transitioning",
                "Waiting for the pods to say that they check keys (asked through the API server's pod proxy: the "
                "kubeconfig's user needs pods/proxy get).",
            )
        return healthy

    def remove(self, spec: DesiredSpec) -> None:
        """Delete the service's Deployment (its pods stop with SIGTERM: the collector flushes) and Service; those
        of the same name that are not this service's stay."""
        name = _name(spec)
        with _translated_errors("remove the service"):
            deployment = self._read_deployment(name)
        # First: it would otherwise act on a Deployment on its way out.
        made_one = bool(spec.autoscale) or _annotations(deployment).get(AUTOSCALED_ANNOTATION) == "true"
        self._remove_autoscaler(spec, made_one=made_one)
        with _translated_errors("remove the service"):
            service = _found(self.core.read_namespaced_service, name, self.namespace)
            for found, delete in (
                (deployment, self.apps.delete_namespaced_deployment),
                (service, self.core.delete_namespaced_service),
            ):
                if found is not None and _ours(found.metadata, spec):
                    _found(delete, name, self.namespace)  # gone meanwhile is as good

    def pod_statuses(self, spec: DesiredSpec) -> dict[str, dict[str, Any] | None]:
        """Each of the service's pods' runtime figures (its `GET /status` on the probe port, through the API
        server's pod proxy), by pod name; None for a pod that does not answer within READ_TIMEOUT. PermanentError
        when the kubeconfig's user may not use the pod proxy."""
        return self._statuses(self._pods(spec))

    def _statuses(self, pods: dict[str, client.V1Pod]) -> dict[str, dict[str, Any] | None]:
        with ThreadPoolExecutor(max_workers=8) as pool:  # each pod may take the whole timeout
            return dict(zip(pods, pool.map(self._pod_status, pods.keys(), pods.values()), strict=True))

    def _pod_status(self, name: str, pod: client.V1Pod) -> dict[str, Any] | None:
        try:
            # Unparsed: the client would make a str of the JSON it parsed (a Python repr).
            response: Any = self.core.connect_get_namespaced_pod_proxy_with_path(
                f"{name}:{_status_port(_scoring_container(pod.spec))}",
                self.namespace,
                "status",
                _preload_content=False,
                _request_timeout=READ_TIMEOUT,
            )
            if response.status != 200:
                return None
            status = json.loads(response.data[:STATUS_MAX_BYTES])
        except ApiException as exc:
            if exc.status == 403:  # RBAC: every pod would say the same, now and on every later poll
                raise PermanentError(
                    f"Could not read the pods' status through the API server's pod proxy: HTTP 403 {_reason(exc)} "
                    "(the kubeconfig's user needs pods/proxy get)."
                ) from exc
            return None
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            return None
        return status if isinstance(status, dict) else None

    def _pods(self, spec: DesiredSpec) -> dict[str, client.V1Pod]:
        """The service's pods, by name, in the order of their names (at most MAX_PODS). None while the Deployment
        of its name is not this service's: a service of the same name in another workspace sharing the namespace
        must not read that one's pods, whose labels are the same."""
        with _translated_errors("list the service's pods"):
            deployment = self._read_deployment(_name(spec), _request_timeout=READ_TIMEOUT)
            if deployment is None or not _ours(deployment.metadata, spec):
                return {}
            selector = ",".join(f"{key}={value}" for key, value in _labels(spec).items())
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector, _request_timeout=READ_TIMEOUT)
        named = sorted((pod.metadata.name, pod) for pod in pods.items if pod.metadata and pod.metadata.name)
        return dict(named[:MAX_PODS])

    def logs(self, spec: DesiredSpec, lines: int) -> str:
        """The last lines of each of the service's pods' scoring container, pod by pod, as `kubectl logs` has
        them; "" when it has no pods."""
        pods = self._pods(spec)
        limit = LOG_READ_BYTES // max(1, len(pods))
        with ThreadPoolExecutor(max_workers=8) as pool:  # each pod may take the whole timeout
            texts = pool.map(lambda name: self._pod_log(name, lines, limit), pods)
            return "\n\n".join(f"==> pod {name} <==\n{text.rstrip()}" for name, text in zip(pods, texts, strict=True))

    def _pod_log(self, name: str, lines: int, limit_bytes: int) -> str:
        try:
            # Unparsed: the client decodes strictly, and a script may print bytes that are not UTF-8.
            response: Any = self.core.read_namespaced_pod_log(
                name,
                self.namespace,
                container=CONTAINER_NAME,
                tail_lines=lines,
                limit_bytes=limit_bytes,
                _preload_content=False,
                _request_timeout=READ_TIMEOUT,
            )
            return str(response.data.decode("utf-8", errors="replace"))
        except ApiException as exc:  # a pod whose container has not started yet, say: the others still count
            return f"(no log: HTTP {exc.status} {_reason(exc)})"
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return f"(no log: the cluster did not answer: {type(exc).__name__})"

    def _read_deployment(self, name: str, **options: Any) -> client.V1Deployment | None:
        return _found(self.apps.read_namespaced_deployment, name, self.namespace, **options)


class _Kept(NamedTuple):
    version: tuple[int, ...]  # of the kubeconfig file it was made from (_file_version)
    made: float  # time.monotonic()
    api_client: client.ApiClient


class _ApiClients:
    """The API client of each kubeconfig (file and context), kept while the file stays the same (its mtime, size
    and inode), at most CLIENT_MAX_AGE, for the CACHED_CLIENTS used last.

    Loading a kubeconfig runs its exec plugin, if it has one (AKS's kubelogin, EKS's aws, GKE's plugin: a process,
    often a call to a token service), and every open page's Runtime and Logs sections read the cluster every 5 s.
    A client may be shared: its connection pool is thread-safe (the driver reads pods from threads too), and an
    exec plugin's token that expires is fetched again by the client itself (its refresh_api_key_hook)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.lock = threading.Lock()  # gunicorn's threads share the process's clients
        self.clients: OrderedDict[tuple[str, str | None], _Kept] = OrderedDict()  # the one used last at the end

    def get(self, path: str, context: str | None) -> client.ApiClient:
        key, version = (path, context), _file_version(path)
        with self.lock:
            kept = self.clients.get(key)
            if kept is not None and kept.version == version and time.monotonic() - kept.made < CLIENT_MAX_AGE:
                self.clients.move_to_end(key)
                return kept.api_client
        # Made outside the lock: an exec plugin may take seconds, and other kubeconfigs' readers must not wait on
        # it. Two threads may both make one at first; the last one made is kept.
        api_client = _new_api_client(path, context)
        with self.lock:
            self.clients[key] = _Kept(version, time.monotonic(), api_client)
            self.clients.move_to_end(key)
            while len(self.clients) > self.size:
                self.clients.popitem(last=False)
        return api_client


def _file_version(path: str) -> tuple[int, ...]:
    """What changes when the file does: an edit changes its mtime (and mostly its size, should two edits fall within
    one tick of the file system's clock), a file replaced by another (a mounted Secret's is) its inode."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise PermanentError(f"Cannot load the kubeconfig of this compute target: {type(exc).__name__}") from exc
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _new_api_client(path: str, context: str | None) -> client.ApiClient:
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
    except (OSError, config.ConfigException) as exc:
        raise PermanentError(f"Cannot load the kubeconfig of this compute target: {type(exc).__name__}") from exc
    # Each request tried once: urllib3 would try a GET 4 times, so a silent cluster would hold a page 4 times
    # READ_TIMEOUT; the tasks retry on their own, with backoff.
    configuration.retries = 0
    return client.ApiClient(configuration)


_clients = _ApiClients(CACHED_CLIENTS)
_as_sent = client.ApiClient().sanitize_for_serialization  # a model as JSON, as the client would send it


def rollout_state_of(deployment: client.V1Deployment, *, scoring_url: str) -> RolloutState:
    """The rules of `kubectl rollout status`: the controller has seen this generation, every replica is updated
    and available, and no old replica is left; `ProgressDeadlineExceeded` means it failed."""
    status = deployment.status or client.V1DeploymentStatus()
    # Until the controller has seen this generation, the conditions still describe the previous rollout.
    generation = deployment.metadata.generation if deployment.metadata else None
    if (status.observed_generation or 0) < (generation or 0):
        return RolloutState("Transitioning", "Waiting for the rollout to start.")
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            return RolloutState("Failed", f"Rollout exceeded its progress deadline: {condition.message or ''}".strip())
    wanted = deployment.spec.replicas if deployment.spec.replicas is not None else 1
    updated = status.updated_replicas or 0
    if updated < wanted:
        return RolloutState("Transitioning", f"{updated} of {wanted} replicas updated.")
    if (status.replicas or 0) > updated:
        return RolloutState("Transitioning", f"{(status.replicas or 0) - updated} old replicas pending termination.")
    if (status.available_replicas or 0) < updated:
        return RolloutState(
            "Transitioning", f"{status.available_replicas or 0} of {updated} updated replicas available."
        )
    return RolloutState("Healthy", scoring_url=scoring_url)


def probe_port_for(current: client.V1Deployment, spec: DesiredSpec) -> int:
    """Where the probes of a Deployment being patched go. One made before the runtime had a probe port probes the
    main port, and the runtime in its image may not listen on PROBE_PORT: moved there, its new pods would never
    be ready. So while the image stays the same, so do the probes; a new image is probed on PROBE_PORT."""
    template = current.spec.template if current.spec else None
    container = _scoring_container(template.spec if template else None)
    if container is None or container.image != spec.image:
        return PROBE_PORT
    return _probed_port(container)


def _scoring_container(pod_spec: client.V1PodSpec | None) -> client.V1Container | None:
    return next((c for c in (pod_spec.containers if pod_spec else None) or [] if c.name == CONTAINER_NAME), None)


def _probed_port(container: client.V1Container | None) -> int:
    """Where a scoring container answers its probes, and `GET /status`: PROBE_PORT, or CONTAINER_PORT in the pods
    of a service first deployed with an image from before the probe port (see probe_port_for)."""
    probe = container.readiness_probe if container else None
    port = probe.http_get.port if probe is not None and probe.http_get is not None else None
    return CONTAINER_PORT if port in (CONTAINER_PORT, str(CONTAINER_PORT), "http") else PROBE_PORT


def _status_port(container: client.V1Container | None) -> int:
    """The port on which a pod's scoring container answers its readiness probe, and so `GET /status`."""
    probe = container.readiness_probe if container else None
    port = probe.http_get.port if probe is not None and probe.http_get is not None else PROBE_PORT
    if isinstance(port, str) and not port.isdigit():  # a named port
        ports = (container.ports if container else None) or []
        return next((p.container_port for p in ports if p.name == port), PROBE_PORT)
    return int(port)


def _within(replicas: int | None, autoscale: dict[str, int]) -> int:
    """The count an autoscaler that is new starts from: the Deployment's, brought within its bounds (as it would
    bring it on its first round, some seconds later)."""
    return min(max(replicas or 1, autoscale["min_replicas"]), autoscale["max_replicas"])


def _found(call: Any, *args: Any, **options: Any) -> Any:
    """What a read or delete of one object answers; None when the object is not there (404)."""
    try:
        return call(*args, **options)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _annotations(obj: Any) -> dict[str, str]:
    return dict((obj.metadata.annotations if obj is not None and obj.metadata else None) or {})


def deployment_patch(spec: DesiredSpec, current: client.V1Deployment, *, scaling_before: bool) -> dict[str, Any]:
    """The merge patch that makes `current` the Deployment of `spec`. Its pod template only when that changes:
    a change of the replicas or of autoscaling alone restarts no pod. Its replicas: the fixed count, or, for a
    service that autoscales, none (the autoscaler's own count stands) unless its autoscaler is new."""
    manifest = deployment_manifest(spec, probe_port=probe_port_for(current, spec))
    patch: dict[str, Any] = {"metadata": manifest["metadata"], "spec": {}}
    made = _annotations(current).get(TEMPLATE_ANNOTATION) == manifest["metadata"]["annotations"][TEMPLATE_ANNOTATION]
    if not made or _edited(current, manifest):
        patch["spec"]["template"] = manifest["spec"]["template"]
    if not spec.autoscale:
        patch["spec"]["replicas"] = spec.replicas
    elif not scaling_before:
        patch["spec"]["replicas"] = _within(current.spec.replicas if current.spec else None, spec.autoscale)
    return patch


def _edited(current: client.V1Deployment, manifest: dict[str, Any]) -> bool:
    """Whether someone changed the scoring container's image or environment since Tributary made it (`kubectl set
    image`, `kubectl set env`, an edit): then its template is applied whole again, as the spec says it. The other
    fields are compared by the hash alone: an API server writes its defaults into them."""
    live = _scoring_container(current.spec.template.spec if current.spec and current.spec.template else None)
    wanted = manifest["spec"]["template"]["spec"]["containers"][0]
    if live is None:
        return True
    env = _as_sent(live.env or [])
    return bool(live.image != wanted["image"] or env != wanted["env"])


def _name(spec: DesiredSpec) -> str:
    return spec.service_name


def _labels(spec: DesiredSpec) -> dict[str, str]:
    return {SERVICE_LABEL: spec.service_name, MANAGED_BY[0]: MANAGED_BY[1]}


def _ours(metadata: Any, spec: DesiredSpec) -> bool:
    """Whether an object of the service's name is this service's: made by Tributary, for this service (objects
    made before the service-id annotation count as the service's of that name)."""
    labels = (metadata.labels if metadata else None) or {}
    annotations = (metadata.annotations if metadata else None) or {}
    if labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
        return False
    return annotations.get(SERVICE_ID_ANNOTATION, str(spec.service_id)) == str(spec.service_id)


def container_env(spec: DesiredSpec, probe_port: int = PROBE_PORT) -> list[dict[str, Any]]:
    """The collector's and the runtime's environment contract, with the storage secret by reference."""
    # The spec's extra variables first: the contract's own cannot be overridden by them.
    plain = dict(spec.environment)
    plain.update(
        dc.environ_for(
            enabled=spec.collect_model_data,
            workspace=spec.workspace_path,
            service_name=spec.service_name,
            model_versions={m.name: m.version for m in spec.models},
        )
    )
    plain[dc.SPOOL_DIR] = SPOOL_DIR
    plain[runtime.APP_INSIGHTS_ENABLED] = "true" if spec.enable_app_insights else "false"
    plain[runtime.MODEL_DIR] = MODEL_DIR
    plain[runtime.PORT] = str(CONTAINER_PORT)
    if probe_port != CONTAINER_PORT:
        plain[runtime.PROBE_PORT] = str(probe_port)
    if spec.require_key:  # digests, not keys: plain values (none at all: every request is refused)
        plain[runtime.KEY_HASHES] = ",".join(spec.key_hashes)
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(plain.items())]
    if spec.collect_model_data and spec.storage_secret:
        env.append(
            {
                "name": dc.STORAGE,
                "valueFrom": {"secretKeyRef": {"name": spec.storage_secret, "key": SECRET_KEY}},
            }
        )
    if spec.enable_app_insights and spec.storage_secret:
        # Optional: a workspace that sends its telemetry over OTLP only has no such key, and its pods still start.
        env.append(
            {
                "name": runtime.APPLICATIONINSIGHTS_CONNECTION_STRING,
                "valueFrom": {"secretKeyRef": {"name": spec.storage_secret, "key": APP_INSIGHTS_KEY, "optional": True}},
            }
        )
    return env


def deployment_manifest(spec: DesiredSpec, *, probe_port: int = PROBE_PORT) -> dict[str, Any]:
    """The Deployment of `spec`; `probe_port` CONTAINER_PORT probes the main port, as before the probe port."""
    if not spec.image:
        raise PermanentError("A Kubernetes service needs a scoring image.")
    labels = _labels(spec)
    ports = [{"name": "http", "containerPort": CONTAINER_PORT}]
    if probe_port != CONTAINER_PORT:
        ports.append({"name": "probes", "containerPort": probe_port})
    container = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "ports": ports,
        "env": container_env(spec, probe_port),
        "volumeMounts": [{"name": "spool", "mountPath": SPOOL_DIR}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": probe_port}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/", "port": probe_port}, "periodSeconds": 10, **spec.liveness},
    }
    if spec.resources:
        container["resources"] = spec.resources
    pod_spec = {
        "containers": [container],
        "volumes": [{"name": "spool", "emptyDir": {}}],
        "terminationGracePeriodSeconds": 60,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": _name(spec),
            "labels": labels,
            "annotations": {
                UPDATE_ANNOTATION: str(spec.update_id),
                SERVICE_ID_ANNOTATION: str(spec.service_id),
                "tributary.dev/models": json.dumps([f"{m.name}:{m.version}" for m in spec.models]),
                AUTOSCALED_ANNOTATION: "true" if spec.autoscale else "false",
                # What the pods run, but for the update that made it: the same means no rollout (deployment_patch).
                TEMPLATE_ANNOTATION: hashlib.sha256(
                    json.dumps([labels, pod_spec], sort_keys=True).encode()
                ).hexdigest(),
            },
        },
        "spec": {
            "replicas": spec.autoscale["min_replicas"] if spec.autoscale else spec.replicas,
            "selector": {"matchLabels": {SERVICE_LABEL: spec.service_name}},
            "progressDeadlineSeconds": 600,
            "template": {
                "metadata": {"labels": labels, "annotations": {UPDATE_ANNOTATION: str(spec.update_id)}},
                # SIGTERM lets the runtime flush the collector's spool before the pod goes.
                "spec": pod_spec,
            },
        },
    }


def autoscaler_manifest(spec: DesiredSpec) -> dict[str, Any]:
    """A HorizontalPodAutoscaler (autoscaling/v2) that keeps the pods' average CPU use near the target share of
    their CPU request, with min to max replicas of the service's Deployment."""
    autoscale = spec.autoscale
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": _name(spec),
            "labels": _labels(spec),
            "annotations": {SERVICE_ID_ANNOTATION: str(spec.service_id)},
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": _name(spec)},
            "minReplicas": autoscale["min_replicas"],
            "maxReplicas": autoscale["max_replicas"],
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": autoscale["target_cpu_utilization"]},
                    },
                }
            ],
        },
    }


def service_manifest(spec: DesiredSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": _name(spec),
            "labels": _labels(spec),
            "annotations": {SERVICE_ID_ANNOTATION: str(spec.service_id)},
        },
        "spec": {
            "selector": {SERVICE_LABEL: spec.service_name},
            "ports": [{"name": "http", "port": 80, "targetPort": CONTAINER_PORT}],
        },
    }


@contextmanager
def _translated_errors(doing: str, *, forbidden: str = "") -> Iterator[None]:
    """Turns client errors into the driver's: 409, 429, 5xx and network errors are worth a retry; others not.
    `forbidden` says what permission a 403 means the kubeconfig's user lacks."""
    try:
        yield
    except ApiException as exc:
        message = f"Could not {doing}: HTTP {exc.status} {_reason(exc)}"
        if exc.status == 403 and forbidden:
            message = f"{message} ({forbidden})"
        if exc.status in (409, 429) or (exc.status or 0) >= 500:
            raise TransientError(message) from exc
        raise PermanentError(message) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(f"Could not {doing}: the cluster did not answer ({type(exc).__name__}).") from exc


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason or "")
    except ValueError:
        return str(exc.reason or "")
