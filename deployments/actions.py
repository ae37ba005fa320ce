"""Every change of state happens here: each `do_*` function changes rows and writes the audit row in one
transaction, and enqueues work only once that transaction has committed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from collector import config as dc_config
from deployments import keys, tasks
from deployments.compute import DesiredSpec, ModelRef, RolloutState
from deployments.models import (
    ApiToken,
    AuditEvent,
    ComputeTarget,
    Membership,
    Model,
    ScoringKey,
    Service,
    ServiceUpdate,
    Workspace,
)
from scoring import config as scoring_config

log = logging.getLogger(__name__)

# The settings that users change and the audit log records; secrets are never among them.
SERVICE_FIELDS = (
    "compute_target",
    "models",
    "entry_script",
    "image",
    "replicas",
    "collect_model_data",
    "enable_app_insights",
    "auth_enabled",
    "cpu_cores",
    "memory_gb",
    "cpu_cores_limit",
    "memory_gb_limit",
    "autoscale_enabled",
    "autoscale_min_replicas",
    "autoscale_max_replicas",
    "autoscale_target_utilization",
    "liveness_period_seconds",
    "liveness_initial_delay_seconds",
    "liveness_timeout_seconds",
    "liveness_failure_threshold",
)


class ActionError(Exception):
    """A change was refused; the message is for the user."""


class StaleEdit(ActionError):
    def __init__(self) -> None:
        super().__init__(
            "Someone else changed this service since you opened the form. Nothing was changed: "
            "review the current settings and make your change again."
        )


class BeingDeleted(ActionError):
    def __init__(self, service: Service, already: bool = False) -> None:
        if already:
            super().__init__(f"{service.name} is already being deleted.")
        else:
            super().__init__(f"{service.name} is being deleted: it can no longer be changed.")


class TargetChange(ActionError):
    def __init__(self) -> None:
        super().__init__(
            "A service stays on the compute target it was deployed to: to move it, deploy it on the other one "
            "and delete this one."
        )


class NothingToUpdate(ActionError):
    def __init__(self) -> None:
        super().__init__("No parameters provided to update: the settings are the same as before.")


def _actor_name(user: Any) -> str:
    return user.get_username() if user is not None else "system"


def _audit(
    workspace: Workspace,
    action: AuditEvent.Action,
    target: Service | Membership,
    *,
    actor: Any = None,
    changes: dict[str, list[Any]] | None = None,
    reason: str = "",
    request_id: uuid.UUID | None = None,
) -> AuditEvent:
    if isinstance(target, Membership):
        target_type, target_id, target_repr = "member", target.user_id, target.user.get_username()
    else:
        target_type, target_id, target_repr = "service", target.pk, target.name
    return AuditEvent.objects.create(
        workspace=workspace,
        actor=actor,
        actor_name=_actor_name(actor),
        action=action,
        target_type=target_type,
        target_id=target_id,
        target_repr=target_repr,
        changes=changes or {},
        reason=reason,
        request_id=request_id,
    )


def _display(field: str, value: Any) -> Any:
    """A JSON-safe, human-readable form of a setting for the audit log; equal forms mean equal settings (names
    of compute targets and `name:version` of models are unique in a workspace)."""
    if field == "compute_target":
        return str(value) if value is not None else None
    if field == "models":
        return sorted(str(m) for m in value)
    return value


def _snapshot(service: Service) -> dict[str, Any]:
    values = {name: getattr(service, name) for name in SERVICE_FIELDS if name != "models"}
    values["models"] = list(service.models.all()) if service.pk else []
    return values


def desired_spec(service: Service, update_id: int) -> DesiredSpec:
    """The whole spec a driver applies for this service as it is now (never a delta)."""
    return DesiredSpec(
        update_id=update_id,
        service_id=service.pk,
        service_name=service.name,
        workspace_path=service.workspace.path,
        models=tuple(ModelRef(m.name, str(m.version), m.path) for m in service.models.order_by("name", "version")),
        replicas=service.replicas,
        entry_script=service.entry_script,
        image=service.image,
        collect_model_data=service.collect_model_data,
        enable_app_insights=service.enable_app_insights,
        require_key=service.auth_enabled,
        key_hashes=tuple(k.digest for k in service.keys.all()) if service.auth_enabled else (),
        resources=container_resources(service),
        autoscale=_autoscale(service),
        liveness=_liveness(service),
        storage_secret=service.workspace.storage_secret,
        environment=_service_environment(service),
        target={"namespace": service.compute_target.namespace}
        if service.compute_target.kind == ComputeTarget.Kind.KUBERNETES
        else {},
    )


def container_resources(service: Service) -> dict[str, dict[str, str]]:
    """The service's CPU cores and memory GB as a Kubernetes container's `resources`: whole millicores and
    megabytes (GB as Azure ML's memory_gb, 10^9 bytes)."""
    resources: dict[str, dict[str, str]] = {}
    for kind, cpu, memory in (
        ("requests", service.cpu_cores, service.memory_gb),
        ("limits", service.cpu_cores_limit, service.memory_gb_limit),
    ):
        quantities = {}
        if cpu is not None:
            quantities["cpu"] = f"{round(cpu * 1000)}m"
        if memory is not None:
            quantities["memory"] = f"{round(memory * 1000)}M"
        if quantities:
            resources[kind] = quantities
    return resources


def _autoscale(service: Service) -> dict[str, int]:
    if not service.autoscale_enabled:
        return {}
    return {
        "min_replicas": service.autoscale_min_replicas,
        "max_replicas": service.autoscale_max_replicas,
        "target_cpu_utilization": service.autoscale_target_utilization,
    }


def _liveness(service: Service) -> dict[str, int]:
    """The service's liveness settings that are set, as a Kubernetes probe names them."""
    probe = {
        "periodSeconds": service.liveness_period_seconds,
        "initialDelaySeconds": service.liveness_initial_delay_seconds,
        "timeoutSeconds": service.liveness_timeout_seconds,
        "failureThreshold": service.liveness_failure_threshold,
    }
    return {name: value for name, value in probe.items() if value is not None}


def _service_environment(service: Service) -> dict[str, str]:
    # The container the portal browses: collectors must write where it reads.
    environment = {dc_config.CONTAINER: settings.BLOB_CONTAINER}
    if service.enable_app_insights and settings.OTEL_EXPORTER_OTLP_ENDPOINT:
        environment[scoring_config.OTLP_ENDPOINT] = settings.OTEL_EXPORTER_OTLP_ENDPOINT
    return environment


def _record_update(service: Service, user: Any, kind: ServiceUpdate.Kind = ServiceUpdate.Kind.APPLY) -> ServiceUpdate:
    update = ServiceUpdate.objects.create(service=service, kind=kind, desired_spec={}, requested_by=user)
    update.desired_spec = desired_spec(service, update.pk).to_json()
    update.save(update_fields=["desired_spec"])
    # An older update still waiting would apply an outdated spec after this one: it will never run.
    ServiceUpdate.objects.filter(service=service, status=ServiceUpdate.Status.PENDING, pk__lt=update.pk).update(
        status=ServiceUpdate.Status.FAILED, error=f"Superseded by update #{update.pk}.", finished=timezone.now()
    )
    transaction.on_commit(partial(tasks.apply_service_update.delay, update.pk))
    return update


@transaction.atomic
def do_deploy_service(
    workspace: Workspace,
    *,
    name: str,
    compute_target: ComputeTarget,
    models: Iterable[Model],
    acting_user: Any,
    entry_script: str = "",
    image: str = "",
    replicas: int = 1,
    collect_model_data: bool = False,
    enable_app_insights: bool = False,
    auth_enabled: bool = False,
    cpu_cores: float | None = None,
    memory_gb: float | None = None,
    cpu_cores_limit: float | None = None,
    memory_gb_limit: float | None = None,
    autoscale_enabled: bool = False,
    autoscale_min_replicas: int = 1,
    autoscale_max_replicas: int = 10,
    autoscale_target_utilization: int = 70,
    liveness_period_seconds: int | None = None,
    liveness_initial_delay_seconds: int | None = None,
    liveness_timeout_seconds: int | None = None,
    liveness_failure_threshold: int | None = None,
    given_keys: dict[ScoringKey.Slot, str] | None = None,
    reason: str = "",
    request_id: uuid.UUID | None = None,
) -> ServiceUpdate:
    """Create a service and apply it. Its two scoring keys are generated, but for those in `given_keys` (Azure ML's
    primary_key and secondary_key: clients that already hold a key keep it); the audit row says which were given,
    never the keys."""
    given_keys = {slot: keys.check(key) for slot, key in (given_keys or {}).items()}  # before anything is written
    try:
        # The form checked the name, but a second submit of the same form may have got here first.
        with transaction.atomic():
            service = Service.objects.create(
                workspace=workspace,
                name=name,
                compute_target=compute_target,
                entry_script=entry_script,
                image=image,
                replicas=replicas,
                collect_model_data=collect_model_data,
                enable_app_insights=enable_app_insights,
                auth_enabled=auth_enabled,
                cpu_cores=cpu_cores,
                memory_gb=memory_gb,
                cpu_cores_limit=cpu_cores_limit,
                memory_gb_limit=memory_gb_limit,
                autoscale_enabled=autoscale_enabled,
                autoscale_min_replicas=autoscale_min_replicas,
                autoscale_max_replicas=autoscale_max_replicas,
                autoscale_target_utilization=autoscale_target_utilization,
                liveness_period_seconds=liveness_period_seconds,
                liveness_initial_delay_seconds=liveness_initial_delay_seconds,
                liveness_timeout_seconds=liveness_timeout_seconds,
                liveness_failure_threshold=liveness_failure_threshold,
                state=Service.State.TRANSITIONING,
            )
    except IntegrityError as exc:
        raise ActionError(f"A service named {name} already exists in this workspace.") from exc
    service.models.set(models)
    for slot in ScoringKey.Slot:  # both, whether required or not: switching auth on later needs no extra step
        _set_key(service, slot, given_keys.get(slot) or keys.generate())
    after = _snapshot(service)
    changes = {name: [None, _display(name, value)] for name, value in after.items()}
    changes.update({f"{slot.label.lower()} key": [None, "given by the user"] for slot in given_keys})
    _audit(
        workspace,
        AuditEvent.Action.SERVICE_CREATED,
        service,
        actor=acting_user,
        changes=changes,
        reason=reason,
        request_id=request_id,
    )
    return _record_update(service, acting_user)


@transaction.atomic
def do_update_service(
    service: Service,
    *,
    expected_version: int,
    acting_user: Any,
    reason: str = "",
    request_id: uuid.UUID | None = None,
    **new_values: Any,
) -> ServiceUpdate:
    """Change a service's settings and apply them; refused if it changed since `expected_version` was read."""
    unknown = set(new_values) - set(SERVICE_FIELDS)
    if unknown:
        raise ActionError(f"Unknown settings: {', '.join(sorted(unknown))}")
    # Claims the edit: of two edits made from the same version, exactly one passes this conditional UPDATE.
    claimed = Service.objects.filter(pk=service.pk, version=expected_version).update(version=F("version") + 1)
    if not claimed:
        # A delete also moves the version on; saying so beats "make your change again", which can never succeed.
        if Service.objects.filter(pk=service.pk, state=Service.State.DELETING).exists():
            raise BeingDeleted(service)
        raise StaleEdit()
    service.refresh_from_db()
    if service.state == Service.State.DELETING:
        raise BeingDeleted(service)
    before = _snapshot(service)
    changes = {}
    for name, value in new_values.items():
        old, new = _display(name, before[name]), _display(name, value)
        if old != new:
            changes[name] = [old, new]
    if not changes:
        raise NothingToUpdate()
    if "compute_target" in changes:
        # Applying on another target would leave the service running, unmanaged, on the one it is on.
        raise TargetChange()
    for name, value in new_values.items():
        if name == "models":
            service.models.set(value)
        else:
            setattr(service, name, value)
    service.state = Service.State.TRANSITIONING
    service.state_reason = ""
    service.save()
    _audit(
        service.workspace,
        AuditEvent.Action.SERVICE_SETTINGS_CHANGED,
        service,
        actor=acting_user,
        changes=changes,
        reason=reason,
        request_id=request_id,
    )
    return _record_update(service, acting_user)


def _set_key(service: Service, slot: ScoringKey.Slot, key: str) -> None:
    ScoringKey.objects.update_or_create(
        service=service,
        slot=slot,
        defaults={"sealed": keys.seal(key), "digest": keys.key_hash(key), "created": timezone.now()},
    )


@transaction.atomic
def do_regenerate_key(
    service: Service,
    slot: ScoringKey.Slot,
    *,
    acting_user: Any,
    key: str | None = None,
    reason: str = "",
    request_id: uuid.UUID | None = None,
) -> ServiceUpdate | None:
    """Replace one of the service's two scoring keys (with `key`, or a new random one); the other keeps working.

    A service that requires a key is updated to accept the new one (and refuse the old): that update is returned.
    The audit row says which key, never the key."""
    service = Service.objects.select_for_update(of=("self",)).select_related("workspace").get(pk=service.pk)
    if service.state == Service.State.DELETING:
        raise BeingDeleted(service)
    _set_key(service, slot, keys.check(key) if key is not None else keys.generate())
    changes: dict[str, list[Any]] = {
        f"{slot.label.lower()} key": ["old", "new, given by the user" if key is not None else "new, generated"]
    }
    update = None
    if service.auth_enabled:
        service.state, service.state_reason = Service.State.TRANSITIONING, ""
        service.save(update_fields=["state", "state_reason", "updated"])
        update = _record_update(service, acting_user)
        changes["update"] = [None, update.pk]
    _audit(
        service.workspace,
        AuditEvent.Action.SERVICE_KEY_REGENERATED,
        service,
        actor=acting_user,
        changes=changes,
        reason=reason,
        request_id=request_id,
    )
    return update


@transaction.atomic
def do_reseal_scoring_keys() -> tuple[int, list[ScoringKey]]:
    """Seal every service's scoring keys again with the current SECRET_KEY, so that an old one can leave
    SECRET_KEY_FALLBACKS. The keys themselves do not change (no service is updated, no audit row: nothing a user
    set moves). Returns how many were sealed again, and the keys that neither the secret key nor a fallback opens
    (those stay as they were)."""
    resealed, unreadable = [], []
    for key in ScoringKey.objects.select_for_update().select_related("service__workspace").order_by("pk"):
        try:
            key.sealed = keys.reseal(key.sealed)
        except keys.UnreadableKey:
            unreadable.append(key)
        else:
            resealed.append(key)
    ScoringKey.objects.bulk_update(resealed, ["sealed"], batch_size=500)
    log.info("resealed %d scoring keys; %d could not be opened", len(resealed), len(unreadable))
    return len(resealed), unreadable


@transaction.atomic
def do_redeploy_service(service: Service, *, acting_user: Any, reason: str = "") -> ServiceUpdate:
    """Apply a service's unchanged settings again, e.g. to start its local processes after the machine restarted."""
    claimed = (
        Service.objects.filter(pk=service.pk)
        .exclude(state=Service.State.DELETING)
        .update(state=Service.State.TRANSITIONING, state_reason="")
    )
    if not claimed:
        raise BeingDeleted(service)
    _audit(service.workspace, AuditEvent.Action.SERVICE_REDEPLOYED, service, actor=acting_user, reason=reason)
    return _record_update(service, acting_user)


@transaction.atomic
def do_delete_service(
    service: Service, *, acting_user: Any, reason: str = "", request_id: uuid.UUID | None = None
) -> ServiceUpdate:
    """Stop the service wherever it runs, then delete it (by a task: its removal shows on its page as an update).
    Its collected data stays in storage, and its audit rows in the log.

    Until the removal ends the service is Deleting and refuses edits; a removal that fails leaves it Failed, with
    the reason, to be deleted again."""
    service = Service.objects.select_for_update().select_related("workspace").get(pk=service.pk)
    if service.state == Service.State.DELETING:
        raise BeingDeleted(service, already=True)
    before = _snapshot(service)
    service.state, service.state_reason = Service.State.DELETING, ""
    # A form opened before this is stale: its Update is refused rather than applied to a service on its way out.
    service.version += 1
    service.save(update_fields=["state", "state_reason", "version", "updated"])
    update = _record_update(service, acting_user, ServiceUpdate.Kind.REMOVE)
    changes = {name: [_display(name, value), None] for name, value in before.items()}
    _audit(
        service.workspace,
        AuditEvent.Action.SERVICE_DELETE_REQUESTED,
        service,
        actor=acting_user,
        changes={**changes, "update": [None, update.pk]},
        reason=reason,
        request_id=request_id,
    )
    return update


@transaction.atomic
def claim_update(update_id: int) -> ServiceUpdate | None:
    """Take an update for this worker, or return None if it is finished, held by another worker, out of attempts,
    or waiting behind a running update of the same service. An update that a newer one of the same service has
    overtaken never runs: it ends Failed as superseded, so an older spec is never applied after a newer one.

    The service row is locked first (PostgreSQL; SQLite serializes writers anyway), so that the checks and the
    conditional UPDATE that claims the row are one step for every worker.
    """
    service_id = ServiceUpdate.objects.filter(pk=update_id).values_list("service_id", flat=True).first()
    if service_id is None:
        return None
    list(Service.objects.select_for_update().filter(pk=service_id).values_list("pk", flat=True))
    now = timezone.now()
    newer = ServiceUpdate.objects.filter(service_id=service_id, pk__gt=update_id).order_by("pk").first()
    if newer is not None:
        ServiceUpdate.objects.filter(
            pk=update_id, status__in=[ServiceUpdate.Status.PENDING, ServiceUpdate.Status.RUNNING]
        ).filter(Q(status=ServiceUpdate.Status.PENDING) | Q(lease_until__lt=now)).update(
            status=ServiceUpdate.Status.FAILED,
            error=f"Superseded by update #{newer.pk}.",
            finished=now,
            lease_until=None,
        )
        return None
    busy = ServiceUpdate.objects.filter(
        service_id=service_id, status=ServiceUpdate.Status.RUNNING, lease_until__gte=now
    ).exclude(pk=update_id)
    if busy.exists():
        return None
    claimable = Q(status=ServiceUpdate.Status.PENDING) | Q(status=ServiceUpdate.Status.RUNNING, lease_until__lt=now)
    claimed = ServiceUpdate.objects.filter(claimable, pk=update_id, attempts__lt=settings.UPDATE_MAX_ATTEMPTS).update(
        status=ServiceUpdate.Status.RUNNING,
        lease_until=now + timedelta(seconds=settings.UPDATE_LEASE_SECONDS),
        attempts=F("attempts") + 1,
        started=now,
    )
    if not claimed:
        return None
    return ServiceUpdate.objects.select_related("service__workspace", "service__compute_target").get(pk=update_id)


def release_update(update: ServiceUpdate, error: str) -> None:
    """Hand a claimed update back, to be claimed again by its retry."""
    ServiceUpdate.objects.filter(pk=update.pk, status=ServiceUpdate.Status.RUNNING, attempts=update.attempts).update(
        status=ServiceUpdate.Status.PENDING, lease_until=None, error=error
    )


def do_finish_update(update: ServiceUpdate, outcome: RolloutState) -> bool:
    """Record how an update ended, on the update, on its service, and in the audit log.

    Returns False, changing nothing, when this worker no longer holds the update (its lease ran out and another
    worker claimed it): a stale worker never overwrites a newer result.
    """
    return _close_update(update, outcome, held_as=[ServiceUpdate.Status.RUNNING])


@transaction.atomic
def do_finish_removal(update: ServiceUpdate) -> bool:
    """The service of a finished removal is gone from its target: delete its row (and its updates) and say so in
    the audit log. False, changing nothing, when this worker no longer holds the update."""
    # The service row first, as claim_update locks it, so that the two never wait for each other's locks.
    list(Service.objects.select_for_update().filter(pk=update.service_id).values_list("pk", flat=True))
    held = ServiceUpdate.objects.filter(
        pk=update.pk, kind=ServiceUpdate.Kind.REMOVE, status=ServiceUpdate.Status.RUNNING, attempts=update.attempts
    )
    if not held.exists():
        return False
    service = update.service
    _audit(service.workspace, AuditEvent.Action.SERVICE_DELETED, service, changes={"update": [None, update.pk]})
    service.delete()
    return True


def do_fail_abandoned_update(update: ServiceUpdate, reason: str) -> bool:
    """Close an update that no worker will finish (it used up its attempts)."""
    return _close_update(
        update, RolloutState("Failed", reason), held_as=[ServiceUpdate.Status.PENDING, ServiceUpdate.Status.RUNNING]
    )


@transaction.atomic
def _close_update(update: ServiceUpdate, outcome: RolloutState, *, held_as: list[str]) -> bool:
    succeeded = outcome.status == "Healthy"
    held = ServiceUpdate.objects.filter(pk=update.pk, status__in=held_as, attempts=update.attempts).update(
        status=ServiceUpdate.Status.SUCCEEDED if succeeded else ServiceUpdate.Status.FAILED,
        error="" if succeeded else outcome.reason,
        finished=timezone.now(),
        lease_until=None,
    )
    if not held:
        return False
    service = update.service
    removal = update.kind == ServiceUpdate.Kind.REMOVE
    reason = f"Could not delete the service: {outcome.reason}" if removal else outcome.reason
    # Only the newest update speaks for the service's state; an older one finishing late must not overwrite it.
    if not ServiceUpdate.objects.filter(service=service, pk__gt=update.pk).exists():
        Service.objects.filter(pk=service.pk).update(
            state=Service.State.HEALTHY if succeeded else Service.State.FAILED,
            state_reason="" if succeeded else reason,
            scoring_url=outcome.scoring_url or F("scoring_url"),
        )
    if removal and not succeeded:  # a removal that succeeds ends in do_finish_removal
        action = AuditEvent.Action.SERVICE_DELETE_FAILED
    elif succeeded:
        action = AuditEvent.Action.SERVICE_UPDATE_SUCCEEDED
    else:
        action = AuditEvent.Action.SERVICE_UPDATE_FAILED
    _audit(
        service.workspace,
        action,
        service,
        changes={"update": [None, update.pk]},
        reason="" if succeeded else reason,
    )
    return True


def update_is_waiting(update_id: int) -> bool:
    """True when an update could not be claimed only because it waits its turn (it is still pending)."""
    return ServiceUpdate.objects.filter(
        pk=update_id, status=ServiceUpdate.Status.PENDING, attempts__lt=settings.UPDATE_MAX_ATTEMPTS
    ).exists()


# -- API tokens: a user's own, across workspaces (so logged, not in a workspace's audit log) ---------------------


def do_issue_api_token(user: Any, name: str) -> tuple[ApiToken, str]:
    """A new token for `user`; returns the row and the token itself, which is shown once and stored nowhere."""
    token, key = ApiToken.issue(user, name)
    log.info("user %s issued API token %s… (%s)", user.get_username(), token.prefix, token.name)
    return token, key


def do_revoke_api_token(user: Any, token_id: int) -> ApiToken | None:
    """Delete one of `user`'s tokens; None if it has no such token (another user's is not found either)."""
    token = ApiToken.objects.filter(user=user, pk=token_id).first()
    if token is None:
        return None
    token.delete()
    log.info("user %s revoked API token %s… (%s)", user.get_username(), token.prefix, token.name)
    return token


# -- Members: owners add people, change their roles and remove them; a workspace always keeps an owner ------------


class MembershipError(ValueError):
    """A change of members that was refused (it would leave the workspace without an owner, say); the message is
    for the user."""


def _lock(membership: Membership, acting_user: Any) -> tuple[Membership, int]:
    """In a transaction: lock the workspace's owners (always first, in one order, so that concurrent changes wait
    for each other rather than deadlock) and then the member; returns the member, fresh, and the owner count.

    The acting user must still be an owner once the owners are locked: one who was made a contributor meanwhile
    changes nothing."""
    owners = Membership.objects.select_for_update().filter(
        workspace_id=membership.workspace_id, role=Membership.Role.OWNER
    )
    locked = list(owners.order_by("pk"))
    if not any(owner.user_id == acting_user.pk for owner in locked):
        raise MembershipError("Only an owner of the workspace can change its members, and you no longer are one.")
    members = Membership.objects.select_for_update(of=("self",)).select_related("user", "workspace")
    return members.get(pk=membership.pk), len(locked)


def _check_an_owner_remains(membership: Membership, owners: int) -> None:
    if membership.role == Membership.Role.OWNER and owners <= 1:
        raise MembershipError("A workspace needs an owner: make someone else an owner first.")


@transaction.atomic
def do_add_member(workspace: Workspace, user: Any, role: str, *, acting_user: Any) -> Membership:
    try:
        with transaction.atomic():  # the form checked, but the same user may have been added meanwhile
            membership = Membership.objects.create(workspace=workspace, user=user, role=role)
    except IntegrityError as exc:
        raise MembershipError(f"{user.get_username()} is already a member of this workspace.") from exc
    _audit(workspace, AuditEvent.Action.MEMBER_ADDED, membership, actor=acting_user, changes={"role": [None, role]})
    return membership


STAFF_REASON = "in the Django admin"


@transaction.atomic
def do_staff_save_member(membership: Membership, *, acting_user: Any) -> None:
    """A member added or changed by staff in the Django admin, where a new workspace gets its first owner. Staff
    are not members, so there is no owner check; the audit row says who did it, and where."""
    before = None
    if membership.pk is not None:
        before = Membership.objects.select_for_update().select_related("user").filter(pk=membership.pk).first()
    membership.save()
    workspace = membership.workspace
    if before is not None and before.user_id != membership.user_id:  # another user on the same row
        _audit(
            workspace,
            AuditEvent.Action.MEMBER_REMOVED,
            before,
            actor=acting_user,
            reason=STAFF_REASON,
            changes={"role": [before.role, None]},
        )
        before = None
    if before is None:
        _audit(
            workspace,
            AuditEvent.Action.MEMBER_ADDED,
            membership,
            actor=acting_user,
            reason=STAFF_REASON,
            changes={"role": [None, membership.role]},
        )
    elif before.role != membership.role:
        _audit(
            workspace,
            AuditEvent.Action.MEMBER_ROLE_CHANGED,
            membership,
            actor=acting_user,
            reason=STAFF_REASON,
            changes={"role": [before.role, membership.role]},
        )


@transaction.atomic
def do_staff_remove_member(membership: Membership, *, acting_user: Any) -> None:
    _audit(
        membership.workspace,
        AuditEvent.Action.MEMBER_REMOVED,
        membership,
        actor=acting_user,
        reason=STAFF_REASON,
        changes={"role": [membership.role, None]},
    )
    membership.delete()


@transaction.atomic
def do_change_member_role(membership: Membership, role: str, *, acting_user: Any) -> bool:
    """Give the member another role; False if it is the role they have."""
    membership, owners = _lock(membership, acting_user)
    if membership.role == role:
        return False
    if role != Membership.Role.OWNER:
        _check_an_owner_remains(membership, owners)
    before, membership.role = membership.role, role
    membership.save(update_fields=["role"])
    _audit(
        membership.workspace,
        AuditEvent.Action.MEMBER_ROLE_CHANGED,
        membership,
        actor=acting_user,
        changes={"role": [before, role]},
    )
    return True


@transaction.atomic
def do_remove_member(membership: Membership, *, acting_user: Any) -> None:
    membership, owners = _lock(membership, acting_user)
    _check_an_owner_remains(membership, owners)
    _audit(
        membership.workspace,
        AuditEvent.Action.MEMBER_REMOVED,
        membership,
        actor=acting_user,
        changes={"role": [membership.role, None]},
    )
    membership.delete()
