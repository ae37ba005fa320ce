"""Workspace, Webservice and deployment configuration, shaped like azureml.core's."""

from __future__ import annotations

import builtins
import json
import os
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from typing import Any

from tributary_sdk.client import Client, WebserviceException

TERMINAL_STATES = ("Healthy", "Failed")


class Workspace:
    """A workspace of the portal, named as Azure ML named it: subscription, resource group, workspace name."""

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        workspace_name: str,
        *,
        url: str | None = None,
        token: str | None = None,
    ) -> None:
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.name = workspace_name
        self._client = Client(
            url or os.environ.get("TRIBUTARY_URL", ""), token or os.environ.get("TRIBUTARY_TOKEN", "")
        )
        self._id: int | None = None

    def __repr__(self) -> str:
        return f"Workspace({self.subscription_id!r}, {self.resource_group!r}, {self.name!r})"

    @property
    def id(self) -> int:
        if self._id is None:
            for ws in self._client.request("GET", "workspaces/")["workspaces"]:
                if (ws["subscription_id"], ws["resource_group"], ws["name"]) == (
                    self.subscription_id,
                    self.resource_group,
                    self.name,
                ):
                    self._id = int(ws["id"])
                    break
            else:
                raise WebserviceException(f"No workspace {self.name!r} that this token may see.", status=404)
        return self._id

    @property
    def webservices(self) -> dict[str, Webservice]:
        found = self._client.request("GET", f"workspaces/{self.id}/services/")["services"]
        return {s["name"]: Webservice._from_json(self, s) for s in found}


AUTOSCALE_SETTINGS = (
    "autoscale_enabled",
    "autoscale_min_replicas",
    "autoscale_max_replicas",
    "autoscale_target_utilization",
)


@dataclass
class AutoScaler:
    """A service's autoscaling, as azureml.core's `AksWebservice.autoscaler` had it (the same fields, in the same
    order). Tributary's is a Kubernetes HorizontalPodAutoscaler: `target_utilization` is the pods' average CPU use,
    in % of what each requests (Azure ML's counted requests in flight); `refresh_period_seconds` is None, the
    cluster's own period (15 s unless its administrator changed it)."""

    autoscale_enabled: bool
    max_replicas: int
    min_replicas: int
    refresh_period_seconds: int | None
    target_utilization: int

    def serialize(self) -> dict[str, Any]:
        return {
            "autoscaleEnabled": self.autoscale_enabled,
            "maxReplicas": self.max_replicas,
            "minReplicas": self.min_replicas,
            "refreshPeriodInSeconds": self.refresh_period_seconds,
            "targetUtilization": self.target_utilization,
        }


@dataclass
class LivenessProbeRequirements:
    """A service's liveness probe, as azureml.core's `AksWebservice.liveness_probe_requirements` had it (the same
    fields, in the same order); Kubernetes requires `success_threshold` 1 for a liveness probe."""

    period_seconds: int
    initial_delay_seconds: int
    timeout_seconds: int
    success_threshold: int
    failure_threshold: int


# The legacy keyword of each liveness setting, and the portal's name for it.
LIVENESS_SETTINGS = {
    "period_seconds": "liveness_period_seconds",
    "initial_delay_seconds": "liveness_initial_delay_seconds",
    "timeout_seconds": "liveness_timeout_seconds",
    "failure_threshold": "liveness_failure_threshold",
}


@dataclass
class DeploymentConfiguration:
    compute_type: str
    collect_model_data: bool = False
    enable_app_insights: bool = False
    # None: 1, or the fewest replicas of an autoscaled service.
    num_replicas: int | None = None
    compute_target: str | None = None
    # POST /score needs one of the service's keys (get_keys()). None: the portal's default, which requires one
    # (as Azure ML's AKS services did).
    auth_enabled: bool | None = None
    # Kubernetes: what each pod requests and may use at most (GB of 10^9 bytes). None: nothing of its own (Azure
    # ML requested 0.1 cores and 0.5 GB when not told).
    cpu_cores: float | None = None
    memory_gb: float | None = None
    cpu_cores_limit: float | None = None
    memory_gb_limit: float | None = None
    # Kubernetes: a HorizontalPodAutoscaler on the pods' CPU use (it needs cpu_cores) instead of num_replicas.
    # Off unless asked for: Azure ML turned it on when num_replicas was not given.
    autoscale_enabled: bool | None = None
    autoscale_min_replicas: int | None = None
    autoscale_max_replicas: int | None = None
    autoscale_target_utilization: int | None = None
    # Kubernetes: the liveness probe (None: the portal's default for each).
    period_seconds: int | None = None
    initial_delay_seconds: int | None = None
    timeout_seconds: int | None = None
    failure_threshold: int | None = None
    # Kubernetes: the new service's keys, when it must take keys its clients hold already (None: generated).
    primary_key: str | None = field(default=None, repr=False)
    secondary_key: str | None = field(default=None, repr=False)

    def resources(self) -> dict[str, float]:
        return {
            name: value
            for name in ("cpu_cores", "memory_gb", "cpu_cores_limit", "memory_gb_limit")
            if (value := getattr(self, name)) is not None
        }

    def autoscale(self) -> dict[str, Any]:
        return {name: value for name in AUTOSCALE_SETTINGS if (value := getattr(self, name)) is not None}

    def liveness(self) -> dict[str, int]:
        return {
            ours: value for legacy, ours in LIVENESS_SETTINGS.items() if (value := getattr(self, legacy)) is not None
        }


@dataclass
class InferenceConfig:
    """What to serve: an entry script on this machine (local target) or a scoring image (Kubernetes)."""

    entry_script: str | None = None
    image: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class AksWebservice:
    @staticmethod
    def deploy_configuration(
        collect_model_data: bool = False,
        enable_app_insights: bool = False,
        num_replicas: int | None = None,
        compute_target: str | None = None,
        auth_enabled: bool | None = None,
        cpu_cores: float | None = None,
        memory_gb: float | None = None,
        cpu_cores_limit: float | None = None,
        memory_gb_limit: float | None = None,
        autoscale_enabled: bool | None = None,
        autoscale_min_replicas: int | None = None,
        autoscale_max_replicas: int | None = None,
        autoscale_target_utilization: int | None = None,
        period_seconds: int | None = None,
        initial_delay_seconds: int | None = None,
        timeout_seconds: int | None = None,
        failure_threshold: int | None = None,
        primary_key: str | None = None,
        secondary_key: str | None = None,
        **others: Any,
    ) -> DeploymentConfiguration:
        """As in azureml.core (a key is required unless `auth_enabled=False`), but autoscaling is off unless
        `autoscale_enabled=True`, and then it scales on the pods' CPU use against `cpu_cores`; the liveness probe's
        settings default to Kubernetes' (Azure ML's first probe came after 310 s). Settings that Tributary does not
        use (autoscale_refresh_seconds, success_threshold, token_auth_enabled, tags, ...) are accepted, each named
        in a warning."""
        _warn_unused(others)
        _check_autoscale(
            autoscale_enabled,
            num_replicas,
            autoscale_min_replicas=autoscale_min_replicas,
            autoscale_max_replicas=autoscale_max_replicas,
            autoscale_target_utilization=autoscale_target_utilization,
        )
        return DeploymentConfiguration(
            "kubernetes",
            collect_model_data,
            enable_app_insights,
            num_replicas,
            compute_target,
            auth_enabled=auth_enabled,
            cpu_cores=cpu_cores,
            memory_gb=memory_gb,
            cpu_cores_limit=cpu_cores_limit,
            memory_gb_limit=memory_gb_limit,
            autoscale_enabled=autoscale_enabled,
            autoscale_min_replicas=autoscale_min_replicas,
            autoscale_max_replicas=autoscale_max_replicas,
            autoscale_target_utilization=autoscale_target_utilization,
            period_seconds=period_seconds,
            initial_delay_seconds=initial_delay_seconds,
            timeout_seconds=timeout_seconds,
            failure_threshold=failure_threshold,
            primary_key=primary_key,
            secondary_key=secondary_key,
        )


class LocalWebservice:
    @staticmethod
    def deploy_configuration(
        collect_model_data: bool = False,
        enable_app_insights: bool = False,
        compute_target: str | None = None,
        auth_enabled: bool | None = None,
        **others: Any,
    ) -> DeploymentConfiguration:
        """A service on the portal's machine. Unlike the legacy local services, it requires a key unless
        `auth_enabled=False`, as every new service does. Other settings (port, ...) are named in a warning."""
        _warn_unused(others)
        return DeploymentConfiguration(
            "local", collect_model_data, enable_app_insights, 1, compute_target, auth_enabled=auth_enabled
        )


class Webservice:
    """A deployed service. `state` is as of the last call that read it (`update_deployment_state()` refreshes)."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name
        self._load(workspace._client.request("GET", self._path()))

    @staticmethod
    def list(
        workspace: Workspace,
        compute_type: str | None = None,
        model_name: str | None = None,
        **others: Any,
    ) -> list[Webservice]:
        """The workspace's services, by name, as azureml.core's `Webservice.list()`: of one compute type ("AKS" or
        "Kubernetes", "Local"; Azure's others have none here), and serving a model of that name. Its other filters
        (image_name, tags, ...) are refused: a list that ignored them would look filtered and not be."""
        if message := _unused(others):
            raise WebserviceException(message.replace("apply these settings", "filter services by"))
        # Azure's names for the kinds that exist here; any other (ACI, ...) matches no service.
        kinds = {"aks": "kubernetes", "kubernetes": "kubernetes", "local": "local"}
        wanted = kinds.get(compute_type.lower(), "none") if compute_type else None
        services = sorted(workspace.webservices.values(), key=lambda s: s.name)
        return [
            s
            for s in services
            if (wanted is None or s.compute_type == wanted)
            and (model_name is None or any(m.partition(":")[0] == model_name for m in s._data["models"]))
        ]

    @classmethod
    def _from_json(cls, workspace: Workspace, data: dict[str, Any]) -> Webservice:
        service = cls.__new__(cls)
        service.workspace, service.name = workspace, data["name"]
        service._load(data)
        return service

    def __repr__(self) -> str:
        return f"Webservice({self.name!r}, state={self.state!r})"

    def _path(self) -> str:
        return f"workspaces/{self.workspace.id}/services/{self.name}/"

    def _load(self, data: dict[str, Any]) -> None:
        self._data = data
        self.state: str = data["state"]
        self.scoring_uri: str = data["scoring_uri"]
        # GET of the service's swagger document, as azureml.core's: None while there is no scoring URI (a portal
        # older than swagger_uri gives none either). Served for scripts with inference_schema decorators, no key needed.
        self.swagger_uri: str | None = data.get("swagger_uri") or None
        self.collect_model_data: bool = data["collect_model_data"]
        self.enable_app_insights: bool = data["enable_app_insights"]
        self.compute_type: str = data["compute_type"]
        self.auth_enabled: bool = data.get("auth_enabled", False)
        self.cpu_cores: float | None = data.get("cpu_cores")
        self.memory_gb: float | None = data.get("memory_gb")
        self.cpu_cores_limit: float | None = data.get("cpu_cores_limit")
        self.memory_gb_limit: float | None = data.get("memory_gb_limit")
        self.num_replicas: int | None = data.get("replicas")
        # None from a portal older than autoscaling.
        self.autoscaler: AutoScaler | None = None
        self.liveness_probe_requirements: LivenessProbeRequirements | None = None
        # None on this machine (its processes have no probe), and from a portal older than liveness settings.
        if "liveness_period_seconds" in data and data["compute_type"] != "local":
            self.liveness_probe_requirements = LivenessProbeRequirements(
                period_seconds=data["liveness_period_seconds"] or 10,
                initial_delay_seconds=data["liveness_initial_delay_seconds"] or 0,
                timeout_seconds=data["liveness_timeout_seconds"] or 1,
                success_threshold=1,
                failure_threshold=data["liveness_failure_threshold"] or 3,
            )
        if "autoscale_enabled" in data:
            self.autoscaler = AutoScaler(
                autoscale_enabled=data["autoscale_enabled"],
                max_replicas=data["autoscale_max_replicas"],
                min_replicas=data["autoscale_min_replicas"],
                refresh_period_seconds=None,
                target_utilization=data["autoscale_target_utilization"],
            )
        self.error: str = data["state_reason"]

    def update_deployment_state(self) -> None:
        self._load(self.workspace._client.request("GET", self._path()))

    def update(
        self,
        *,
        collect_model_data: bool | None = None,
        enable_app_insights: bool | None = None,
        num_replicas: int | None = None,
        auth_enabled: bool | None = None,
        cpu_cores: float | None = None,
        memory_gb: float | None = None,
        cpu_cores_limit: float | None = None,
        memory_gb_limit: float | None = None,
        autoscale_enabled: bool | None = None,
        autoscale_min_replicas: int | None = None,
        autoscale_max_replicas: int | None = None,
        autoscale_target_utilization: int | None = None,
        period_seconds: int | None = None,
        initial_delay_seconds: int | None = None,
        timeout_seconds: int | None = None,
        failure_threshold: int | None = None,
        models: builtins.list[Model | str] | None = None,  # `list` is the method above, in here
        inference_config: InferenceConfig | None = None,
        reason: str = "",
        **others: Any,
    ) -> None:
        """Change settings; the portal applies them in the background (follow with `wait_for_deployment()`).

        The legacy signature's other settings (autoscale_refresh_seconds, tags, ...) mean nothing to Tributary:
        given beside a setting it applies, each is named in a warning; given alone, they are refused."""
        _check_autoscale(
            autoscale_enabled,
            num_replicas,
            autoscale_min_replicas=autoscale_min_replicas,
            autoscale_max_replicas=autoscale_max_replicas,
            autoscale_target_utilization=autoscale_target_utilization,
        )
        changes: dict[str, Any] = {
            key: value
            for key, value in (
                ("collect_model_data", collect_model_data),
                ("enable_app_insights", enable_app_insights),
                ("replicas", num_replicas),
                ("auth_enabled", auth_enabled),
                ("cpu_cores", cpu_cores),
                ("memory_gb", memory_gb),
                ("cpu_cores_limit", cpu_cores_limit),
                ("memory_gb_limit", memory_gb_limit),
                ("autoscale_enabled", autoscale_enabled),
                ("autoscale_min_replicas", autoscale_min_replicas),
                ("autoscale_max_replicas", autoscale_max_replicas),
                ("autoscale_target_utilization", autoscale_target_utilization),
                ("liveness_period_seconds", period_seconds),
                ("liveness_initial_delay_seconds", initial_delay_seconds),
                ("liveness_timeout_seconds", timeout_seconds),
                ("liveness_failure_threshold", failure_threshold),
            )
            if value is not None
        }
        if models is not None:
            changes["models"] = [str(m) for m in models]
        if inference_config is not None:
            # Only what it names: an entry script alone leaves the image as it is, and the other way round.
            changes.update({k: v for k, v in _inference_settings(inference_config).items() if v})
        if not changes:
            if _unused(others):
                raise WebserviceException(_unused(others))
            raise WebserviceException("No parameters provided to update")
        _warn_unused(others)
        self._load(self.workspace._client.request("PATCH", self._path(), {**changes, "reason": reason}))

    def delete(self, *, reason: str = "", timeout_sec: float | None = None) -> None:
        """Delete this service, as azureml.core's did: it stops wherever it runs, then it is gone from the portal,
        and this returns once it is. Its collected data stays in storage. A removal that fails raises
        WebserviceException with the reason (the service is then Failed, and delete() may be called again)."""
        client = self.workspace._client
        try:
            self._load(client.request("DELETE", self._path(), {"reason": reason}))
        except WebserviceException as exc:
            if exc.status != 409:  # 409: its deletion is under way already (an earlier call's, say): wait for it
                raise
            self.state = "Deleting"
        deadline = time.monotonic() + timeout_sec if timeout_sec else None
        while self.state == "Deleting":
            if deadline is not None and time.monotonic() > deadline:
                raise WebserviceException(f"Timed out waiting for {self.name} to be deleted: still {self.state}.")
            time.sleep(1)
            try:
                self.update_deployment_state()
            except WebserviceException as exc:
                if exc.status != 404:
                    raise
                self.state = "Deleted"
                return
        raise WebserviceException(self.error or f"Could not delete {self.name}: it is {self.state}.")

    def get_logs(self, num_lines: int = 5000, init: bool = False) -> str:
        """The last `num_lines` lines (at most 5,000) of what the service wrote: its script's output, the runtime's
        and the collector's messages; on Kubernetes, pod by pod. Credentials in it show as <hidden>.

        `init=True` asked the legacy SDK for an init container's log; Tributary's services have none (init()'s
        output is in this log), so it warns and returns the same log."""
        if init:
            warnings.warn("Tributary's services have no init container: this is the service's log.", stacklevel=2)
        path = f"{self._path()}logs/?lines={int(num_lines)}"
        return str(self.workspace._client.request("GET", path)["log"])

    def get_keys(self) -> tuple[str, str]:
        """The primary and secondary keys that POST /score accepts when the service requires a key (for those who
        may change the service)."""
        found = self.workspace._client.request("GET", f"{self._path()}keys/")
        return found["primary_key"], found["secondary_key"]

    def regen_key(self, key: str, set_key: str | None = None) -> None:
        """Regenerate the 'Primary' or 'Secondary' key (or set it to `set_key`, 32 to 128 printable characters);
        the other one keeps working. Returns once the service takes the new key and refuses the old one."""
        body: dict[str, Any] = {"key_type": key}
        if set_key is not None:
            body["key"] = set_key
        answer = self.workspace._client.request("POST", f"{self._path()}keys/", body)
        self._load(answer["service"])
        if answer["update"] is not None:
            self.wait_for_deployment()

    def run(self, input_data: Any) -> Any:
        """Score: POST `input_data` (a JSON string as the legacy SDK took, or anything json.dumps takes) to the
        scoring URI, with the primary key when the service requires one; returns the decoded answer."""
        if not self.scoring_uri:
            raise WebserviceException(f"{self.name} has no scoring URI yet: it is {self.state}.")
        body = input_data if isinstance(input_data, str | bytes) else json.dumps(input_data)
        data = body.encode() if isinstance(body, str) else body
        try:
            return self._score(data)
        except WebserviceException as exc:
            if exc.status != 401:
                raise
            self.update_deployment_state()  # a key required, or regenerated, since this object was read
            return self._score(data)

    def _score(self, data: bytes) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.auth_enabled:
            headers["Authorization"] = f"Bearer {self.get_keys()[0]}"
        request = urllib.request.Request(self.scoring_uri, data=data, headers=headers, method="POST")
        try:
            with _NO_REDIRECTS.open(request, timeout=self.workspace._client.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:2000]
            raise WebserviceException(
                f"Received bad response from service. Response Code: {exc.code}. Response Content: {detail}",
                status=exc.code,
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise WebserviceException(f"Cannot score with {self.name} at {self.scoring_uri}: {exc}") from None

    def wait_for_deployment(self, show_output: bool = False, timeout_sec: float | None = None) -> None:
        """Poll until the service is Healthy or Failed; Failed (or the timeout) raises WebserviceException."""
        deadline = time.monotonic() + timeout_sec if timeout_sec else None
        while True:
            self.update_deployment_state()
            update = self._data.get("latest_update") or {}
            unfinished = update.get("status") in ("Pending", "Running")
            if show_output:
                print(
                    f"{self.name}: {self.state}" + (f" (update #{update['id']} {update['status']})" if update else "")
                )
            if not unfinished and self.state in TERMINAL_STATES:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise WebserviceException(f"Timed out waiting for {self.name}: still {self.state}.")
            time.sleep(1)
        if self.state == "Failed":
            raise WebserviceException(f"Service deployment polling reached non-successful terminal state: {self.error}")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A scoring request is answered where it was sent: urllib would follow a redirect as a GET, and carry the
    key to wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is raised as an HTTPError: "Received bad response from service"


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


class Model:
    """A registered model version, by name and version, and the legacy `Model.deploy` entry point."""

    def __init__(self, workspace: Workspace, name: str, version: int | None = None) -> None:
        self.workspace, self.name, self.version = workspace, name, version

    def __str__(self) -> str:
        return f"{self.name}:{self.version}" if self.version else self.name

    @staticmethod
    def deploy(
        workspace: Workspace,
        name: str,
        models: list[Model | str],
        inference_config: InferenceConfig | None = None,
        deployment_config: DeploymentConfiguration | None = None,
        deployment_target: str | None = None,
        reason: str = "",
    ) -> Webservice:
        config = deployment_config or LocalWebservice.deploy_configuration()
        target = deployment_target or config.compute_target
        if not target:
            raise WebserviceException("Name the compute target to deploy to (deployment_target=...).")
        body = {
            "name": name,
            "compute_target": target,
            "models": [str(m) for m in models],
            **_inference_settings(inference_config or InferenceConfig()),
            "replicas": config.num_replicas or 1,
            "collect_model_data": config.collect_model_data,
            "enable_app_insights": config.enable_app_insights,
            "reason": reason,
        }
        if config.auth_enabled is not None:
            body["auth_enabled"] = config.auth_enabled
        body.update(config.resources())
        body.update(config.autoscale())
        body.update(config.liveness())
        body.update({name: key for name in ("primary_key", "secondary_key") if (key := getattr(config, name))})
        data = workspace._client.request("POST", f"workspaces/{workspace.id}/services/", body)
        return Webservice._from_json(workspace, data)


def _check_autoscale(enabled: bool | None, num_replicas: int | None, **bounds: int | None) -> None:
    """azureml-core's rules, with its words: autoscaling and a fixed count exclude each other, bounds come with
    `autoscale_enabled=True`, and turning it off says how many replicas to run instead."""
    problems = []
    if enabled and num_replicas:
        problems.append("autoscale enabled and num_replicas provided.")
    if not enabled:
        if enabled is False and not num_replicas:
            problems.append("autoscale disabled but num_replicas not provided.")
        problems += [f"{name} provided without enabling autoscaling." for name, v in bounds.items() if v is not None]
    if problems:
        raise WebserviceException("Invalid configuration, " + " ".join(problems))


# Legacy settings whose only value here is what Tributary applies anyway: given so, nothing to warn of.
APPLIED_AS_GIVEN = {"success_threshold": 1}  # Kubernetes allows no other for a liveness probe


def _unused(settings: dict[str, Any]) -> str:
    """What to say of the legacy settings given that Tributary does not apply ("" when none is)."""
    names = sorted(
        name
        for name, value in settings.items()
        if value is not None and not (name in APPLIED_AS_GIVEN and value == APPLIED_AS_GIVEN[name])
    )
    return f"Tributary does not apply these settings: {', '.join(names)}" if names else ""


def _warn_unused(settings: dict[str, Any]) -> None:
    """Warn, at the caller's line, of the settings that are given but mean nothing here: a script written for
    azureml-core (scoring_timeout_ms=..., say) is told instead of silently getting the default."""
    if message := _unused(settings):
        warnings.warn(message, stacklevel=3)  # the line that called deploy_configuration() or update()


def _inference_settings(config: InferenceConfig) -> dict[str, str]:
    return {"entry_script": config.entry_script or "", "image": config.image or ""}
