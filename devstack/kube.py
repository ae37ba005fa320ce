"""A Kubernetes API test server that the unmodified official ``kubernetes`` client talks to.

``KubeTestServer`` runs a stateful Kubernetes-like HTTP API (built on the ``kmock`` package) in a background thread
with its own asyncio loop, on a free loopback port, so synchronous code (the portal, Celery tasks, the compute
driver) can use ``kubernetes.client`` against it exactly as against a real cluster::

    server = KubeTestServer().start()
    apps = kubernetes.client.AppsV1Api(server.api_client())
    server.rollout(delay=0.2, outcome="available")               # default for every Deployment
    server.rollout(name="svc-a", delay=1.0, outcome="deadline")  # this Deployment fails its rollout
    ...
    server.reset()   # forget objects, rollout plans and user reactions (per-test isolation)
    server.stop()

What it simulates, on top of kmock's in-memory object store:

- Every resource kind the bundled discovery data of kmock knows (Deployments, Services, Secrets, ConfigMaps,
  Namespaces, Pods, ...): create (POST), read, list, watch, replace (PUT), delete, delete-collection, and PATCH as
  JSON Patch (a list body), JSON merge patch (``application/merge-patch+json``, RFC 7386: maps merge, lists are
  replaced whole, ``null`` deletes) or strategic merge patch (the client's default for a dict body; see below).
  The ``status`` subresource: writes to ``.../status`` change only ``status``; writes to the object keep ``status``.
- Server-set metadata: ``uid`` (uuid4), ``creationTimestamp`` (RFC 3339), ``resourceVersion`` (one counter for
  the server, bumped by every write; a no-op write bumps nothing), ``generation`` (1 at creation for objects with a
  ``spec``, except Services and Namespaces; +1 whenever ``spec`` changes). A write carrying a stale
  ``metadata.resourceVersion`` fails with 409 Conflict, as on a real API server; ``dryRun=All`` validates and
  answers without storing.
- Defaults and validation that catch real driver bugs: Deployment defaults (``replicas: 1``, RollingUpdate 25%/25%,
  ``progressDeadlineSeconds: 600``, ``imagePullPolicy``...), 422 Invalid for a Deployment without a selector, with a
  selector its template labels do not match, a changed selector, or a container without ``name`` or ``image``;
  invalid object names, label keys/values and env var names; Service ``clusterIP`` assignment and immutability,
  ``targetPort`` defaulting; Secret ``stringData`` folded into base64 ``data``, ``type: Opaque``.
- Namespaces can be created, read, listed and deleted (deleting one deletes its objects). ``default`` always
  exists; with ``auto_namespaces=True`` (the default) writing into any other namespace creates it on the way,
  with ``False`` that is 404 like a real cluster.
- ``labelSelector`` on list, watch and delete-collection: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``,
  ``a notin (x,y)``, ``a``, ``!a``, comma-separated. ``fieldSelector`` on ``metadata.name`` and
  ``metadata.namespace`` (``=``, ``==``, ``!=``).
- Watch: the current objects as ADDED events (or, with ``resourceVersion=N``, the logged events after N; an N older
  than the bounded event log gives an ERROR event with code 410 Expired), then live ADDED/MODIFIED/DELETED events;
  ``timeoutSeconds`` ends the stream as a real server does.
- A Deployment controller. When a Deployment is created or its ``spec`` changes (``generation`` bumps), the
  controller first observes it (``status.observedGeneration = generation``, ``Progressing=True`` reason
  ``ReplicaSetUpdated``, replica counts of a rollout in progress: a new Deployment has all replicas updated but none
  available; an update has one surge replica, ``status.replicas > updatedReplicas``), then, after the delay the test
  chose with ``rollout()``, writes the outcome: ``"available"`` (``replicas == updatedReplicas == readyReplicas ==
  availableReplicas == spec.replicas``, ``Available=True``, ``Progressing=True`` reason ``NewReplicaSetAvailable``),
  ``"deadline"`` (``Progressing=False`` reason ``ProgressDeadlineExceeded``; the counts stay those of the rollout
  in progress, so it never looks complete) or ``"pending"`` (stays in progress). A newer generation supersedes a
  rollout under way; the plan is chosen when a rollout starts. Counts that are zero are omitted, as the real API
  does (the client then reads ``None``). So ``kubectl rollout status`` logic works unchanged: done when
  ``generation <= observedGeneration`` and ``updatedReplicas == spec.replicas`` and ``replicas == updatedReplicas``
  and ``availableReplicas == updatedReplicas``; failed when ``Progressing`` has reason ``ProgressDeadlineExceeded``.
  The controller's status writes bump ``resourceVersion`` like any write: a PUT or a ``test`` op must use a
  resourceVersion read after them.
- Answers shaped like the real API's: 201 for a create, Kubernetes ``Status`` bodies for errors (404 NotFound,
  409 AlreadyExists/Conflict, 422 Invalid with causes, 400, 415), DELETE answering with the object for the kinds
  whose client method expects one (Services, Pods...) and with a ``Status`` for the others.
- A bearer token: requests without the server's token get 401, like a real cluster without credentials.
- Failure injection with kmock's DSL, in front of the built-in behaviour, e.g.
  ``server.emulator[kmock.action.UPDATE, kmock.resource("apps/v1/deployments")] << 500`` (set it between
  requests; ``reset()`` removes it).
- Bounded memory: kmock's request log (which it scans on every request) keeps only in-flight requests, each
  object keeps its last few versions, the watch event log is bounded.

The HTTP side is aiohttp's low-level server on a socket bound to port 0, not ``kmock.Server``: that one also opens
an aiohttp client and patches aiohttp's DNS resolution process-wide, neither of which a background server needs.

Strategic merge patch is emulated for the common built-in lists only: lists keyed by their Kubernetes merge key
(``containers``/``initContainers``/``env``/``volumes``/``imagePullSecrets`` by ``name``, ``volumeMounts`` by
``mountPath``, container ports by ``containerPort``, Service ports by ``port``, ``conditions`` by ``type``) are
merged item by item, ``$patch: delete`` / ``$patch: replace`` directives work, every other list is replaced. So, as
on a real cluster, a strategic patch that sends a container with only ``name`` and ``env`` keeps its ``image`` and
keeps env vars it does not mention (it can't remove one: use a JSON merge patch with the whole list, or JSON Patch).

Remaining gaps (a real cluster differs): no server-side apply (``application/apply-patch+yaml`` gets 415); no
``scale`` or other subresources besides ``status`` and a pod's ``log`` (whose text the test sets with
``set_pod_log()``); a pod's ``proxy`` (GET only) to the port on ``status.podIP`` that the request names, where a test
runs the real program (``emulator.pod_proxy_forbidden = True`` answers 403, as RBAC would); no ReplicaSets, no Pods but those a test creates, no HorizontalPodAutoscaler controller (an autoscaler's
``status`` is what a test writes to it), no garbage collection (nothing runs);
no finalizers or graceful deletion (DELETE removes at once); no ``limit``/``continue`` paging (lists return
everything); no watch bookmarks; ``$setElementOrder``/``$retainKeys``/``$deleteFromPrimitiveList`` directives
are ignored; validation covers only what is listed above; no RBAC (any holder of the token may do anything);
Services get a cluster IP but nothing routes to it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import copy
import datetime
import hashlib
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
import kubernetes.client
import kubernetes.config
from kmock._internal.rendering import StreamingError  # kmock==0.8 is pinned; RawHandler.__call__ relies on it

log = logging.getLogger(__name__)

__all__ = ["KubeEmulator", "KubeTestServer", "RolloutPlan", "merge_patch", "strategic_merge_patch"]

DEFAULT_TOKEN = "tributary-test-token"  # a dummy credential, checked only by this test server
OUTCOMES = ("available", "deadline", "pending")

HISTORY_VERSIONS = 5  # versions of each object kept in kmock's store (kmock keeps them all)
EVENT_LOG_SIZE = 2000  # watch events kept per resource for watches that resume from a resourceVersion

NAMESPACES = kmock.resource("", "v1", "namespaces")
PODS = kmock.resource("", "v1", "pods")
# The API server's pod proxy: /api/v1/namespaces/<ns>/pods/<name>[:<port>]/proxy[/<path>]
_POD_PROXY = re.compile(r"/api/v1/namespaces/([^/]+)/pods/([^/:]+)(?::(\d+))?/proxy(/.*)?")
NO_GENERATION_KINDS = {"Service", "Namespace"}
PROTECTED_NAMESPACES = {"default", "kube-system", "kube-public"}
# Kinds whose DELETE answers with the deleted object (the others answer with a Status), as the client expects.
RETURNS_DELETED_OBJECT = {
    "Service",
    "Pod",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "PodTemplate",
    "ResourceQuota",
    "ServiceAccount",
}
_END_OF_WATCH: dict[str, Any] = {"type": "_END"}  # sentinel put on the buses by reset()/stop()


# --------------------------------------------------------------------------------------------------------------------
# Errors shaped as the Kubernetes API's Status objects


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def _error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(code, reason, message, {k: v for k, v in details.items() if v is not None} or None)


def _resource_label(resource: kmock.resource) -> str:
    return f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)


def _not_found(resource: kmock.resource, name: str) -> kmock.KubernetesError:
    return _error(
        404,
        "NotFound",
        f'{_resource_label(resource)} "{name}" not found',
        name=name,
        group=resource.group,
        kind=resource.plural,
    )


def _no_such_resource() -> kmock.KubernetesError:
    return _error(404, "NotFound", "the server could not find the requested resource")


def _bad_request(message: str) -> kmock.KubernetesError:
    return _error(400, "BadRequest", message)


def _conflict(resource: kmock.resource, name: str) -> kmock.KubernetesError:
    return _error(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_resource_label(resource)} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        name=name,
        group=resource.group,
        kind=resource.plural,
    )


def _invalid(kind: str, resource: kmock.resource, name: str, problems: list[tuple[str, str]]) -> kmock.KubernetesError:
    texts = [f"{field}: {message}" if field else message for field, message in problems]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    qualified = f"{kind}.{resource.group}" if resource.group else kind
    causes = [{"reason": "FieldValueInvalid", "message": message, "field": field} for field, message in problems]
    return _error(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: {joined}',
        name=name,
        group=resource.group,
        kind=kind,
        causes=causes,
    )


# --------------------------------------------------------------------------------------------------------------------
# Patches


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7386): maps merge recursively, ``None`` deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# patchMergeKey of the built-in lists whose patchStrategy is "merge" (None: decided by the items, see below).
_MERGE_KEYS: dict[str, str | None] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "ports": None,  # containerPort for container ports, port for Service ports
}
_MERGED_SCALAR_LISTS = {"finalizers"}
_DELETE = object()


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch for the common built-in merge lists (see the module docstring)."""
    result = _strategic(target, patch)
    return {} if result is _DELETE else result


def _strategic(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # $setElementOrder/..., $retainKeys, $deleteFromPrimitiveList/...: not emulated
        old = result.get(key)
        if value is None:
            result.pop(key, None)
        elif key in _MERGE_KEYS and isinstance(value, list) and isinstance(old, list):
            result[key] = _strategic_list(old, value, _MERGE_KEYS[key])
        elif key in _MERGED_SCALAR_LISTS and isinstance(value, list) and isinstance(old, list):
            result[key] = old + [item for item in value if item not in old]
        else:
            merged = _strategic(old, value)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def _strategic_list(old: list[Any], new: list[Any], merge_key: str | None) -> list[Any]:
    if not all(isinstance(item, dict) for item in [*old, *new]):
        return copy.deepcopy(new)
    if any(item.get("$patch") == "replace" for item in new):
        return [
            {k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("$")}
            for item in new
            if item.get("$patch") != "replace"
        ]
    if merge_key is None:
        merge_key = "containerPort" if any("containerPort" in item for item in [*old, *new]) else "port"
    result = copy.deepcopy(old)
    for item in new:
        index = next((i for i, o in enumerate(result) if o.get(merge_key) == item.get(merge_key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


# --------------------------------------------------------------------------------------------------------------------
# Selectors

Matcher = Callable[[dict[str, Any]], bool]

_SELECTOR_TOKEN = re.compile(
    r"""^\s*(?:
        (?P<not>!)\s*(?P<nkey>[^\s!=,()]+)
      | (?P<skey>[^\s!=,()]+)\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\)
      | (?P<key>[^\s!=,()]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=,()]*)
      | (?P<ekey>[^\s!=,()]+)
    )\s*$""",
    re.VERBOSE,
)


def _split_requirements(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def parse_label_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """Compile a ``labelSelector`` string into a predicate over a labels dict (raises 400 when malformed)."""
    requirements: list[tuple[str, str, frozenset[str]]] = []  # (key, in|notin|exists|!exists, values)
    for requirement in _split_requirements(text or ""):
        m = _SELECTOR_TOKEN.match(requirement)
        if m is None:
            raise _bad_request(f"unable to parse requirement: {requirement.strip()!r}")
        if m["not"]:
            requirements.append((m["nkey"], "!exists", frozenset()))
        elif m["setop"]:
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            requirements.append((m["skey"], m["setop"], values))
        elif m["op"]:
            requirements.append((m["key"], "notin" if m["op"] == "!=" else "in", frozenset({m["value"]})))
        else:
            requirements.append((m["ekey"], "exists", frozenset()))

    def matches(labels: dict[str, str]) -> bool:
        for key, op, values in requirements:
            present = key in labels
            if op in ("exists", "!exists"):
                if present != (op == "exists"):
                    return False
            elif (present and labels[key] in values) != (op == "in"):
                return False
        return True

    return matches


def _parse_field_selector(text: str) -> Matcher:
    requirements: list[tuple[str, bool, str]] = []  # (metadata field, equal?, value)
    for requirement in _split_requirements(text or ""):
        m = re.fullmatch(r"\s*([\w.]+)\s*(==|=|!=)\s*([^\s,]*)\s*", requirement)
        if m is None:
            raise _bad_request(f"invalid selector: {requirement.strip()!r}")
        field, op, value = m.groups()
        if field not in ("metadata.name", "metadata.namespace"):
            raise _bad_request(f'"{field}" is not a known field selector: only "metadata.name", "metadata.namespace"')
        requirements.append((field.split(".", 1)[1], op != "!=", value))

    def matches(obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return all((meta.get(attr, "") == value) == equal for attr, equal, value in requirements)

    return matches


def _selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Does a LabelSelector object (matchLabels/matchExpressions) select these labels?"""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and key in labels and labels[key] in values)
            or (operator == "Exists" and key not in labels)
            or (operator == "DoesNotExist" and key in labels)
        ):
            return False
    return True


# --------------------------------------------------------------------------------------------------------------------
# Defaults and validation (a practical subset of the real API server's)

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

_KEY_RULE = "a valid key is an optional DNS subdomain and '/', then at most 63 alphanumerics, '-', '_' or '.'"
_LABEL_RULE = "a valid label value is empty or at most 63 alphanumerics, '-', '_' or '.' (alphanumeric at both ends)"
_ENV_RULE = "a valid environment variable name consists of letters, digits, '_', '-' or '.' and starts with no digit"
_CONFIG_KEY_RULE = "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
_PORT_RULE = "must be between 1 and 65535, inclusive"


class _Problems(list[tuple[str, str]]):
    """Field errors collected for one 422 Invalid answer."""

    def add(self, field: str, message: str) -> None:
        self.append((field, message))


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


def _check_name(kind: str, name: str, problems: _Problems) -> None:
    if kind == "Service":
        ok, what = len(name) <= 63 and _DNS1035_LABEL.match(name), "a DNS-1035 label"
    elif kind == "Namespace":
        ok, what = len(name) <= 63 and _DNS1123_LABEL.match(name), "a RFC 1123 label"
    else:
        ok, what = len(name) <= 253 and _DNS1123_SUBDOMAIN.match(name), "a lowercase RFC 1123 subdomain"
    if not ok:
        problems.add("metadata.name", f'Invalid value: "{name}": must be {what}')


def _check_key(key: Any, field: str, problems: _Problems) -> None:
    prefix, _, name = key.rpartition("/") if isinstance(key, str) else ("", "", "")
    prefix_ok = not prefix or (len(prefix) <= 253 and _DNS1123_SUBDOMAIN.match(prefix))
    if not (isinstance(key, str) and len(name) <= 63 and _QUALIFIED_NAME.match(name) and prefix_ok):
        problems.add(field, f'Invalid value: "{key}": {_KEY_RULE}')


def _check_metadata(kind: str, obj: dict[str, Any], problems: _Problems) -> None:
    meta = obj["metadata"]
    _check_name(kind, meta["name"], problems)
    for field in ("labels", "annotations"):
        values = meta.get(field) or {}
        if not isinstance(values, dict):
            problems.add(f"metadata.{field}", "Invalid value: must be a map of strings")
            continue
        for key, value in values.items():
            _check_key(key, f"metadata.{field}", problems)
            if not isinstance(value, str):
                problems.add(f"metadata.{field}", f"Invalid value: {key}: values must be strings")
            elif field == "labels" and (len(value) > 63 or not _LABEL_VALUE.match(value)):
                problems.add("metadata.labels", f'Invalid value: "{value}": {_LABEL_RULE}')


def _default_deployment(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    pod = (spec.get("template") or {}).get("spec")
    if isinstance(pod, dict):
        pod.setdefault("restartPolicy", "Always")
        pod.setdefault("terminationGracePeriodSeconds", 30)
        pod.setdefault("dnsPolicy", "ClusterFirst")
        pod.setdefault("securityContext", {})
        pod.setdefault("schedulerName", "default-scheduler")
        for container in [*(pod.get("containers") or []), *(pod.get("initContainers") or [])]:
            if not isinstance(container, dict):
                continue
            tag = (container.get("image") or "").rsplit("/", 1)[-1].partition("@")[0].partition(":")[2]
            container.setdefault("imagePullPolicy", "Always" if tag in ("", "latest") else "IfNotPresent")
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            for port in container.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")


def _validate_deployment(obj: dict[str, Any], old: dict[str, Any] | None, problems: _Problems) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        problems.add("spec", "Required value")
        return
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        problems.add("spec.replicas", f"Invalid value: {replicas!r}: must be greater than or equal to 0")
    selector = spec.get("selector")
    template = spec["template"] if isinstance(spec.get("template"), dict) else {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        problems.add("spec.selector", "Required value")
    elif not _selector_matches(selector, labels):
        problems.add("spec.template.metadata.labels", f"Invalid value: {labels!r}: `selector` does not match template")
    if old is not None and selector != (old.get("spec") or {}).get("selector"):
        problems.add("spec.selector", f"Invalid value: {selector!r}: field is immutable")
    pod = template.get("spec")
    if not isinstance(pod, dict) or not isinstance(pod.get("containers"), list) or not pod["containers"]:
        problems.add("spec.template.spec.containers", "Required value")
        return
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for index, container in enumerate(pod.get(group) or []):
            where = f"spec.template.spec.{group}[{index}]"
            if not isinstance(container, dict):
                problems.add(where, "Invalid value: must be an object")
                continue
            _validate_container(container, where, seen, problems)


def _validate_container(container: dict[str, Any], where: str, seen: set[str], problems: _Problems) -> None:
    name = container.get("name")
    if not name:
        problems.add(f"{where}.name", "Required value")
    elif not isinstance(name, str) or len(name) > 63 or not _DNS1123_LABEL.match(name):
        problems.add(f"{where}.name", f'Invalid value: "{name}": must be a RFC 1123 label')
    elif name in seen:
        problems.add(f"{where}.name", f'Duplicate value: "{name}"')
    else:
        seen.add(name)
    if not container.get("image"):
        problems.add(f"{where}.image", "Required value")
    for index, env in enumerate(container.get("env") or []):
        field = f"{where}.env[{index}]"
        if not isinstance(env, dict) or not env.get("name"):
            problems.add(f"{field}.name", "Required value")
            continue
        if not isinstance(env["name"], str) or not _ENV_NAME.match(env["name"]):
            problems.add(f"{field}.name", f'Invalid value: "{env["name"]}": {_ENV_RULE}')
        if env.get("value") is not None and not isinstance(env["value"], str):
            problems.add(f"{field}.value", "Invalid value: must be a string")
        if env.get("value") is not None and env.get("valueFrom") is not None:
            problems.add(f"{field}.valueFrom", "Invalid value: may not be specified when `value` is not empty")
    for index, port in enumerate(container.get("ports") or []):
        number = port.get("containerPort") if isinstance(port, dict) else None
        if not _is_port(number):
            problems.add(f"{where}.ports[{index}].containerPort", f"Invalid value: {number!r}: {_PORT_RULE}")


def _default_service(obj: dict[str, Any], old: dict[str, Any] | None, next_ip: Callable[[], str]) -> None:
    spec = obj.setdefault("spec", {})
    old_spec = (old or {}).get("spec") or {}
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if "clusterIP" not in spec:  # kept on updates that leave it out, as a real API server does
        spec["clusterIP"] = old_spec.get("clusterIP") or next_ip()
    if spec["clusterIP"] != "None":
        spec.setdefault("clusterIPs", old_spec.get("clusterIPs") or [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])
    obj.setdefault("status", {"loadBalancer": {}})


def _validate_service(obj: dict[str, Any], old: dict[str, Any] | None, problems: _Problems) -> None:
    spec = obj.get("spec") or {}
    ports = spec.get("ports") or []
    if spec.get("type", "ClusterIP") != "ExternalName" and not ports:
        problems.add("spec.ports", "Required value")
    for index, port in enumerate(ports):
        number = port.get("port") if isinstance(port, dict) else None
        if not _is_port(number):
            problems.add(f"spec.ports[{index}].port", f"Invalid value: {number!r}: {_PORT_RULE}")
        if len(ports) > 1 and isinstance(port, dict) and not port.get("name"):
            problems.add(f"spec.ports[{index}].name", "Required value")
    old_ip = ((old or {}).get("spec") or {}).get("clusterIP")
    if old_ip and spec.get("clusterIP") != old_ip:
        problems.add("spec.clusterIP", f'Invalid value: "{spec.get("clusterIP")}": field is immutable')


def _default_secret(obj: dict[str, Any]) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    if string_data:  # the API server folds stringData into data and never returns it
        data = obj.get("data") or {}
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data


def _validate_data(obj: dict[str, Any], fields: tuple[str, ...], problems: _Problems, *, base64_values: bool) -> None:
    for field in fields:
        for key, value in (obj.get(field) or {}).items():
            if len(key) > 253 or not _CONFIG_KEY.match(key):
                problems.add(f"{field}[{key}]", f'Invalid value: "{key}": {_CONFIG_KEY_RULE}')
            if base64_values:
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise _bad_request(f"illegal base64 data in {field}[{key}]") from None


# --------------------------------------------------------------------------------------------------------------------
# The emulator (a kmock handler)


@dataclass(frozen=True)
class RolloutPlan:
    """What the simulated Deployment controller does with a new generation: wait ``delay`` s, then ``outcome``."""

    delay: float = 0.0
    outcome: str = "available"  # "available" | "deadline" | "pending"

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        if self.delay < 0:
            raise ValueError("delay must be >= 0")


ObjKey = tuple[kmock.resource, str | None, str]

# Rollout phase -> the Deployment's Progressing condition (status, reason, message about its new ReplicaSet).
_PROGRESSING = {
    "progressing": ("True", "ReplicaSetUpdated", 'ReplicaSet "{}" is progressing.'),
    "available": ("True", "NewReplicaSetAvailable", 'ReplicaSet "{}" has successfully progressed.'),
    "deadline": ("False", "ProgressDeadlineExceeded", 'ReplicaSet "{}" has timed out progressing.'),
}


def _deployment_status(obj: dict[str, Any], phase: str, available_before: int) -> dict[str, Any]:
    """The status the Deployment controller writes for a rollout ``phase`` (see ``_PROGRESSING``)."""
    spec = obj.get("spec") or {}
    wanted = int(spec.get("replicas", 1))
    surge = 1 if wanted > 0 else 0
    if phase == "available":
        replicas, updated, available = wanted, wanted, wanted
    elif available_before:  # an update: one new replica surges while the old ones keep serving
        replicas, updated, available = wanted + surge, surge, available_before
    else:  # a first rollout: every replica is new, none is available yet
        replicas, updated, available = wanted, wanted, 0
    template_hash = hashlib.sha1(json.dumps(spec.get("template"), sort_keys=True).encode()).hexdigest()[:10]
    now = _now()
    old_conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}

    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        before = old_conditions.get(kind) or {}
        since = before.get("lastTransitionTime", now) if before.get("status") == status else now
        return {
            "type": kind,
            "status": status,
            "lastUpdateTime": now,
            "lastTransitionTime": since,
            "reason": reason,
            "message": message,
        }

    if available >= wanted - wanted // 4:  # the default maxUnavailable is 25%
        available_condition = condition(
            "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability."
        )
    else:
        available_condition = condition(
            "Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability."
        )
    progressing_status, reason, message = _PROGRESSING[phase]
    progressing = condition(
        "Progressing", progressing_status, reason, message.format(f"{obj['metadata']['name']}-{template_hash}")
    )
    counts = {
        "observedGeneration": obj["metadata"]["generation"],
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": available,
        "availableReplicas": available,
        "unavailableReplicas": max(replicas - available, 0),
    }
    return {**{k: v for k, v in counts.items() if v}, "conditions": [available_condition, progressing]}  # no zeros


def _header(request: kmock.Request, name: str) -> str:
    wanted = name.lower()
    return next((value for key, value in request.headers.items() if key.lower() == wanted), "")


class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the gaps closed (see the module docstring). Lives on one event loop.

    All state changes go through the ``_serve_*`` fallback reactions, so a test can still put its own kmock
    reactions in front of them (e.g. ``emulator[kmock.action.UPDATE] << 500``) to inject failures.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # kmock's fallbacks; they call our overridden _serve_* methods
        self.fallback[kmock.method.PUT] << self._serve_replace
        self.fallback[kmock.method.DELETE] << self._serve_delete_collection
        with warnings.catch_warnings():  # kmock 0.8 uses importlib.resources.read_binary (deprecated)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        self._builtin_payloads = list(self._payloads)
        self.token: str | None = DEFAULT_TOKEN
        self.auto_namespaces = True
        self._rv = 0
        self._request_seq = 0
        self._ip_seq = 0
        self._events: dict[kmock.resource, collections.deque[tuple[int, dict[str, Any]]]] = collections.defaultdict(
            collections.deque
        )
        self._expired_before: dict[kmock.resource, int] = collections.defaultdict(int)
        self._rollout_default = RolloutPlan()
        self._rollout_plans: dict[tuple[str | None, str], RolloutPlan] = {}
        self._pod_logs: dict[tuple[str | None, str, str], bytes] = {}  # (namespace, pod, container): its log
        # The one RBAC rule emulated: the token's user may not `get` the `pods/proxy` subresource (a deploying
        # service account often may create Deployments but not reach pods). Set by a test; reset() clears it.
        self.pod_proxy_forbidden = False
        self._rollouts: dict[ObjKey, asyncio.Task[None]] = {}
        self.unexpected_errors: collections.deque[str] = collections.deque(maxlen=50)
        self.recent_requests: collections.deque[str] = collections.deque(maxlen=200)
        self._create_namespace_now("default")

    # ---- request plumbing --------------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Replaces RawHandler.__call__: parses namespace URLs (kmock's parser can't), renders every error as a
        # Kubernetes Status, and keeps only in-flight requests in kmock's log (it scans the whole log per request).
        await raw_request.read()
        proxied = _POD_PROXY.fullmatch(urllib.parse.unquote(raw_request.path))
        if proxied:
            self.recent_requests.append(f"{raw_request.method} {raw_request.path_qs}")
            return await self._serve_pod_proxy(raw_request, *proxied.groups())
        request: kmock.Request | None = None
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            request = await self._parse(raw_request)
            self._requests.append(request)
            try:
                return await self._handle(request)
            except StreamingError as e:
                raw_response = e.args[0]
                raise (e.__cause__ or e) from None
        except Exception as exc:
            if not isinstance(exc, kmock.KubernetesError):
                log.exception("Kubernetes test server failed on %s %s", raw_request.method, raw_request.path_qs)
                self.unexpected_errors.append(f"{raw_request.method} {raw_request.path_qs}: {exc!r}")
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(exc)
            await self._stream_error(exc, raw_response)
            await raw_response.write_eof()
            return raw_response
        finally:
            self.recent_requests.append(f"{raw_request.method} {raw_request.path_qs}")
            if request is not None:
                self._requests.remove(request)
            for payload in self._payloads:  # each reaction also logs what it served
                payload._requests.clear()

    async def _parse(self, raw_request: aiohttp.web.BaseRequest) -> kmock.Request:
        self._request_seq += 1
        m = re.fullmatch(r"/api/v1/namespaces(?:/([^/]+)(?:/(status|finalize))?)?/?", raw_request.path)
        if m is None:
            return await kmock.Request._parse(raw_request, id=self._request_seq)
        name, subresource = m.groups()
        body = await raw_request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        method = raw_request.method.upper()
        action = None
        if method == "GET":
            watching = raw_request.query.get("watch") in ("true", "1")
            action = kmock.action.WATCH if watching else kmock.action.FETCH if name else kmock.action.LIST
        elif method == "POST" and not name:
            action = kmock.action.CREATE
        elif method == "PATCH" and name:
            action = kmock.action.UPDATE
        elif method == "DELETE" and name:
            action = kmock.action.DELETE
        return kmock.Request(
            id=self._request_seq,
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=dict(raw_request.query),
            headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies),
            body=body,
            text=body.decode("utf-8", "replace"),
            data=data,
            action=action,
            resource=NAMESPACES,
            namespace=None,
            name=name,
            subresource=subresource,
        )

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        authorized = not self.token or _header(request, "Authorization") == f"Bearer {self.token}"
        if not authorized and request.url.path != "/version":
            raise _error(401, "Unauthorized", "Unauthorized")
        if request.subresource == "log" and request.action == kmock.action.FETCH:
            return await self._serve_pod_log(request)
        # Skip KubernetesEmulator._handle: it stores writes before matching any reaction, as plain merges.
        return await super(kmock.KubernetesEmulator, self)._handle(request)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        status = self._error_status(exc)
        return aiohttp.web.json_response(status, status=status["code"])

    async def _stream_error(self, exc: Exception, raw_response: aiohttp.web.StreamResponse) -> None:
        await raw_response.write(json.dumps({"type": "ERROR", "object": self._error_status(exc)}).encode() + b"\n")

    @staticmethod
    def _error_status(exc: Exception) -> dict[str, Any]:
        if isinstance(exc, kmock.KubernetesError):
            reason = "NotFound" if isinstance(exc, kmock.KubernetesNotFoundError) else exc.reason or "InternalError"
            return _status(exc.status, reason, exc.message or reason, exc.details)
        return _status(500, "InternalError", f"Kubernetes test server error: {exc!r}")

    # ---- helpers -------------------------------------------------------------------------------------------------

    def _resolve(self, request: kmock.Request, *, named: bool = False) -> tuple[kmock.resource, Any]:
        resource = request.resource
        if resource is None or not resource.plural or resource not in self.resources:
            raise _no_such_resource()
        info = self.resources[resource]
        if info.namespaced and request.namespace is None and (named or request.action == kmock.action.CREATE):
            raise _no_such_resource()
        if not info.namespaced and request.namespace is not None:
            raise _no_such_resource()
        if request.subresource == "log":  # a pod's log: read only, as on a real API server
            if resource != PODS or request.action != kmock.action.FETCH:
                raise _no_such_resource()
        elif request.subresource not in (None, "status") or (request.subresource and "status" not in info.subresources):
            raise _no_such_resource()
        return resource, info

    def _live(self, key: ObjKey) -> dict[str, Any] | None:
        obj = self._objects._objects.get(key)
        return None if obj is None or obj.deleted else obj.raw

    def _store(self, key: ObjKey, obj: dict[str, Any]) -> None:
        if key in self._objects:
            history = self._objects[key].history
            history.append(obj)
            del history[:-HISTORY_VERSIONS]
        else:
            self._objects[key] = obj

    async def _emit(self, resource: kmock.resource, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        log_ = self._events[resource]
        log_.append((int(obj["metadata"]["resourceVersion"]), event))
        while len(log_) > EVENT_LOG_SIZE:
            self._expired_before[resource] = log_.popleft()[0]
        await self._buses[resource].put(event)

    def _bump(self, obj: dict[str, Any]) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)

    def _matcher(self, request: kmock.Request) -> Matcher:
        labels = parse_label_selector(request.params.get("labelSelector", ""))
        fields = _parse_field_selector(request.params.get("fieldSelector", ""))
        namespace, name = request.namespace, request.name

        def match(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            return (
                (namespace is None or meta.get("namespace") == namespace)
                and (name is None or meta.get("name") == name)
                and labels(meta.get("labels") or {})
                and fields(obj)
            )

        return match

    def _select(self, resource: kmock.resource, match: Matcher) -> list[tuple[ObjKey, dict[str, Any]]]:
        found = [
            (key, obj.raw)
            for key, obj in self._objects.items()
            if key[0] == resource and not obj.deleted and match(obj.raw)
        ]
        return sorted(found, key=lambda pair: (pair[0][1] or "", pair[0][2]))

    def _create_namespace_now(self, name: str) -> dict[str, Any]:
        self._rv += 1
        obj = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "resourceVersion": str(self._rv),
                "creationTimestamp": _now(),
                "labels": {"kubernetes.io/metadata.name": name},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        self._store((NAMESPACES, None, name), obj)
        return obj

    async def _ensure_namespace(self, namespace: str) -> None:
        if self._live((NAMESPACES, None, namespace)) is not None:
            return
        if not self.auto_namespaces:
            raise _not_found(NAMESPACES, namespace)
        problems = _Problems()
        _check_name("Namespace", namespace, problems)
        if problems:
            raise _invalid("Namespace", NAMESPACES, namespace, problems)
        await self._emit(NAMESPACES, "ADDED", self._create_namespace_now(namespace))

    def _next_cluster_ip(self) -> str:
        self._ip_seq += 1
        return f"10.96.{self._ip_seq // 250}.{self._ip_seq % 250 + 2}"

    def _prepare(self, resource: kmock.resource, info: Any, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Apply the defaults and validation of the object's kind (raises 422 Invalid)."""
        kind = info.kind
        if kind == "Deployment":
            _default_deployment(obj)
        elif kind == "Service":
            _default_service(obj, old, self._next_cluster_ip)
        elif kind == "Secret":
            _default_secret(obj)
        problems = _Problems()
        _check_metadata(kind, obj, problems)
        if kind == "Deployment":
            _validate_deployment(obj, old, problems)
        elif kind == "Service":
            _validate_service(obj, old, problems)
        elif kind == "Secret":
            _validate_data(obj, ("data",), problems, base64_values=True)
            if old is not None and old.get("immutable") and old.get("data") != obj.get("data"):
                problems.add("data", "Forbidden: field is immutable when `immutable` is set")
        elif kind == "ConfigMap":
            _validate_data(obj, ("data", "binaryData"), problems, base64_values=False)
        if problems:
            raise _invalid(kind, resource, obj["metadata"]["name"], problems)

    @staticmethod
    def _body(request: kmock.Request) -> dict[str, Any]:
        if not isinstance(request.data, dict):
            raise _bad_request("the request body must be a JSON object")
        body = copy.deepcopy(request.data)
        if not isinstance(body.setdefault("metadata", {}), dict):
            raise _bad_request("metadata must be a JSON object")
        return body

    @staticmethod
    def _dry_run(request: kmock.Request) -> bool:
        value = request.params.get("dryRun")
        if value not in (None, "", "All"):
            raise _bad_request(f'Invalid dry run value: "{value}"')
        return value == "All"

    # ---- the verbs -----------------------------------------------------------------------------------------------

    async def _serve_fetch(self, request: kmock.Request) -> dict[str, Any]:
        resource, _ = self._resolve(request, named=True)
        assert request.name is not None  # FETCH is a GET with a name
        obj = self._live((resource, request.namespace, request.name))
        if obj is None:
            raise _not_found(resource, request.name)
        return copy.deepcopy(obj)

    async def _serve_pod_proxy(
        self, raw_request: aiohttp.web.BaseRequest, namespace: str, pod_name: str, port: str | None, path: str | None
    ) -> aiohttp.web.StreamResponse:
        """`GET .../pods/<name>[:<port>]/proxy/<path>`, as the API server's pod proxy: to the pod's
        `status.podIP` (a test points it at 127.0.0.1, where it runs the real program), that port, that path."""
        try:
            if self.token and raw_request.headers.get("Authorization") != f"Bearer {self.token}":
                raise _error(401, "Unauthorized", "Unauthorized")
            if raw_request.method != "GET":
                raise _error(405, "MethodNotAllowed", "the pod proxy of this test server answers GET only")
            if self.pod_proxy_forbidden:  # worded as a real API server words it
                raise _error(
                    403,
                    "Forbidden",
                    f'pods "{pod_name}" is forbidden: User "system:serviceaccount:{namespace}:deployer" cannot get '
                    f'resource "pods/proxy" in API group "" in the namespace "{namespace}"',
                    name=pod_name,
                    kind="pods",
                )
            pod = self._live((PODS, namespace, pod_name))
            if pod is None:
                raise _not_found(PODS, pod_name)
            ip = (pod.get("status") or {}).get("podIP")
            if not ip:
                raise _error(503, "ServiceUnavailable", f"pod {pod_name} has no IP address yet")
            if port is None:
                ports = [p for c in pod["spec"].get("containers") or [] for p in c.get("ports") or []]
                port = str(ports[0]["containerPort"]) if ports else "80"
            url = f"http://{ip}:{port}{path or '/'}"
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                    session.get(url, params=raw_request.query) as answer,
                ):
                    body = await answer.read()
                    return aiohttp.web.Response(body=body, status=answer.status, content_type=answer.content_type)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _error(503, "ServiceUnavailable", f"error trying to reach service: {exc}") from exc
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)

    async def _serve_pod_log(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """`GET .../pods/<name>/log` as text: what the test gave `set_pod_log()`, honouring `container` and
        `tailLines` and `limitBytes`. A pod of more than one container needs `container`, as on a real API server. Served apart
        from kmock's reactions: their rendering has no text/plain, and a header set by one response stays on the
        reaction for the next."""
        resource, _ = self._resolve(request, named=True)
        assert request.name is not None
        pod = self._live((resource, request.namespace, request.name))
        if pod is None:
            raise _not_found(resource, request.name)
        containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        container = request.params.get("container") or (containers[0] if len(containers) == 1 else None)
        if container is None:
            raise _bad_request(
                f"a container name must be specified for pod {request.name}, choose one of: {containers}"
            )
        if container not in containers:
            raise _bad_request(f"container {container} is not valid for pod {request.name}")
        lines = self._pod_logs.get((request.namespace, request.name, container), b"").splitlines(keepends=True)
        for option in ("tailLines", "limitBytes"):
            if not request.params.get(option, "0").isdecimal():
                raise _bad_request(f"invalid {option}: {request.params[option]}")
        if "tailLines" in request.params:
            lines = lines[-int(request.params["tailLines"]) :] if int(request.params["tailLines"]) else []
        text = b"".join(lines)
        if "limitBytes" in request.params:
            text = text[: int(request.params["limitBytes"])]
        return aiohttp.web.Response(body=text, content_type="text/plain")

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        resource, info = self._resolve(request)
        match = self._matcher(request)
        async with self._lock:
            items = [copy.deepcopy(obj) for _, obj in self._select(resource, match)]
            version = str(self._rv)
        return {
            "apiVersion": f"{resource.group}/{resource.version}" if resource.group else resource.version,
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        # Errors raised before the first yield are answered as plain API errors (400/404), after it as ERROR events.
        resource, _ = self._resolve(request)
        match = self._matcher(request)
        timeout = request.params.get("timeoutSeconds")
        try:
            since = int(request.params.get("resourceVersion") or "0")
            deadline = time.monotonic() + float(timeout) if timeout else None
        except ValueError:
            raise _bad_request("resourceVersion and timeoutSeconds must be numbers") from None
        bus = self._buses[resource]
        initial: list[dict[str, Any]]
        async with self._lock:
            marker = await bus.mark()  # no event can slip between the snapshot below and the live stream
            if since == 0:
                initial = [{"type": "ADDED", "object": copy.deepcopy(obj)} for _, obj in self._select(resource, match)]
            elif since < self._expired_before[resource]:
                expired = _status(410, "Expired", f"too old resource version: {since} ({self._rv})")
                initial = [{"type": "ERROR", "object": expired}]
            else:
                initial = [event for rv, event in self._events[resource] if rv > since and match(event["object"])]
        try:
            yield b""  # send the headers now, like a real API server
            for event in initial:
                yield event
            if initial and initial[-1]["type"] == "ERROR":
                return
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(bus.get(since=marker), remaining)
                except TimeoutError:
                    return
                if event is _END_OF_WATCH:
                    return
                if match(event["object"]):
                    yield event
        finally:
            await bus.unmark(marker)

    async def _serve_create(self, request: kmock.Request) -> kmock.Response:
        resource, info = self._resolve(request)
        if request.subresource or request.name:
            raise _error(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        obj = self._body(request)
        meta = obj["metadata"]
        namespace = request.namespace if info.namespaced else None
        if info.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise _bad_request("the namespace of the provided object does not match the namespace sent on the request")
        if obj.get("kind") not in (None, "", info.kind):
            raise _bad_request(f"the kind of the provided object ({obj['kind']}) does not match {info.kind}")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise _invalid(
                info.kind, resource, "", [("metadata.name", "Required value: name or generateName is required")]
            )
        name = meta["name"]
        dry_run = self._dry_run(request)
        async with self._lock:
            if namespace is not None and not dry_run:
                await self._ensure_namespace(namespace)
            key = (resource, namespace, name)
            if self._live(key) is not None:
                raise _error(
                    409,
                    "AlreadyExists",
                    f'{_resource_label(resource)} "{name}" already exists',
                    name=name,
                    group=resource.group,
                    kind=resource.plural,
                )
            obj["apiVersion"] = f"{resource.group}/{resource.version}" if resource.group else resource.version
            obj["kind"] = info.kind
            if namespace is None:
                meta.pop("namespace", None)
            else:
                meta["namespace"] = namespace
            for server_set in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
                meta.pop(server_set, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            if "status" in info.subresources:
                obj.pop("status", None)  # a real API server resets status on create
            if info.kind == "Namespace":
                meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
                obj.setdefault("spec", {"finalizers": ["kubernetes"]})
                obj["status"] = {"phase": "Active"}
            self._prepare(resource, info, obj, None)
            if info.kind == "Deployment":
                obj["status"] = {}
            if "spec" in obj and info.kind not in NO_GENERATION_KINDS:
                meta["generation"] = 1
            else:
                meta.pop("generation", None)
            if dry_run:
                return kmock.Response(status=201, payload=obj)
            self._bump(obj)
            self._store(key, obj)
            await self._emit(resource, "ADDED", obj)
            if info.kind == "Deployment":
                self._start_rollout(key, obj, previous=None)
        return kmock.Response(status=201, payload=copy.deepcopy(obj))

    async def _serve_update(self, request: kmock.Request) -> dict[str, Any]:
        resource, info = self._resolve(request, named=True)
        assert request.name is not None  # UPDATE is a PATCH with a name
        content_type = _header(request, "Content-Type").split(";")[0].strip().lower()
        patch = request.data
        key = (resource, request.namespace, request.name)
        async with self._lock:
            old = self._live(key)
            if old is None:
                raise _not_found(resource, request.name)
            if content_type == "application/json-patch+json":
                if not isinstance(patch, list):
                    raise _bad_request("a JSON Patch must be a JSON array of operations")
                try:
                    new = jsonpatch.apply_patch(copy.deepcopy(old), patch)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, TypeError) as e:
                    raise _invalid(info.kind, resource, request.name, [("", f"the JSON Patch failed: {e}")]) from None
            elif content_type == "application/merge-patch+json":
                if not isinstance(patch, dict):
                    raise _bad_request("a JSON merge patch must be a JSON object")
                new = merge_patch(old, patch)
            elif content_type == "application/strategic-merge-patch+json":
                if not isinstance(patch, dict):
                    raise _bad_request("a strategic merge patch must be a JSON object")
                new = strategic_merge_patch(old, patch)
            elif content_type.startswith("application/apply-patch"):
                raise _error(415, "UnsupportedMediaType", "server-side apply is not supported by the test server")
            else:
                raise _error(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format: {content_type or 'no Content-Type'}",
                )
            return await self._commit_update(request, resource, info, key, old, new)

    async def _serve_replace(self, request: kmock.Request) -> dict[str, Any]:
        if request.resource is None or request.name is None:
            raise NotImplementedError  # not a PUT of an object: let the next fallback answer (404)
        resource, info = self._resolve(request, named=True)
        new = self._body(request)
        if new["metadata"].get("name") not in (None, request.name):
            raise _bad_request(
                f"the name of the object ({new['metadata']['name']}) does not match the name on the "
                f"URL ({request.name})"
            )
        key = (resource, request.namespace, request.name)
        async with self._lock:
            old = self._live(key)
            if old is None:
                raise _not_found(resource, request.name)
            return await self._commit_update(request, resource, info, key, old, new)

    async def _commit_update(
        self,
        request: kmock.Request,
        resource: kmock.resource,
        info: Any,
        key: ObjKey,
        old: dict[str, Any],
        new: Any,
    ) -> dict[str, Any]:
        """Turn a patched or replaced body into the stored object. Runs under the lock."""
        name = key[2]
        if not isinstance(new, dict) or not isinstance(new.get("metadata") or {}, dict):
            raise _invalid(info.kind, resource, name, [("", "Invalid value: the result must be an object")])
        old_meta = old["metadata"]
        requested_rv = (new.get("metadata") or {}).get("resourceVersion")
        if requested_rv and requested_rv != old_meta.get("resourceVersion"):
            raise _conflict(resource, name)
        if request.subresource == "status":
            result = copy.deepcopy(old)
            result["status"] = copy.deepcopy(new.get("status"))
            if result["status"] is None:
                del result["status"]
        else:
            result = new
            meta = result.setdefault("metadata", {})
            if meta.get("name", name) != name or meta.get("namespace", key[1]) != key[1]:
                raise _bad_request("metadata.name and metadata.namespace cannot be changed")
            if "status" in info.subresources:
                if "status" in old:
                    result["status"] = copy.deepcopy(old["status"])
                else:
                    result.pop("status", None)
            for field in ("name", "namespace", "uid", "creationTimestamp", "generation"):
                if field in old_meta:
                    meta[field] = old_meta[field]
                else:
                    meta.pop(field, None)
            result["apiVersion"], result["kind"] = old["apiVersion"], old["kind"]
        result["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        self._prepare(resource, info, result, old)
        if result == old:
            return copy.deepcopy(old)  # a no-op write changes nothing, not even the resourceVersion
        spec_changed = request.subresource is None and result.get("spec") != old.get("spec")
        if spec_changed and "generation" in old_meta:
            result["metadata"]["generation"] = old_meta["generation"] + 1
        if self._dry_run(request):
            return result
        self._bump(result)
        self._store(key, result)
        await self._emit(resource, "MODIFIED", result)
        if info.kind == "Deployment" and spec_changed:
            self._start_rollout(key, result, previous=old)
        return copy.deepcopy(result)

    async def _serve_delete(self, request: kmock.Request) -> dict[str, Any]:
        resource, _ = self._resolve(request, named=True)
        assert request.name is not None  # DELETE action means a name
        key = (resource, request.namespace, request.name)
        options = request.data if isinstance(request.data, dict) else {}
        async with self._lock:
            obj = self._live(key)
            if obj is None:
                raise _not_found(resource, request.name)
            if resource == NAMESPACES and request.name in PROTECTED_NAMESPACES:
                raise _error(
                    403, "Forbidden", f'namespaces "{request.name}" is forbidden: this namespace may not be deleted'
                )
            preconditions = options.get("preconditions") or {}
            for field in ("uid", "resourceVersion"):
                if preconditions.get(field) and preconditions[field] != obj["metadata"].get(field):
                    raise _conflict(resource, request.name)
            if not self._dry_run(request):
                obj = await self._delete(key)
        if self.resources[resource].kind in RETURNS_DELETED_OBJECT:
            return copy.deepcopy(obj)
        return self._success(resource, request.name, obj)

    async def _serve_delete_collection(self, request: kmock.Request) -> dict[str, Any]:
        if request.resource is None or not request.resource.plural or request.name is not None:
            raise NotImplementedError  # not a collection of objects: let the next fallback answer (404)
        resource, _ = self._resolve(request)
        match = self._matcher(request)
        async with self._lock:
            if not self._dry_run(request):
                for key, _obj in self._select(resource, match):
                    await self._delete(key)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}

    async def _delete(self, key: ObjKey) -> dict[str, Any]:
        """Delete an object (and a namespace's contents) now, with DELETED events. Runs under the lock."""
        resource, _, name = key
        if resource == NAMESPACES:
            for inner in [k for k in self._objects if k[1] == name and self._live(k) is not None]:
                await self._delete(inner)
        obj = copy.deepcopy(self._live(key))
        assert obj is not None
        task = self._rollouts.pop(key, None)
        if task is not None:
            task.cancel()
        self._bump(obj)
        del self._objects[key]
        await self._emit(resource, "DELETED", obj)
        return obj

    @staticmethod
    def _success(resource: kmock.resource, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": resource.group, "kind": resource.plural, "uid": obj["metadata"]["uid"]},
        }

    # ---- the Deployment controller -------------------------------------------------------------------------------

    def set_rollout(self, plan: RolloutPlan, name: str | None = None, namespace: str | None = None) -> None:
        if name is None:
            self._rollout_default = plan
        else:
            self._rollout_plans[namespace, name] = plan

    def _plan_for(self, namespace: str | None, name: str) -> RolloutPlan:
        plans = self._rollout_plans
        return plans.get((namespace, name)) or plans.get((None, name)) or self._rollout_default

    def _start_rollout(self, key: ObjKey, obj: dict[str, Any], previous: dict[str, Any] | None) -> None:
        old_task = self._rollouts.pop(key, None)
        if old_task is not None:
            old_task.cancel()
        status = (previous or {}).get("status") or {}
        available_before = int(status.get("availableReplicas") or 0)
        plan = self._plan_for(key[1], key[2])
        generation = obj["metadata"]["generation"]
        self._rollouts[key] = asyncio.get_running_loop().create_task(
            self._roll_out(key, generation, plan, available_before), name=f"rollout {key[1]}/{key[2]}"
        )

    async def _roll_out(self, key: ObjKey, generation: int, plan: RolloutPlan, available_before: int) -> None:
        await asyncio.sleep(0)  # the controller notices the change just after the write is answered
        await self._write_rollout_status(key, generation, "progressing", available_before)
        if plan.outcome == "pending":
            return
        await asyncio.sleep(plan.delay)
        await self._write_rollout_status(key, generation, plan.outcome, available_before)

    async def _write_rollout_status(self, key: ObjKey, generation: int, phase: str, available_before: int) -> None:
        async with self._lock:
            obj = self._live(key)
            if obj is None or obj["metadata"].get("generation") != generation:
                return  # deleted or superseded by a newer generation
            obj = copy.deepcopy(obj)
            obj["status"] = _deployment_status(obj, phase, available_before)
            self._bump(obj)
            self._store(key, obj)
            await self._emit(key[0], "MODIFIED", obj)

    # ---- test controls -------------------------------------------------------------------------------------------

    async def reset(self) -> None:
        """Forget every object, rollout plan and user reaction; end the open watches."""
        async with self._lock:
            await self._end_background_work()
            self._objects.clear()
            for resource, events in self._events.items():
                if events:
                    self._expired_before[resource] = self._rv + 1  # resuming an old watch gets 410 Expired
                events.clear()
            self._rollout_default = RolloutPlan()
            self._rollout_plans.clear()
            self._pod_logs.clear()
            self.pod_proxy_forbidden = False
            self._payloads[:] = self._builtin_payloads
            self.unexpected_errors.clear()
            self.recent_requests.clear()
            self._create_namespace_now("default")

    async def _end_background_work(self) -> None:
        for task in self._rollouts.values():
            task.cancel()
        self._rollouts.clear()
        for bus in list(self._buses.values()):
            await bus.put(_END_OF_WATCH)

    async def shutdown(self) -> None:
        async with self._lock:
            await self._end_background_work()

    def recorded_request_count(self) -> int:
        """How many requests kmock's own logs hold right now (the root log and every reaction's)."""
        return len(self._requests) + sum(len(payload._requests) for payload in self._payloads)


# --------------------------------------------------------------------------------------------------------------------
# The server in a background thread


class KubeTestServer:
    """Serve a ``KubeEmulator`` on a free loopback port from a background thread with its own event loop."""

    def __init__(self, *, host: str = "127.0.0.1", token: str = DEFAULT_TOKEN, auto_namespaces: bool = True) -> None:
        self.host = host
        self.token = token
        self.auto_namespaces = auto_namespaces
        self.port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._emulator: KubeEmulator | None = None
        self._startup_error: BaseException | None = None

    def __enter__(self) -> KubeTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the Kubernetes test server is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def emulator(self) -> KubeEmulator:
        """The kmock handler, for kmock's DSL (``emulator[...] << 500``); change it only between requests."""
        if self._emulator is None:
            raise RuntimeError("the Kubernetes test server is not started")
        return self._emulator

    def start(self, timeout: float = 10.0) -> KubeTestServer:
        if self._thread is not None:
            raise RuntimeError("the Kubernetes test server is already started")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="kube-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"the Kubernetes test server did not start within {timeout}s")
        if self._startup_error is not None:
            self._thread = None
            raise RuntimeError("the Kubernetes test server failed to start") from self._startup_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the Kubernetes test server did not stop within {timeout}s")
        self._thread = self._loop = self._stopping = self._emulator = None
        self.port = None

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as e:
            if not ready.is_set():
                self._startup_error = e
                ready.set()
            else:
                log.exception("the Kubernetes test server crashed")

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        emulator = KubeEmulator()
        emulator.token = self.token
        emulator.auto_namespaces = self.auto_namespaces
        async with emulator:
            server = aiohttp.web.Server(emulator, handler_cancellation=True, access_log=None)
            runner = aiohttp.web.ServerRunner(server, shutdown_timeout=2.0)
            await runner.setup()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((self.host, 0))
                site = aiohttp.web.SockSite(runner, sock)
                await site.start()
                self.port = int(sock.getsockname()[1])
                self._emulator = emulator
                ready.set()
                await self._stopping.wait()
            finally:
                await emulator.shutdown()
                await runner.cleanup()
                sock.close()

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the Kubernetes test server is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---- for tests -----------------------------------------------------------------------------------------------

    def kubeconfig_dict(self, namespace: str = "default") -> dict[str, Any]:
        """A kubeconfig for ``kubernetes.config.load_kube_config_from_dict`` (cluster = this server)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-test-server", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "kube-test-server",
                    "context": {"cluster": "kube-test-server", "user": "tester", "namespace": namespace},
                }
            ],
            "current-context": "kube-test-server",
        }

    def api_client(self) -> kubernetes.client.ApiClient:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config_from_dict(self.kubeconfig_dict(), client_configuration=configuration)
        return kubernetes.client.ApiClient(configuration)

    def rollout(
        self, *, name: str | None = None, namespace: str | None = None, delay: float = 0.0, outcome: str = "available"
    ) -> None:
        """Choose what the Deployment controller does with the next rollouts: of every Deployment (no ``name``),
        or of the Deployments called ``name`` (in ``namespace``, or in any). Applies to rollouts started later."""
        plan = RolloutPlan(delay=delay, outcome=outcome)

        async def apply() -> None:
            self.emulator.set_rollout(plan, name=name, namespace=namespace)

        self._run(apply())

    def set_pod_log(self, namespace: str, pod: str, text: str | bytes, *, container: str = "scoring") -> None:
        """What ``GET .../pods/<pod>/log`` answers for that container (nothing runs here to write it): text, or
        bytes as a program may write them (not always UTF-8)."""

        async def store() -> None:
            self.emulator._pod_logs[(namespace, pod, container)] = text.encode() if isinstance(text, str) else text

        self._run(store())

    def reset(self) -> None:
        """Forget all objects (``default`` namespace stays), rollout plans, user reactions; end open watches."""
        self._run(self.emulator.reset())

    def get_object(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object (a copy), e.g. ``get_object("apps/v1/deployments", "ns", "web")``, or None."""

        async def read() -> dict[str, Any] | None:
            obj = self.emulator._live((kmock.resource(resource), namespace, name))
            return copy.deepcopy(obj)

        return self._run(read())

    @property
    def unexpected_errors(self) -> list[str]:
        """Server-side failures that were not deliberate API errors (should stay empty)."""
        return list(self.emulator.unexpected_errors)

    def recorded_request_count(self) -> int:
        """How many requests kmock's logs currently hold (stays near zero: only in-flight requests are kept)."""

        async def count() -> int:
            return self.emulator.recorded_request_count()

        return self._run(count())
