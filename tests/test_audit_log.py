from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from deployments.models import AuditEvent, Workspace


def _event(workspace: Workspace, actor: User | None, action: str, target: str, **kw: Any) -> AuditEvent:
    return AuditEvent.objects.create(
        workspace=workspace,
        actor=actor,
        actor_name=actor.username if actor else "system",
        action=action,
        target_type="service",
        target_id=1,
        target_repr=target,
        **kw,
    )


@pytest.fixture
def events(workspace: Workspace, alice: Any, carol: Any) -> None:
    _event(
        workspace,
        alice,
        AuditEvent.Action.SERVICE_SETTINGS_CHANGED,
        "churn",
        changes={"collect_model_data": [True, False]},
        reason="privacy",
    )
    _event(workspace, carol, AuditEvent.Action.SERVICE_SETTINGS_CHANGED, "fraud", changes={"replicas": [1, 2]})
    _event(workspace, None, AuditEvent.Action.SERVICE_UPDATE_SUCCEEDED, "churn")


def test_it_shows_who_changed_what_from_what_to_what(
    client: Client, bob: Any, workspace: Workspace, events: None
) -> None:
    client.force_login(bob)

    response = client.get(reverse("deployments:audit-log", args=[workspace.pk]))

    content = response.content.decode()
    assert "collect_model_data</span>: True → False" in content
    assert "privacy" in content
    assert "<td>system</td>" in content


@pytest.mark.parametrize(
    ("params", "shown", "hidden"),
    [
        ({"service": "churn"}, ["collect_model_data", "service.update_succeeded"], ["replicas"]),
        ({"actor": "carol"}, ["replicas"], ["collect_model_data"]),
        ({"action": "service.update_succeeded"}, ["service.update_succeeded"], ["replicas", "collect_model_data"]),
    ],
)
def test_it_filters(
    client: Client,
    alice: Any,
    workspace: Workspace,
    events: None,
    params: dict[str, str],
    shown: list[str],
    hidden: list[str],
) -> None:
    client.force_login(alice)

    response = client.get(reverse("deployments:audit-log", args=[workspace.pk]), params, headers={"HX-Request": "true"})

    content = response.content.decode()
    assert "<html" not in content
    for text in shown:
        assert text in content
    for text in hidden:
        assert text not in content


def test_it_escapes_reasons(client: Client, alice: Any, workspace: Workspace) -> None:
    _event(workspace, alice, AuditEvent.Action.SERVICE_SETTINGS_CHANGED, "churn", reason="<script>alert(1)</script>")
    client.force_login(alice)

    response = client.get(reverse("deployments:audit-log", args=[workspace.pk]))

    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in response.content
    assert b"<script>alert(1)" not in response.content


def test_it_is_404_for_outsiders(client: Client, charlie: Any, workspace: Workspace, events: None) -> None:
    client.force_login(charlie)

    assert client.get(reverse("deployments:audit-log", args=[workspace.pk])).status_code == 404


def test_a_services_full_audit_log_leaves_out_a_deleted_service_of_the_same_name(
    client: Client, alice: Any, workspace: Workspace
) -> None:
    from tests.factories import ServiceFactory

    service = ServiceFactory(workspace=workspace, name="churn")
    for target_id, action, reason in (
        (service.pk + 1, AuditEvent.Action.SERVICE_DELETED, "the old churn goes"),
        (service.pk, AuditEvent.Action.SERVICE_CREATED, "the new churn comes"),
    ):
        AuditEvent.objects.create(
            workspace=workspace,
            actor=alice,
            actor_name="alice",
            action=action,
            target_type="service",
            target_id=target_id,
            target_repr="churn",
            reason=reason,
        )
    client.force_login(alice)
    page = client.get(reverse("deployments:service-detail", args=[service.pk])).content.decode()
    link = reverse("deployments:audit-log", args=[workspace.pk]) + f"?service=churn&amp;service_id={service.pk}"
    assert f'href="{link}"' in page

    one = client.get(link.replace("&amp;", "&")).content.decode()
    every = client.get(reverse("deployments:audit-log", args=[workspace.pk]), {"service": "churn"}).content.decode()

    assert "the new churn comes" in one
    assert "the old churn goes" not in one
    assert "The changes of this churn only" in one
    assert 'href="?service=churn">Every service named churn</a>' in one
    # Filtering again from the form (it does not carry the id) shows every service of the name, and says nothing
    # of one service; so does a link whose other filters are not valid.
    refiltered = client.get(
        reverse("deployments:audit-log", args=[workspace.pk]), {"service": "churn"}, headers={"HX-Request": "true"}
    ).content.decode()
    assert "the old churn goes" in refiltered
    assert "The changes of this" not in refiltered
    invalid = client.get(link.replace("&amp;", "&") + "&action=no.such.action").content.decode()
    assert "The changes of this" not in invalid
    assert "the old churn goes" in every
    assert "the new churn comes" in every
