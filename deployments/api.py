"""The JSON REST API that the SDK and CI use: token authentication, the same forms and actions as the pages.

Requests carry `Authorization: Bearer <token>` (see `manage.py create_api_token`); cookies are not accepted, so
the API needs no CSRF token. Errors are JSON `{"error": "..."}` with a 4xx status.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import transaction
from django.http import Http404, HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from deployments import actions, keys, logs
from deployments.access import get_workspace_for_user, user_id
from deployments.forms import REASON_MAX_LENGTH, ServiceCreateForm, ServiceEditForm
from deployments.models import ApiToken, Membership, ScoringKey, Service, ServiceUpdate, Workspace
from portal.middleware import request_id

View = Callable[..., JsonResponse]
UPDATABLE = {
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
    *ServiceCreateForm.AUTOSCALE,
    *ServiceCreateForm.LIVENESS,
}
FLAGS = ("collect_model_data", "enable_app_insights", "auth_enabled", "autoscale_enabled")
RESOURCES = ServiceCreateForm.RESOURCES  # numbers, or null for none
WHOLE_NUMBERS = ServiceCreateForm.AUTOSCALE[1:]
# A new service's keys, when the caller gives them (Azure ML's primary_key and secondary_key); else generated.
KEY_FIELDS = {"primary_key": ScoringKey.Slot.PRIMARY, "secondary_key": ScoringKey.Slot.SECONDARY}


def _error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def api_view(*methods: str) -> Callable[[View], View]:
    """Token authentication, allowed methods, and 4xx JSON errors for the API's views."""

    def decorator(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            scheme, _, key = request.headers.get("Authorization", "").partition(" ")
            token = ApiToken.objects.select_related("user").filter(key_hash=ApiToken.hash(key.strip())).first()
            if scheme.lower() != "bearer" or token is None or not token.user.is_active:
                return _error("Authentication required: send Authorization: Bearer <token>.", 401)
            # At most one write a minute per token: polling clients (wait_for_deployment) stay read-only.
            now = timezone.now()
            if token.last_used is None or now - token.last_used > timedelta(minutes=1):
                ApiToken.objects.filter(pk=token.pk).update(last_used=now)
            request.user = token.user
            if request.method not in methods:
                return _error(f"Method {request.method} is not allowed here.", 405)
            try:
                return view(request, *args, **kwargs)
            except RequestDataTooBig:
                return _error(f"The body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.", 413)
            except Http404 as exc:
                return _error(str(exc) or "Not found.", 404)
            except PermissionDenied:
                return _error("Your role in this workspace does not allow changes.", 403)
            except (actions.StaleEdit, actions.BeingDeleted) as exc:
                return _error(str(exc), 409)
            except (actions.ActionError, ValueError) as exc:
                return _error(str(exc), 400)

        return wrapper

    return decorator


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise ValueError("The body must be a JSON object.") from exc
    if not isinstance(data, dict):
        raise ValueError("The body must be a JSON object.")
    return data


def _form_errors(form: Any) -> JsonResponse:
    errors = {field: [str(e) for e in errs] for field, errs in form.errors.items()}
    field, messages = next(iter(errors.items()))
    first = messages[0] if field == "__all__" else f"{field}: {messages[0]}"
    return JsonResponse({"error": first, "fields": errors}, status=400)


def _model_ids(workspace: Workspace, refs: Any) -> list[int]:
    """Models as the SDK names them, `name:version` (or a bare name: its newest version), to their ids."""
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise ValueError("models must be a list of 'name:version' strings.")
    ids = []
    for ref in refs:
        name, _, version = ref.partition(":")
        found = workspace.models.filter(name=name)
        found = found.filter(version=version) if version.isdigit() else found.order_by("-version")
        model = found.first()
        if model is None:
            raise ValueError(f"No model {ref!r} in this workspace.")
        ids.append(model.pk)
    return ids


def _form_data(workspace: Workspace, values: dict[str, Any]) -> dict[str, Any]:
    data = dict(values)
    for flag in FLAGS:
        if flag in data and not isinstance(data[flag], bool):
            # A form reads any text but "false" and "0" as on: "no" must not switch collection on.
            raise ValueError(f"{flag} must be true or false.")
    # JSON numbers of the right kind: a form would read "2", 2.5 or true as a number too.
    for names, kinds, nullable, what in (
        (RESOURCES, int | float, True, "a number, or null for none"),
        (WHOLE_NUMBERS, int, False, "a whole number"),
        (ServiceCreateForm.LIVENESS, int, True, "a whole number, or null for the default"),
    ):
        for name in names:
            if name not in data or (nullable and data[name] is None):
                continue
            if isinstance(data[name], bool) or not isinstance(data[name], kinds):
                raise ValueError(f"{name} must be {what}.")
    if "models" in data:
        data["models"] = _model_ids(workspace, data["models"])
    if "compute_target" in data:
        target = workspace.compute_targets.filter(name=data["compute_target"]).first()
        if target is None:
            raise ValueError(f"No compute target {data['compute_target']!r} in this workspace.")
        data["compute_target"] = target.pk
    return data


def _as_form_post(data: dict[str, Any]) -> dict[str, Any]:
    """An unchecked box is absent from a form post: drop the flags that are off."""
    return {k: v for k, v in data.items() if not (k in FLAGS and not v)}


def _update_json(update: ServiceUpdate | None) -> dict[str, Any] | None:
    if update is None:
        return None
    return {
        "id": update.pk,
        "status": update.get_status_display(),
        "attempts": update.attempts,
        "error": update.error,
        "created": update.created.isoformat(),
        "finished": update.finished.isoformat() if update.finished else None,
    }


def _service_json(service: Service) -> dict[str, Any]:
    return {
        "id": service.pk,
        "name": service.name,
        "state": service.state,
        "state_reason": service.state_reason,
        "scoring_uri": service.scoring_url,
        "swagger_uri": service.swagger_url,
        "compute_target": service.compute_target.name,
        "compute_type": service.compute_target.kind,
        "models": [str(m) for m in service.models.all()],
        "entry_script": service.entry_script,
        "image": service.image,
        "replicas": service.replicas,
        "collect_model_data": service.collect_model_data,
        "enable_app_insights": service.enable_app_insights,
        "auth_enabled": service.auth_enabled,
        **{name: getattr(service, name) for name in RESOURCES},
        **{name: getattr(service, name) for name in (*ServiceCreateForm.AUTOSCALE, *ServiceCreateForm.LIVENESS)},
        "version": service.version,
        "latest_update": _update_json(service.updates.first()),
    }


def _service(request: HttpRequest, workspace_id: int, name: str) -> tuple[Service, bool]:
    workspace, can_write = get_workspace_for_user(request, workspace_id)
    service = (
        Service.objects.select_related("compute_target", "workspace").filter(workspace=workspace, name=name).first()
    )
    if service is None:  # Django's own message ("No Service matches the given query.") would reach SDK users
        raise Http404(f"No service {name!r} in this workspace.")
    return service, can_write


@api_view("GET")
def workspaces(request: HttpRequest) -> JsonResponse:
    memberships = Membership.objects.filter(user_id=user_id(request)).select_related("workspace")
    return JsonResponse(
        {
            "workspaces": [
                {
                    "id": m.workspace.pk,
                    "subscription_id": m.workspace.subscription_id,
                    "resource_group": m.workspace.resource_group,
                    "name": m.workspace.name,
                    "role": m.role,
                }
                for m in memberships
            ]
        }
    )


@api_view("GET", "POST")
def services(request: HttpRequest, workspace_id: int) -> JsonResponse:
    workspace, can_write = get_workspace_for_user(request, workspace_id)
    if request.method == "GET":
        found = workspace.services.select_related("compute_target").prefetch_related("models").order_by("name")
        return JsonResponse({"services": [_service_json(s) for s in found[:1000]]})
    if not can_write:
        raise PermissionDenied
    body = _body(request)
    unknown = set(body) - UPDATABLE - {"name", "reason", *KEY_FIELDS}
    if unknown:
        raise ValueError(f"Unknown parameters: {', '.join(sorted(unknown))}")
    given_keys = {slot: body.pop(field) for field, slot in KEY_FIELDS.items() if body.get(field) is not None}
    if not all(isinstance(key, str) for key in given_keys.values()):
        raise ValueError("primary_key and secondary_key must be strings.")
    defaults = {"replicas": 1, "auth_enabled": True}  # a key is required unless the caller says otherwise
    form = ServiceCreateForm(_as_form_post({**defaults, **_form_data(workspace, body)}), workspace=workspace)
    if not form.is_valid():
        return _form_errors(form)
    update = actions.do_deploy_service(
        workspace,
        acting_user=request.user,
        reason=form.cleaned_data["reason"],
        request_id=request_id(request),
        given_keys=given_keys,
        **form.settings(),
    )
    return JsonResponse(_service_json(update.service), status=202)


@api_view("GET", "PATCH", "DELETE")
def service(request: HttpRequest, workspace_id: int, name: str) -> JsonResponse:
    service, can_write = _service(request, workspace_id, name)
    if request.method == "GET":
        return JsonResponse(_service_json(service))
    if not can_write:
        raise PermissionDenied
    body = _body(request)
    if request.method == "DELETE":
        return _delete(request, service, body)
    unknown = set(body) - UPDATABLE - {"version", "reason"}
    if unknown:
        raise ValueError(f"Unknown parameters: {', '.join(sorted(unknown))}")
    if not set(body) & UPDATABLE:
        raise actions.NothingToUpdate()
    if "compute_target" in body and body["compute_target"] != service.compute_target.name:
        raise actions.TargetChange()  # the edit form would ignore it: a service stays on its target
    if service.autoscale_enabled and body.get("autoscale_enabled") is False and "replicas" not in body:
        # Its count, unused while it autoscaled, may be far below what runs now: say it, as azureml-core made say.
        raise ValueError("replicas: give the number of replicas to run once it no longer autoscales.")
    # Without a version the caller accepts the current one, as the legacy SDK's update() did.
    current = {**ServiceEditForm.initial_for(service), "models": list(service.models.values_list("pk", flat=True))}
    form = ServiceEditForm(
        _as_form_post({**current, **_form_data(service.workspace, body)}),
        workspace=service.workspace,
        initial=current,  # the values of the fields an edit shows but does not change (the compute target)
    )
    if not form.is_valid():
        return _form_errors(form)
    actions.do_update_service(
        service,
        expected_version=form.cleaned_data["version"],
        acting_user=request.user,
        reason=form.cleaned_data["reason"],
        request_id=request_id(request),
        **form.settings(),  # type: ignore[attr-defined]
    )
    service.refresh_from_db()
    return JsonResponse(_service_json(service), status=202)


@api_view("GET")
def service_logs(request: HttpRequest, workspace_id: int, name: str) -> JsonResponse:
    """The last `lines` lines (default and most: 5,000, as the legacy get_logs()) of the service's log."""
    service, _ = _service(request, workspace_id, name)
    lines = request.GET.get("lines", str(logs.MAX_LINES))
    if not (lines.isascii() and lines.isdecimal() and len(lines) <= 4) or not 1 <= int(lines) <= logs.MAX_LINES:
        raise ValueError(f"lines must be a whole number from 1 to {logs.MAX_LINES}.")
    log = logs.read(service, int(lines))
    if log.error:
        return _error(log.error, 502)
    return JsonResponse({"service": service.name, "lines": log.lines, "log": log.text})


@api_view("GET", "POST")
def service_keys(request: HttpRequest, workspace_id: int, name: str) -> JsonResponse:
    """GET: the service's two scoring keys (as the legacy get_keys()); POST {"key_type": "Primary" or "Secondary",
    "key": optional}: regenerate one (as regen_key()). Only for those who may change the service."""
    service, can_write = _service(request, workspace_id, name)
    if not can_write:
        raise PermissionDenied
    if request.method == "GET":
        try:
            found = {key.slot: keys.unseal(key.sealed) for key in service.keys.all()}
        except keys.UnreadableKey as exc:
            return _error(str(exc), 409)
        response = JsonResponse({"primary_key": found.get("primary"), "secondary_key": found.get("secondary")})
        response["Cache-Control"] = "no-store"
        return response
    body = _body(request)
    unknown = set(body) - {"key_type", "key", "reason"}
    if unknown:
        raise ValueError(f"Unknown parameters: {', '.join(sorted(unknown))}")
    key_type = body.get("key_type")
    # azureml-core capitalised it: "primary" was Primary.
    slot = next((s for s in ScoringKey.Slot if isinstance(key_type, str) and s.label == key_type.capitalize()), None)
    if slot is None:
        raise ValueError("key_type must be 'Primary' or 'Secondary'.")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > REASON_MAX_LENGTH:
        raise ValueError(f"reason must be a string of at most {REASON_MAX_LENGTH} characters.")
    update = actions.do_regenerate_key(
        service, slot, acting_user=request.user, key=body.get("key"), reason=reason, request_id=request_id(request)
    )
    service.refresh_from_db()
    answer = {"service": _service_json(service), "update": _update_json(update)}
    return JsonResponse(answer, status=202 if update is not None else 200)


def _delete(request: HttpRequest, service: Service, body: dict[str, Any]) -> JsonResponse:
    """Start the service's removal: 202 with the service as Deleting; it is gone (404) once the removal is done."""
    unknown = set(body) - {"reason"}
    if unknown:
        raise ValueError(f"Unknown parameters: {', '.join(sorted(unknown))}")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > REASON_MAX_LENGTH:
        raise ValueError(f"reason must be a string of at most {REASON_MAX_LENGTH} characters.")
    # The answer is read before the removal is enqueued (on commit): a quick worker may delete the row at once.
    with transaction.atomic():
        update = actions.do_delete_service(
            service, acting_user=request.user, reason=reason, request_id=request_id(request)
        )
        answer = _service_json(update.service)
    return JsonResponse(answer, status=202)


@api_view("GET")
def update(request: HttpRequest, update_id: int) -> JsonResponse:
    # One answer for an update that does not exist and one of a workspace the caller is not in: ids leak nothing.
    mine = ServiceUpdate.objects.filter(service__workspace__memberships__user_id=user_id(request))
    found = mine.filter(pk=update_id).first()
    if found is None:
        raise Http404("No such update")
    return JsonResponse(_update_json(found) or {})
