from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from deployments.models import AuditEvent, ServiceUpdate, Workspace
from tests.factories import ServiceFactory


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
