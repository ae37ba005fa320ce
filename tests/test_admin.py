from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from deployments.models import AuditEvent, Membership, ServiceUpdate, Workspace
from tests.factories import ServiceFactory, UserFactory


@pytest.fixture
def admin_client_(client: Client, admin_user: Any) -> Client:
    client.force_login(admin_user)
    return client


def test_audit_events_are_read_only_even_for_superusers(
    admin_client_: Client, workspace: Workspace, admin_user: Any
) -> None:
    event = AuditEvent.objects.create(
        workspace=workspace,
        actor_name="alice",
        action=AuditEvent.Action.SERVICE_SETTINGS_CHANGED,
        target_type="service",
        target_id=1,
        target_repr="churn",
    )

    assert admin_client_.get(reverse("admin:deployments_auditevent_changelist")).status_code == 200
    assert admin_client_.get(reverse("admin:deployments_auditevent_add")).status_code == 403
    assert (
        admin_client_.post(reverse("admin:deployments_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code
        == 403
    )
    admin_client_.post(reverse("admin:deployments_auditevent_change", args=[event.pk]), {"actor_name": "mallory"})
    event.refresh_from_db()
    assert event.actor_name == "alice"


def test_service_updates_are_read_only_even_for_superusers(admin_client_: Client, workspace: Workspace) -> None:
    update = ServiceUpdate.objects.create(service=ServiceFactory(workspace=workspace), desired_spec={})

    assert admin_client_.get(reverse("admin:deployments_serviceupdate_changelist")).status_code == 200
    assert admin_client_.get(reverse("admin:deployments_serviceupdate_add")).status_code == 403
    assert (
        admin_client_.post(
            reverse("admin:deployments_serviceupdate_delete", args=[update.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    assert ServiceUpdate.objects.filter(pk=update.pk).exists()


def _workspace_form(membership_forms: list[dict[str, Any]], initial: int) -> dict[str, Any]:
    data: dict[str, Any] = {
        "subscription_id": "sub",
        "resource_group": "rg",
        "name": "fresh",
        "storage_secret": "tributary-storage",
        "memberships-TOTAL_FORMS": len(membership_forms),
        "memberships-INITIAL_FORMS": initial,
        "memberships-MIN_NUM_FORMS": 0,
        "memberships-MAX_NUM_FORMS": 1000,
    }
    for i, fields in enumerate(membership_forms):
        data.update({f"memberships-{i}-{key}": value for key, value in fields.items()})
    return data


def test_members_seated_changed_and_removed_in_the_admin_are_audited(admin_client_: Client, admin_user: Any) -> None:
    dave = UserFactory(username="dave")

    response = admin_client_.post(
        reverse("admin:deployments_workspace_add"), _workspace_form([{"user": dave.pk, "role": "owner"}], 0)
    )
    assert response.status_code == 302, response.content[:2000]
    workspace = Workspace.objects.get(name="fresh")
    membership = Membership.objects.get(workspace=workspace)
    change_url = reverse("admin:deployments_workspace_change", args=[workspace.pk])
    admin_client_.post(change_url, _workspace_form([{"id": membership.pk, "user": dave.pk, "role": "reader"}], 1))
    admin_client_.post(
        change_url, _workspace_form([{"id": membership.pk, "user": dave.pk, "role": "reader", "DELETE": "on"}], 1)
    )

    events = AuditEvent.objects.filter(workspace=workspace).order_by("pk")
    assert [(e.action, e.target_repr, e.changes, e.actor_name, e.reason) for e in events] == [
        ("member.added", "dave", {"role": [None, "owner"]}, admin_user.username, "in the Django admin"),
        ("member.role_changed", "dave", {"role": ["owner", "reader"]}, admin_user.username, "in the Django admin"),
        ("member.removed", "dave", {"role": ["reader", None]}, admin_user.username, "in the Django admin"),
    ]
    assert not Membership.objects.filter(workspace=workspace).exists()
