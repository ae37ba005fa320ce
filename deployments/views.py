from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.messages.storage.base import BaseStorage
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, HttpResponseClientRefresh
from django_htmx.middleware import HtmxDetails

from deployments import actions, keys, logs, runtime
from deployments import health as health_checks
from deployments.access import get_membership_for_user, get_service_for_user, get_workspace_for_user, user_id
from deployments.compute import APP_INSIGHTS_KEY
from deployments.forms import (
    REASON_MAX_LENGTH,
    ApiTokenForm,
    AuditFilterForm,
    MemberAddForm,
    MemberRoleForm,
    ServiceCreateForm,
    ServiceEditForm,
    ServiceFilterForm,
)
from deployments.models import ApiToken, AuditEvent, ComputeTarget, Membership, ScoringKey, Service
from portal.middleware import request_id

SERVICES_PER_PAGE = 50
AUDIT_EVENTS_PER_PAGE = 50


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _require_write(can_write: bool) -> None:
    if not can_write:
        raise PermissionDenied("Readers cannot change this workspace.")


def _after_change(request: HtmxHttpRequest, url: str) -> HttpResponse:
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@require_GET
@login_required
def home(request: HtmxHttpRequest) -> HttpResponse:
    memberships = Membership.objects.filter(user_id=user_id(request)).select_related("workspace")
    memberships = memberships.order_by("workspace__name")
    return render(request, "deployments/home.html", {"memberships": memberships, "nav": "workspaces"})


@require_GET
@login_required
def deployments_redirect(request: HtmxHttpRequest) -> HttpResponse:
    """The top navigation's "Deployments": the first workspace's services, or the workspace list if none."""
    membership = Membership.objects.filter(user_id=user_id(request)).order_by("workspace__name").first()
    if membership is None:
        return redirect("deployments:home")
    return redirect("deployments:service-list", workspace_id=membership.workspace_id)


@require_GET
@login_required
def service_list(request: HtmxHttpRequest, workspace_id: int) -> HttpResponse:
    workspace, can_write = get_workspace_for_user(request, workspace_id)
    services = workspace.services.select_related("compute_target").prefetch_related("models").order_by("name")
    filters = ServiceFilterForm(request.GET)
    if filters.is_valid():
        if filters.cleaned_data["q"]:
            services = services.filter(name__icontains=filters.cleaned_data["q"])
        if filters.cleaned_data["state"]:
            services = services.filter(state=filters.cleaned_data["state"])
    page = Paginator(services, SERVICES_PER_PAGE).get_page(request.GET.get("page"))
    template = "deployments/service_list.html" + ("#services" if request.htmx else "")
    context = {"workspace": workspace, "can_write": can_write, "page": page, "filters": filters, "nav": "deployments"}
    return render(request, template, context)


def _status_context(service: Service) -> dict[str, object]:
    updates = list(service.updates.select_related("requested_by")[:10])
    return {"service": service, "updates": updates, "polling": any(not u.is_finished for u in updates)}


def _service_or_where_it_went(request: HtmxHttpRequest, service_id: int) -> tuple[Service, bool] | HttpResponse:
    """The service and whether the user may change it, as get_service_for_user; for a service that was deleted
    (its page left open while it was), a redirect of the page to its workspace's list instead. To a live region
    of a page whose service the user cannot see (any more), a reload of the page: it shows the 404 page."""
    try:
        return get_service_for_user(request, service_id)
    except Http404:
        if (gone := _list_after_deletion(request, service_id)) is not None:
            return _after_change(request, gone)
        if request.htmx:
            # htmx swaps nothing of a 404 and polls again, for as long as the page stays open. The page's own
            # 404 says why, in words that are the same whether the service never existed, was deleted, or is in
            # a workspace the user is not (or no longer) a member of.
            return HttpResponseClientRefresh()
        raise


def _list_after_deletion(request: HtmxHttpRequest, service_id: int) -> str | None:
    """For the page of a service that was deleted: its workspace's list, with a message that says so; None when
    there is no such service or the user is not a member of its workspace."""
    event = (
        AuditEvent.objects.filter(
            action=AuditEvent.Action.SERVICE_DELETED,
            target_type="service",
            target_id=service_id,
            workspace__memberships__user_id=user_id(request),
        )
        .order_by("-created")
        .first()
    )
    if event is None:
        return None
    said = f"{event.target_repr} was deleted."
    queued = messages.get_messages(request)
    assert isinstance(queued, BaseStorage)  # the messages middleware is on (a list without it)
    if all(message.message != said for message in queued):  # the page's other live regions noticed it first
        messages.info(request, said)
    queued.used = False  # only looked at: they still show on the list
    return reverse("deployments:service-list", args=[event.workspace_id])


@require_GET
@login_required
def service_detail(request: HtmxHttpRequest, service_id: int) -> HttpResponse:
    found = _service_or_where_it_went(request, service_id)
    if isinstance(found, HttpResponse):
        return found
    service, can_write = found
    events = AuditEvent.objects.filter(workspace=service.workspace, target_type="service", target_id=service.pk)
    context = {
        **_status_context(service),
        "workspace": service.workspace,
        "can_write": can_write,
        "models": service.models.all(),
        "events": events[:10],
        "telemetry": _telemetry_destinations(service),
        "local": service.compute_target.kind == ComputeTarget.Kind.LOCAL,  # no resources, probes or pods to show
        "placeholder": True,  # the runtime's figures come by htmx, so that a slow runtime never slows the page
        "nav": "deployments",
    }
    return render(request, "deployments/service_detail.html", context)


@require_GET
@login_required
def service_logs(request: HtmxHttpRequest, service_id: int) -> HttpResponse:
    """The last lines of what the service's processes wrote, refreshed while the page is open."""
    found = _service_or_where_it_went(request, service_id)
    if isinstance(found, HttpResponse):
        return found
    service, _ = found
    asked = request.GET.get("lines", "")
    lines = next((n for n in logs.PAGE_LINES if asked == str(n)), logs.DEFAULT_PAGE_LINES)
    context = {
        "service": service,
        "workspace": service.workspace,
        "log": logs.read(service, lines),
        "choices": logs.PAGE_LINES,
        "nav": "deployments",
    }
    response = render(request, "deployments/service_logs.html" + ("#log" if request.htmx else ""), context)
    # The page and its refreshes share a URL: Back must not show a bare refresh, nor any cache keep the log.
    patch_vary_headers(response, ["HX-Request"])
    response["Cache-Control"] = "no-store"
    return response


def _telemetry_destinations(service: Service) -> list[str]:
    """Where the service's request telemetry goes with "Enable AppInsights diagnostics" on (the settings' names,
    never their secret values); empty: nowhere, and the page says how to set one."""
    destinations = []
    if service.compute_target.kind == ComputeTarget.Kind.KUBERNETES:
        if service.workspace.storage_secret:
            destinations.append(
                f"Azure Monitor, if the Secret {service.workspace.storage_secret} has the key {APP_INSIGHTS_KEY}"
            )
    elif settings.APPLICATIONINSIGHTS_CONNECTION_STRING:
        destinations.append("Azure Monitor (APPLICATIONINSIGHTS_CONNECTION_STRING)")
    if settings.OTEL_EXPORTER_OTLP_ENDPOINT:
        # Its host only: an endpoint may carry a token (user:token@, ?key=), and readers see this page too.
        endpoint = urlsplit(settings.OTEL_EXPORTER_OTLP_ENDPOINT)
        destinations.append(f"OTLP at {endpoint.scheme}://{endpoint.hostname or ''}")
    return destinations


@require_GET
@login_required
def service_status(request: HtmxHttpRequest, service_id: int) -> HttpResponse:
    """The live region of a service's page: its state and updates, every second while an update is unfinished and
    every 10 s otherwise (a change made elsewhere shows too). When the update it followed ends, the whole page is
    loaded again: the scoring URL, the settings and the recent changes are those of the rollout's end."""
    found = _service_or_where_it_went(request, service_id)
    if isinstance(found, HttpResponse):
        return found
    service, _ = found
    context = _status_context(service)
    if request.GET.get("following") and not context["polling"]:
        return HttpResponseClientRefresh()
    return render(request, "deployments/service_detail.html#status", context)


@require_GET
@login_required
def service_runtime(request: HtmxHttpRequest, service_id: int) -> HttpResponse:
    """What the service's runtime says of itself, live: requests, latency and what became of the collected rows
    (dropped ones with the reason). Asked of the process on this machine, of each pod on Kubernetes."""
    found = _service_or_where_it_went(request, service_id)
    if isinstance(found, HttpResponse):
        return found
    service, _ = found
    context = {
        "service": service,
        "local": service.compute_target.kind == ComputeTarget.Kind.LOCAL,
        "runtime": runtime.of_service(service),
    }
    return render(request, "deployments/service_detail.html#runtime", context)


@require_http_methods(["GET", "POST"])
@login_required
def service_edit(request: HtmxHttpRequest, service_id: int) -> HttpResponse:
    service, can_write = get_service_for_user(request, service_id)
    _require_write(can_write)
    form = ServiceEditForm(
        request.POST or None, workspace=service.workspace, initial=ServiceEditForm.initial_for(service)
    )
    stale = ""
    if request.method == "POST" and form.is_valid():
        try:
            actions.do_update_service(
                service,
                expected_version=form.cleaned_data["version"],
                acting_user=request.user,
                reason=form.cleaned_data["reason"],
                request_id=request_id(request),
                **form.settings(),
            )
        except actions.StaleEdit as exc:
            # Show the settings as they are now, so that the user's next Update starts from them.
            service.refresh_from_db()
            form = ServiceEditForm(workspace=service.workspace, initial=ServiceEditForm.initial_for(service))
            stale = str(exc)
        except actions.ActionError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Updating {service.name}: the change is being applied.")
            return _after_change(request, reverse("deployments:service-detail", args=[service.pk]))
    template = "deployments/service_edit.html" + ("#service-form" if request.htmx else "")
    context = {"service": service, "workspace": service.workspace, "form": form, "stale": stale, "nav": "deployments"}
    return render(request, template, context)


@require_http_methods(["GET", "POST"])
@login_required
def service_keys(request: HtmxHttpRequest, service_id: int) -> HttpResponse:
    """The service's two scoring keys, for those who may change it, and their regeneration (one at a time, so that
    clients move to the new key while the other still works)."""
    service, can_write = get_service_for_user(request, service_id)
    _require_write(can_write)
    if request.method == "POST":
        slot = next((s for s in ScoringKey.Slot if s.value == request.POST.get("slot")), None)
        if slot is None:
            messages.error(request, "Say which key to regenerate: primary or secondary.")
        else:
            _regenerate_key(request, service, slot)
        return _after_change(request, reverse("deployments:service-keys", args=[service.pk]))
    shown, unreadable = [], ""
    for key in service.keys.all():
        try:
            shown.append((key, keys.unseal(key.sealed)))
        except keys.UnreadableKey as exc:  # the page still offers to regenerate it
            shown.append((key, ""))
            unreadable = str(exc)
    context = {
        "service": service,
        "workspace": service.workspace,
        "keys": shown,
        "unreadable": unreadable,
        # Until the newest update has succeeded, the service may still take the keys it had before.
        "update": service.updates.first(),
        "nav": "deployments",
    }
    response = render(request, "deployments/service_keys.html", context)
    response["Cache-Control"] = "no-store"  # keys: no cache may keep them
    return response


def _regenerate_key(request: HtmxHttpRequest, service: Service, slot: ScoringKey.Slot) -> None:
    try:
        update = actions.do_regenerate_key(
            service,
            slot,
            acting_user=request.user,
            request_id=request_id(request),
        )
    except actions.ActionError as exc:
        messages.error(request, str(exc))
        return
    said = f"Regenerated the {slot.label.lower()} key of {service.name}."
    if update is not None:
        messages.success(
            request, f"{said} The service takes it, and refuses the old one, once update #{update.pk} has finished."
        )
    else:
        messages.success(
            request, f"{said} The service requires no key yet: Edit → Advanced settings → Require a key to score."
        )


@require_POST
@login_required
def service_delete(request: HtmxHttpRequest, service_id: int) -> HttpResponse:
    """Delete a service: it stops wherever it runs, then its row goes; its page follows the removal live."""
    service, can_write = get_service_for_user(request, service_id)
    _require_write(can_write)
    try:
        actions.do_delete_service(
            service,
            acting_user=request.user,
            reason=request.POST.get("reason", "")[:REASON_MAX_LENGTH],
            request_id=request_id(request),
        )
    except actions.ActionError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Deleting {service.name}: it is being stopped and removed.")
    return _after_change(request, reverse("deployments:service-detail", args=[service.pk]))


@require_http_methods(["GET", "POST"])
@login_required
def service_create(request: HtmxHttpRequest, workspace_id: int) -> HttpResponse:
    workspace, can_write = get_workspace_for_user(request, workspace_id)
    _require_write(can_write)
    form = ServiceCreateForm(request.POST or None, workspace=workspace)
    if request.method == "POST" and form.is_valid():
        try:
            update = actions.do_deploy_service(
                workspace,
                acting_user=request.user,
                reason=form.cleaned_data["reason"],
                request_id=request_id(request),
                **form.settings(),
            )
        except actions.ActionError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Deploying {update.service.name}.")
            return _after_change(request, reverse("deployments:service-detail", args=[update.service_id]))
    template = "deployments/service_create.html" + ("#service-form" if request.htmx else "")
    return render(request, template, {"workspace": workspace, "form": form, "nav": "deployments"})


@require_GET
@login_required
def audit_log(request: HtmxHttpRequest, workspace_id: int) -> HttpResponse:
    workspace, _ = get_workspace_for_user(request, workspace_id)
    events = AuditEvent.objects.filter(workspace=workspace)
    filters = AuditFilterForm(request.GET)
    one_service = False  # one service's changes (a service page's "Full audit log"), not every one of its name
    if filters.is_valid():
        data = filters.cleaned_data
        one_service = bool(data["service_id"])
        if data["service"]:
            events = events.filter(target_type="service", target_repr=data["service"])
        if data["service_id"]:
            events = events.filter(target_type="service", target_id=data["service_id"])
        if data["actor"]:
            events = events.filter(actor_name=data["actor"])
        if data["action"]:
            events = events.filter(action=data["action"])
    page = Paginator(events, AUDIT_EVENTS_PER_PAGE).get_page(request.GET.get("page"))
    template = "deployments/audit_log.html" + ("#events" if request.htmx else "")
    context = {"workspace": workspace, "page": page, "filters": filters, "one_service": one_service, "nav": "audit"}
    return render(request, template, context)


@require_GET
@login_required
def health(request: HtmxHttpRequest) -> HttpResponse:
    results = health_checks.run_checks()
    healthy = all(r["status"] == "ok" for r in results.values())
    return JsonResponse({"healthy": healthy, "checks": results}, status=200 if healthy else 503)


@require_http_methods(["GET", "POST"])
@login_required
def api_tokens(request: HtmxHttpRequest) -> HttpResponse:
    """The user's tokens for the REST API and the SDK; a new one is shown once, in the answer to its POST."""
    form = ApiTokenForm(request.POST or None, user=request.user)
    new_key = ""
    if request.method == "POST" and form.is_valid():
        _, new_key = actions.do_issue_api_token(request.user, form.cleaned_data["name"])
        form = ApiTokenForm(user=request.user)
    tokens = ApiToken.objects.filter(user_id=user_id(request)).order_by("-created", "-id")
    response = render(
        request, "deployments/api_tokens.html", {"form": form, "tokens": tokens, "new_key": new_key, "nav": "tokens"}
    )
    response["Cache-Control"] = "no-store"  # the page may hold a token: never from a cache or the back button
    return response


@require_http_methods(["POST"])
@login_required
def api_token_revoke(request: HtmxHttpRequest, token_id: int) -> HttpResponse:
    token = actions.do_revoke_api_token(request.user, token_id)
    if token is None:
        raise Http404("No such token.")
    messages.success(request, f"Revoked the token {token.name} ({token.prefix}…): it no longer works.")
    return redirect("deployments:api-tokens")


def _require_owner(membership: Membership) -> None:
    if membership.role != Membership.Role.OWNER:
        raise PermissionDenied("Only the workspace's owners change its members.")


@require_http_methods(["GET", "POST"])
@login_required
def workspace_members(request: HtmxHttpRequest, workspace_id: int) -> HttpResponse:
    """Who belongs to the workspace, in which role; owners add members here."""
    mine = get_membership_for_user(request, workspace_id)
    workspace = mine.workspace
    form = MemberAddForm(request.POST or None, workspace=workspace)
    if request.method == "POST":
        _require_owner(mine)
        if form.is_valid():
            role = form.cleaned_data["role"]
            try:
                actions.do_add_member(workspace, form.user, role, acting_user=request.user)
            except actions.MembershipError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Added {form.user.get_username()} as {Membership.Role(role).label}.")
                return redirect("deployments:workspace-members", workspace_id=workspace.pk)
    members = workspace.memberships.select_related("user").order_by("user__username")
    context = {
        "workspace": workspace,
        "is_owner": mine.role == Membership.Role.OWNER,
        "members": members,
        "form": form,
        "roles": Membership.Role.choices,
        "nav": "deployments",
    }
    return render(request, "deployments/members.html", context)


def _member(request: HtmxHttpRequest, workspace_id: int, member_id: int) -> Membership:
    """The member to change, for an owner of the workspace (404 for a member of another workspace)."""
    _require_owner(get_membership_for_user(request, workspace_id))
    members = Membership.objects.select_related("user", "workspace")
    return get_object_or_404(members, pk=member_id, workspace_id=workspace_id)


@require_http_methods(["POST"])
@login_required
def workspace_member_role(request: HtmxHttpRequest, workspace_id: int, member_id: int) -> HttpResponse:
    member = _member(request, workspace_id, member_id)
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a role: owner, contributor or reader.")
    else:
        role = form.cleaned_data["role"]
        try:
            if actions.do_change_member_role(member, role, acting_user=request.user):
                messages.success(request, f"{member.user.get_username()} is now {Membership.Role(role).label}.")
        except actions.MembershipError as exc:
            messages.error(request, str(exc))
    return redirect("deployments:workspace-members", workspace_id=workspace_id)


@require_http_methods(["POST"])
@login_required
def workspace_member_remove(request: HtmxHttpRequest, workspace_id: int, member_id: int) -> HttpResponse:
    member = _member(request, workspace_id, member_id)
    try:
        actions.do_remove_member(member, acting_user=request.user)
    except actions.MembershipError as exc:
        messages.error(request, str(exc))
        return redirect("deployments:workspace-members", workspace_id=workspace_id)
    messages.success(request, f"Removed {member.user.get_username()} from {member.workspace.name}.")
    if member.user_id == user_id(request):
        return redirect("deployments:home")  # they left: the workspace is no longer theirs to see
    return redirect("deployments:workspace-members", workspace_id=workspace_id)
