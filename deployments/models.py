from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

# Workspace names, resource groups and subscription ids become segments of blob paths, so each is one safe segment.
SEGMENT = RegexValidator(
    re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,89}$"),
    "Use letters, digits, dots, dashes and underscores (up to 90), starting with a letter or digit.",
)


DNS_LABEL = RegexValidator(
    re.compile(r"^[a-z]([-a-z0-9]{0,30}[a-z0-9])?$"),
    "Use 1 to 32 lowercase letters, digits and dashes, starting with a letter and not ending with a dash.",
)
DNS_SUBDOMAIN = RegexValidator(
    re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"),
    "Use lowercase letters, digits, dashes and dots.",
)


class Workspace(models.Model):
    """A team's space: its services, its members and its collected data (`<subscription>/<group>/<name>/...`)."""

    subscription_id = models.CharField(max_length=90, validators=[SEGMENT])
    resource_group = models.CharField(max_length=90, validators=[SEGMENT])
    name = models.CharField(max_length=90, validators=[SEGMENT])
    # The blob storage that services of this workspace collect into, by reference: the name of a Kubernetes Secret
    # (key `connection-string`) on clusters; on this machine, the portal's own BLOB_CONNECTION_STRING.
    storage_secret = models.CharField(max_length=253, default="tributary-storage", validators=[DNS_SUBDOMAIN])
    created = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="workspaces")

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["subscription_id", "resource_group", "name"], name="workspace_unique_path")
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def path(self) -> str:
        """The workspace id of the legacy contract, and the first three segments of its blob paths."""
        return f"{self.subscription_id}/{self.resource_group}/{self.name}"


class Membership(models.Model):
    """A user's role in one workspace: Owners and Contributors change things, Readers only look."""

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        CONTRIBUTOR = "contributor", "Contributor"
        READER = "reader", "Reader"

    workspace = models.ForeignKey(Workspace, models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.READER)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "user"], name="membership_unique_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} ({self.get_role_display()})"

    @property
    def can_write(self) -> bool:
        return self.role in (self.Role.OWNER, self.Role.CONTRIBUTOR)


class ComputeTarget(models.Model):
    """Where services run: a Kubernetes cluster, reached through a kubeconfig file on the worker, or this machine."""

    class Kind(models.TextChoices):
        KUBERNETES = "kubernetes", "Kubernetes"
        LOCAL = "local", "This machine"

    workspace = models.ForeignKey(Workspace, models.CASCADE, related_name="compute_targets")
    name = models.CharField(max_length=64)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.LOCAL)
    # By reference: the path of a kubeconfig file readable by the Celery worker, never its contents.
    kubeconfig_path = models.CharField(max_length=500, blank=True)
    kubeconfig_context = models.CharField(max_length=253, blank=True)
    namespace = models.CharField(max_length=63, blank=True, default="default")

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="compute_target_unique_name")]

    def __str__(self) -> str:
        return self.name


class Model(models.Model):
    """A registered model version: files in a folder (this machine) or at a path inside the scoring image."""

    workspace = models.ForeignKey(Workspace, models.CASCADE, related_name="models")
    name = models.CharField(max_length=255, validators=[SEGMENT])
    version = models.PositiveIntegerField(default=1)
    path = models.CharField(max_length=500, help_text="Folder of the model's files.")
    description = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name", "version"], name="model_unique_version")]

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


class Service(models.Model):
    """A deployed web service: its desired settings (what the portal wants) and last known state (what runs)."""

    class State(models.TextChoices):
        TRANSITIONING = "Transitioning"
        HEALTHY = "Healthy"
        FAILED = "Failed"
        # Its removal from the target is under way; the row goes once it is gone (or it ends Failed, to try again).
        DELETING = "Deleting"

    # PROTECT: deleting the row of a running service would leave its processes or Deployment behind, unmanaged.
    # Delete the services first (their page's Delete), then the workspace.
    workspace = models.ForeignKey(Workspace, models.PROTECT, related_name="services")
    name = models.CharField(max_length=32, validators=[DNS_LABEL])
    compute_target = models.ForeignKey(ComputeTarget, models.PROTECT, related_name="services")
    entry_script = models.CharField(max_length=500, blank=True)
    image = models.CharField(max_length=500, blank=True)
    replicas = models.PositiveSmallIntegerField(default=1)
    collect_model_data = models.BooleanField(default=False)
    enable_app_insights = models.BooleanField(default=False)
    # "Require a key to score": POST /score then needs one of the service's ScoringKeys (Azure ML's auth_enabled).
    auth_enabled = models.BooleanField(default=False)
    # Kubernetes only: what the scoring container requests and may use at most, as Azure ML's cpu_cores, memory_gb,
    # cpu_cores_limit and memory_gb_limit (GB of 10^9 bytes). Unset: nothing of its own (the namespace's
    # LimitRange, if any, decides).
    cpu_cores = models.FloatField(null=True, blank=True)
    memory_gb = models.FloatField(null=True, blank=True)
    cpu_cores_limit = models.FloatField(null=True, blank=True)
    memory_gb_limit = models.FloatField(null=True, blank=True)
    # Kubernetes only: a HorizontalPodAutoscaler keeps the pods' average CPU use near `autoscale_target_utilization`
    # percent of what each requests (cpu_cores), with min to max replicas; `replicas` is then unused. Azure ML's
    # autoscale_* settings (its own autoscaler counted requests in flight; Kubernetes' counts CPU).
    autoscale_enabled = models.BooleanField(default=False)
    autoscale_min_replicas = models.PositiveSmallIntegerField(default=1)
    autoscale_max_replicas = models.PositiveSmallIntegerField(default=10)
    autoscale_target_utilization = models.PositiveSmallIntegerField(default=70)
    # Kubernetes only: the scoring container's liveness probe (GET / on its probe port; failing it, the container
    # is restarted), as Azure ML's period_seconds, initial_delay_seconds, timeout_seconds and failure_threshold.
    # Unset: every 10 s from the start, 1 s to answer, 3 failures in a row (Kubernetes' defaults but the period).
    liveness_period_seconds = models.PositiveSmallIntegerField(null=True, blank=True)
    liveness_initial_delay_seconds = models.PositiveSmallIntegerField(null=True, blank=True)
    liveness_timeout_seconds = models.PositiveSmallIntegerField(null=True, blank=True)
    liveness_failure_threshold = models.PositiveSmallIntegerField(null=True, blank=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.TRANSITIONING)
    state_reason = models.TextField(blank=True)
    scoring_url = models.CharField(max_length=500, blank=True)
    # Bumped by every settings change; an edit made from an older version is refused (optimistic locking).
    version = models.PositiveIntegerField(default=1)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    # Last: from here on, `models` in this class body is this field, not the django.db.models module.
    models = models.ManyToManyField(Model, related_name="services")

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="service_unique_name")]
        indexes = [models.Index(fields=["workspace", "state"])]

    def __str__(self) -> str:
        return self.name

    def resources_text(self) -> str:
        """Its resources as its page says them: "requests 0.5 CPU cores, 1 GB; at most 2 GB"; "" if none."""
        parts = []
        for what, cpu, memory in (
            ("requests", self.cpu_cores, self.memory_gb),
            ("at most", self.cpu_cores_limit, self.memory_gb_limit),
        ):
            amounts = [f"{cpu:g} CPU core{'' if cpu == 1 else 's'}"] if cpu is not None else []
            amounts += [f"{memory:g} GB"] if memory is not None else []
            if amounts:
                parts.append(f"{what} {', '.join(amounts)}")
        return "; ".join(parts)

    def scaling_text(self) -> str:
        """How many replicas it runs, as its page says it: "2", or "1 to 10, at 70% of the requested CPU"."""
        if not self.autoscale_enabled:
            return str(self.replicas)
        return (
            f"{self.autoscale_min_replicas} to {self.autoscale_max_replicas}, autoscaled at "
            f"{self.autoscale_target_utilization}% of the requested CPU"
        )

    def liveness_text(self) -> str:
        """Its liveness probe as its page says it: "every 10 s from the start, 1 s to answer, restarted after 3
        failures in a row"."""
        delay, failures = self.liveness_initial_delay_seconds, self.liveness_failure_threshold or 3
        return (
            f"every {self.liveness_period_seconds or 10} s from {f'{delay} s after ' if delay else ''}the start, "
            f"{self.liveness_timeout_seconds or 1} s to answer, restarted after "
            + (f"{failures} failures in a row" if failures > 1 else "its first failure")
        )

    @property
    def swagger_url(self) -> str:
        """The runtime's GET /swagger.json beside its POST /score ("" while the scoring URL is unknown). It answers a
        document only for a script whose run() has inference_schema decorators (scoring/README.md)."""
        base, _, last = self.scoring_url.rpartition("/")
        return f"{base}/swagger.json" if base and last == "score" else ""


class ScoringKey(models.Model):
    """One of a service's two keys for POST /score (see deployments.keys): sealed, and its digest for the runtime."""

    class Slot(models.TextChoices):
        PRIMARY = "primary", "Primary"
        SECONDARY = "secondary", "Secondary"

    service = models.ForeignKey(Service, models.CASCADE, related_name="keys")
    slot = models.CharField(max_length=10, choices=Slot.choices)
    sealed = models.TextField()
    digest = models.CharField(max_length=64)
    created = models.DateTimeField()  # when this key was generated (or set): a regeneration moves it

    class Meta:
        ordering = ["slot"]  # primary, then secondary
        constraints = [models.UniqueConstraint(fields=["service", "slot"], name="scoring_key_unique_slot")]

    def __str__(self) -> str:
        return f"{self.get_slot_display()} key of {self.service_id}"


class ServiceUpdate(models.Model):
    """One request to make a service's target match its settings: recorded first, then applied by a task."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class Kind(models.TextChoices):
        APPLY = "apply", "Apply"
        REMOVE = "remove", "Delete"

    service = models.ForeignKey(Service, models.CASCADE, related_name="updates")
    # APPLY makes the target run `desired_spec`; REMOVE stops and deletes what runs, then the service's row.
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.APPLY)
    desired_spec = models.JSONField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    # While RUNNING, the worker holding the update owns it until then; past it, the update may be claimed again.
    lease_until = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"Update #{self.pk} of {self.service_id}"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED)


class AuditEvent(models.Model):
    """An append-only record of a change: who, what, from what to what, why, and how it ended."""

    class Action(models.TextChoices):
        SERVICE_CREATED = "service.created"
        SERVICE_SETTINGS_CHANGED = "service.settings_changed"
        SERVICE_REDEPLOYED = "service.redeployed"
        SERVICE_UPDATE_SUCCEEDED = "service.update_succeeded"
        SERVICE_UPDATE_FAILED = "service.update_failed"
        SERVICE_DELETE_REQUESTED = "service.delete_requested"
        SERVICE_DELETED = "service.deleted"
        SERVICE_DELETE_FAILED = "service.delete_failed"
        SERVICE_KEY_REGENERATED = "service.key_regenerated"
        MEMBER_ADDED = "member.added"
        MEMBER_ROLE_CHANGED = "member.role_changed"
        MEMBER_REMOVED = "member.removed"

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True)
    actor_name = models.CharField(max_length=150)
    workspace = models.ForeignKey(Workspace, models.CASCADE, related_name="audit_events")
    action = models.CharField(max_length=64, choices=Action.choices)
    target_type = models.CharField(max_length=64)
    target_id = models.BigIntegerField(null=True)
    target_repr = models.CharField(max_length=255)
    changes = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True)
    request_id = models.UUIDField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["workspace", "-created"])]

    def __str__(self) -> str:
        return f"{self.actor_name} {self.action} {self.target_repr}"


class ApiToken(models.Model):
    """A personal token for the REST API and the SDK. Only its hash is stored; the token is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True)
    # The first characters, so that a user can tell tokens apart without the token itself.
    prefix = models.CharField(max_length=12)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def issue(cls, user: Any, name: str) -> tuple[ApiToken, str]:
        """Create a token; returns the row and the token itself, which is not stored anywhere."""
        key = f"trib_{secrets.token_urlsafe(32)}"
        return cls.objects.create(user=user, name=name, key_hash=cls.hash(key), prefix=key[:12]), key


class FailedLogin(models.Model):
    """A log-in refused for a wrong password: counted to stop password guessing (see deployments.login)."""

    username = models.CharField(max_length=150)  # as typed, lowercased: it need not be an existing user's
    ip = models.GenericIPAddressField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["username", "created"]), models.Index(fields=["ip", "created"])]

    def __str__(self) -> str:
        return f"{self.username} from {self.ip} at {self.created:%Y-%m-%d %H:%M:%S}"
