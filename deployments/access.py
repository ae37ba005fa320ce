"""Who may see and change what. Every view starts with one of these helpers."""

from __future__ import annotations

from typing import cast

from django.http import Http404, HttpRequest

from deployments.models import Membership, Service, Workspace


def user_id(request: HttpRequest) -> int:
    """The logged-in user's id (every view that asks is behind login_required or token authentication)."""
    return cast(int, request.user.pk)


def get_membership_for_user(request: HttpRequest, workspace_id: int) -> Membership:
    """The user's membership of the workspace (with the workspace).

    A workspace the user is not a member of does not exist as far as they can tell: 404, never 403, so that
    ids of other teams' workspaces leak nothing.
    """
    membership = (
        Membership.objects.select_related("workspace")
        .filter(workspace_id=workspace_id, user_id=user_id(request))
        .first()
    )
    if membership is None:
        raise Http404("No such workspace")
    return membership


def get_workspace_for_user(request: HttpRequest, workspace_id: int) -> tuple[Workspace, bool]:
    """Return the workspace and whether the user may change things in it (404 unless a member)."""
    membership = get_membership_for_user(request, workspace_id)
    return membership.workspace, membership.can_write


def get_service_for_user(request: HttpRequest, service_id: int) -> tuple[Service, bool]:
    """Return the service and whether the user may change it; 404 unless the user is a member of its workspace."""
    service = Service.objects.select_related("workspace", "compute_target").filter(pk=service_id).first()
    if service is None:
        raise Http404("No such service")
    try:
        workspace, can_write = get_workspace_for_user(request, service.workspace_id)
    except Http404:
        raise Http404("No such service") from None  # the same answer as for a service that does not exist
    service.workspace = workspace
    return service, can_write
