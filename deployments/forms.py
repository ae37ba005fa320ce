from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model

from deployments.models import ApiToken, AuditEvent, ComputeTarget, Membership, Model, Service, Workspace

# The longest reason a change may give (it goes into the audit log).
REASON_MAX_LENGTH = 500
# A HorizontalPodAutoscaler leaves the replicas alone while use is within 10% of its target (the controller's
# default --horizontal-pod-autoscaler-tolerance).
AUTOSCALE_TOLERANCE = 1.1


class ServiceSettingsForm(forms.Form):
    """A service's settings: the basics, and the Advanced settings of the legacy portal (two checkboxes)."""

    compute_target = forms.ModelChoiceField(queryset=ComputeTarget.objects.none(), empty_label=None)
    models = forms.ModelMultipleChoiceField(queryset=Model.objects.none(), required=True)
    entry_script = forms.CharField(
        max_length=500, required=False, help_text="Path of score.py on this machine (the local compute target)."
    )
    image = forms.CharField(max_length=500, required=False, help_text="Scoring image (Kubernetes compute targets).")
    replicas = forms.IntegerField(
        min_value=1,
        max_value=50,
        initial=1,
        help_text="How many copies serve it. While it autoscales, the autoscaler decides; unticking Autoscale "
        "sets this count again.",
    )
    collect_model_data = forms.BooleanField(required=False, label="Enable model data collection")
    enable_app_insights = forms.BooleanField(required=False, label="Enable AppInsights diagnostics")
    auth_enabled = forms.BooleanField(
        required=False,
        label="Require a key to score",
        help_text="POST /score then answers only requests with Authorization: Bearer and one of the service's keys.",
    )
    # Azure ML's cpu_cores, memory_gb and their limits: Kubernetes only (see Service). Whole millicores and MB.
    cpu_cores = forms.FloatField(required=False, min_value=0.001, max_value=1000, label="CPU cores")
    memory_gb = forms.FloatField(required=False, min_value=0.001, max_value=10_000, label="Memory (GB)")
    cpu_cores_limit = forms.FloatField(required=False, min_value=0.001, max_value=1000, label="CPU cores, at most")
    memory_gb_limit = forms.FloatField(required=False, min_value=0.001, max_value=10_000, label="Memory (GB), at most")
    # Azure ML's autoscale_*: Kubernetes only, a HorizontalPodAutoscaler on the pods' CPU use (see Service).
    autoscale_enabled = forms.BooleanField(required=False, label="Autoscale the replicas")
    # Their initial values are a new service's (Service's defaults, Azure ML's).
    autoscale_min_replicas = forms.IntegerField(
        required=False, min_value=1, max_value=50, initial=1, label="Fewest replicas"
    )
    autoscale_max_replicas = forms.IntegerField(
        required=False, min_value=1, max_value=50, initial=10, label="Most replicas"
    )
    autoscale_target_utilization = forms.IntegerField(
        required=False, min_value=1, max_value=100, initial=70, label="Target CPU use (% of requested)"
    )
    # Azure ML's period_seconds, initial_delay_seconds, timeout_seconds and failure_threshold: Kubernetes only.
    liveness_period_seconds = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=3600,
        label="Every (seconds)",
        widget=forms.NumberInput({"placeholder": 10}),
    )
    liveness_initial_delay_seconds = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=3600,
        label="First after (seconds)",
        widget=forms.NumberInput({"placeholder": 0}),
    )
    liveness_timeout_seconds = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=3600,
        label="Answer within (seconds)",
        widget=forms.NumberInput({"placeholder": 1}),
    )
    liveness_failure_threshold = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=100,
        label="Restart after failures",
        widget=forms.NumberInput({"placeholder": 3}),
    )
    reason = forms.CharField(
        max_length=REASON_MAX_LENGTH,
        required=False,
        widget=forms.TextInput,
        help_text="Optional: recorded in the audit log.",
    )

    # Under "Advanced settings", as checkboxes (the legacy portal's two, and the key).
    ADVANCED = ("collect_model_data", "enable_app_insights", "auth_enabled")
    # In a group of their own: what each pod asks of the cluster (requests) and may use at most (limits).
    RESOURCES = ("cpu_cores", "memory_gb", "cpu_cores_limit", "memory_gb_limit")
    AUTOSCALE = (
        "autoscale_enabled",
        "autoscale_min_replicas",
        "autoscale_max_replicas",
        "autoscale_target_utilization",
    )
    LIVENESS = (
        "liveness_period_seconds",
        "liveness_initial_delay_seconds",
        "liveness_timeout_seconds",
        "liveness_failure_threshold",
    )

    def __init__(self, *args: Any, workspace: Workspace, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["compute_target"]).queryset = workspace.compute_targets.all()
        cast(forms.ModelMultipleChoiceField, self.fields["models"]).queryset = workspace.models.all()

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        target = data.get("compute_target")
        if target is not None and target.kind == ComputeTarget.Kind.KUBERNETES and not data.get("image"):
            self.add_error("image", "A Kubernetes compute target runs a scoring image: name one.")
        if target is not None and target.kind == ComputeTarget.Kind.LOCAL:
            self._check_local_script(data.get("entry_script", ""))
            for name in self.RESOURCES:
                if data.get(name) is not None:
                    self.add_error(name, "The local compute target runs processes without requests or limits.")
            if data.get("autoscale_enabled"):
                self.add_error("autoscale_enabled", "The local compute target runs a fixed number of processes.")
            for name in self.LIVENESS:
                if data.get(name) is not None:
                    self.add_error(name, "The local compute target watches its processes itself: it has no probes.")
        self._check_resources(data)
        self._check_autoscale(data)
        return data

    def _check_autoscale(self, data: dict[str, Any]) -> None:
        # Left empty (or not posted: an older client), a number keeps what it was, or the default of a new service.
        for name in self.AUTOSCALE[1:]:
            if data.get(name) is None and name not in self.errors:
                data[name] = self.initial.get(name, self.fields[name].initial)
        low, high = data.get("autoscale_min_replicas"), data.get("autoscale_max_replicas")
        if low is not None and high is not None and high < low:
            self.add_error("autoscale_max_replicas", "The most replicas cannot be fewer than the fewest.")
        if not data.get("autoscale_enabled"):
            return
        if "replicas" in self.changed_data and "replicas" not in self.errors:
            self.add_error(
                "replicas", "While it autoscales, the autoscaler sets the replicas: change the fewest and most instead."
            )
        request, limit = data.get("cpu_cores"), data.get("cpu_cores_limit")
        target = data.get("autoscale_target_utilization")
        if request is None and "cpu_cores" not in self.errors:
            kind = getattr(data.get("compute_target"), "kind", None)
            if kind == ComputeTarget.Kind.KUBERNETES:
                self.add_error(
                    "cpu_cores",
                    "Autoscaling compares the pods' CPU use with what each requests: give the CPU cores to request.",
                )
        elif request and limit and target is not None and target * AUTOSCALE_TOLERANCE >= 100 * limit / request:
            # A pod's use stops at its limit, and Kubernetes adds a pod only once use is 10% above the target.
            ceiling = 100 * limit / request
            self.add_error(
                "autoscale_target_utilization",
                f"The pods can use at most {ceiling:.0f}% of what they request (their limit), and Kubernetes adds a "
                f"pod only once use is 10% above the target: set a target under {ceiling / AUTOSCALE_TOLERANCE:.0f}%, "
                "or a higher limit.",
            )

    def _check_resources(self, data: dict[str, Any]) -> None:
        for name in self.RESOURCES:
            value = data.get(name)
            if value is not None:
                data[name] = round(value, 3)  # what is applied: whole millicores, whole MB
        for request, limit in (("cpu_cores", "cpu_cores_limit"), ("memory_gb", "memory_gb_limit")):
            if data.get(request) is not None and data.get(limit) is not None and data[limit] < data[request]:
                self.add_error(limit, "The most a pod may use cannot be less than what it requests.")

    def _check_local_script(self, entry_script: str) -> None:
        if not entry_script:
            self.add_error("entry_script", "The local compute target runs an entry script: give its path.")
            return
        try:
            path = Path(entry_script).resolve()
            inside = any(path.is_relative_to(folder) for folder in settings.LOCAL_SCRIPT_DIRS)
            found = inside and path.is_file()
        except (OSError, ValueError):  # a name too long, a NUL byte, a folder it may not read...
            self.add_error("entry_script", "This is not a path to a file this machine can read.")
            return
        if not inside:
            folders = ", ".join(str(f) for f in settings.LOCAL_SCRIPT_DIRS)
            self.add_error("entry_script", f"This machine runs only scripts inside: {folders}.")
        elif not found:
            self.add_error("entry_script", "No such file on this machine.")

    def basic_fields(self) -> list[forms.BoundField]:
        grouped = (*self.ADVANCED, *self.RESOURCES, *self.AUTOSCALE, *self.LIVENESS, "reason")
        return [f for f in self.visible_fields() if f.name not in grouped]

    def advanced_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.ADVANCED]

    def resource_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.RESOURCES]

    def liveness_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.LIVENESS]

    def autoscale_fields(self) -> list[forms.BoundField]:
        """The numbers of autoscaling (its checkbox is shown on its own)."""
        return [self[name] for name in self.AUTOSCALE[1:]]

    def settings(self) -> dict[str, Any]:
        """The cleaned settings, as `do_*` actions take them."""
        return {name: self.cleaned_data[name] for name in self.fields if name not in ("reason", "version")}


class ServiceEditForm(ServiceSettingsForm):
    # The service's version when the form was opened: an edit from an older version is refused.
    version = forms.IntegerField(widget=forms.HiddenInput)

    def __init__(self, *args: Any, workspace: Workspace, **kwargs: Any) -> None:
        super().__init__(*args, workspace=workspace, **kwargs)
        # Shown, not changed: a service stays where it was deployed (see actions.TargetChange).
        self.fields["compute_target"].disabled = True
        self.fields["compute_target"].help_text = "A service stays on the compute target it was deployed to."

    @staticmethod
    def initial_for(service: Service) -> dict[str, Any]:
        return {
            "compute_target": service.compute_target_id,
            "models": list(service.models.all()),
            "entry_script": service.entry_script,
            "image": service.image,
            "replicas": service.replicas,
            "collect_model_data": service.collect_model_data,
            "enable_app_insights": service.enable_app_insights,
            "auth_enabled": service.auth_enabled,
            "cpu_cores": service.cpu_cores,
            "memory_gb": service.memory_gb,
            "cpu_cores_limit": service.cpu_cores_limit,
            "memory_gb_limit": service.memory_gb_limit,
            **{
                name: getattr(service, name) for name in (*ServiceSettingsForm.AUTOSCALE, *ServiceSettingsForm.LIVENESS)
            },
            "version": service.version,
        }


class ServiceCreateForm(ServiceSettingsForm):
    name = forms.RegexField(
        regex=r"^[a-z]([-a-z0-9]{0,30}[a-z0-9])?$",
        max_length=32,
        error_messages={"invalid": "Use 1 to 32 lowercase letters, digits and dashes, starting with a letter."},
    )
    field_order = ["name"]

    def __init__(self, *args: Any, workspace: Workspace, **kwargs: Any) -> None:
        super().__init__(*args, workspace=workspace, **kwargs)
        self.workspace = workspace
        # A new service asks for a key unless the user unticks it (as Azure ML's AKS services did).
        self.fields["auth_enabled"].initial = True

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if self.workspace.services.filter(name=name).exists():
            raise forms.ValidationError("A service with this name already exists in this workspace.")
        return name


class ServiceFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Name")
    state = forms.ChoiceField(required=False, choices=[("", "Any state"), *Service.State.choices])


class AuditFilterForm(forms.Form):
    service = forms.CharField(required=False, max_length=100)
    # One service, not every service that had its name (a deleted one, then a new one deployed under the same name):
    # what a service page's "Full audit log" link asks for.
    service_id = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)
    actor = forms.CharField(required=False, max_length=150)

    action = forms.ChoiceField(required=False, choices=[("", "Any action"), *AuditEvent.Action.choices])


MAX_API_TOKENS = 20


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What it is for, to tell your tokens apart: notebook, CI...")

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]  # stripped, and required: never blank here
        if ApiToken.objects.filter(user=self.user, name=name).exists():
            raise forms.ValidationError("You have a token with this name already.")
        return name

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if ApiToken.objects.filter(user=self.user).count() >= MAX_API_TOKENS:
            raise forms.ValidationError(f"You have {MAX_API_TOKENS} tokens: revoke one you no longer use first.")
        return data


class MemberAddForm(forms.Form):
    username = forms.CharField(max_length=150, help_text="Someone who can log in to Tributary.")
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.READER)

    def __init__(self, *args: Any, workspace: Workspace, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.workspace = workspace
        self.user: Any = None

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        self.user = get_user_model().objects.filter(username=username, is_active=True).first()
        if self.user is None:
            raise forms.ValidationError("No user has this name.")
        if self.workspace.memberships.filter(user=self.user).exists():
            raise forms.ValidationError("This user is a member already: change their role below.")
        return username


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)
