from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET
from django_htmx.middleware import HtmxDetails

from deployments import health as health_checks
from deployments.access import get_workspace_for_user
from deployments.models import Membership


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


@require_GET
@login_required
def home(request: HtmxHttpRequest) -> HttpResponse:
    memberships = Membership.objects.filter(user_id=request.user.pk).select_related("workspace")
    memberships = memberships.order_by("workspace__name")
    return render(request, "deployments/home.html", {"memberships": memberships})


@require_GET
@login_required
def deployments_redirect(request: HtmxHttpRequest) -> HttpResponse:
    """The top navigation's "Deployments": the first workspace's services, or the workspace list if none."""
    membership = Membership.objects.filter(user_id=request.user.pk).order_by("workspace__name").first()
    if membership is None:
        return redirect("deployments:home")
    return redirect("deployments:service-list", workspace_id=membership.workspace_id)


@require_GET
@login_required
def service_list(request: HtmxHttpRequest, workspace_id: int) -> HttpResponse:
    workspace, can_write = get_workspace_for_user(request, workspace_id)
    return render(request, "deployments/service_list.html", {"workspace": workspace, "can_write": can_write})


@require_GET
@login_required
def health(request: HtmxHttpRequest) -> HttpResponse:
    results = health_checks.run_checks()
    healthy = all(r["status"] == "ok" for r in results.values())
    return JsonResponse({"healthy": healthy, "checks": results}, status=200 if healthy else 503)
