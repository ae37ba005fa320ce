from __future__ import annotations

from typing import Any

from django.test import Client
from django.urls import reverse

from deployments.models import Service, Workspace
from tests.factories import ModelFactory, ServiceFactory


def _url(workspace: Workspace) -> str:
    return reverse("deployments:service-list", args=[workspace.pk])


def test_it_lists_services_with_state_target_models_and_flags(client: Client, alice: Any, workspace: Workspace) -> None:
    ServiceFactory(
        workspace=workspace,
        name="churn",
        collect_model_data=True,
        models=[ModelFactory(workspace=workspace, name="xgb", version=3)],
    )
    client.force_login(alice)

    response = client.get(_url(workspace))

    content = response.content.decode()
    assert "churn" in content
    assert "xgb:3" in content
    assert 'class="state state-healthy"' in content
    assert "<td>Enabled</td>\n        <td>Disabled</td>" in content


def test_it_says_how_each_service_scales_and_whether_it_needs_a_key(
    client: Client, alice: Any, workspace: Workspace
) -> None:
    ServiceFactory(workspace=workspace, name="churn", replicas=3, auth_enabled=True)
    ServiceFactory(
        workspace=workspace, name="fraud", autoscale_enabled=True, autoscale_min_replicas=2, autoscale_max_replicas=8
    )
    client.force_login(alice)

    content = client.get(_url(workspace)).content.decode()

    rows = {row.split("</a>")[0].rsplit(">", 1)[-1]: row for row in content.split("<tr>")[2:]}
    assert "<td>3</td>\n        <td>Required</td>" in rows["churn"]
    assert '<td>2 to 8 <span class="muted">(autoscaled)</span></td>' in rows["fraud"]
    assert '<td><span class="warn">None</span></td>' in rows["fraud"]


def test_it_filters_by_name_and_state(client: Client, alice: Any, workspace: Workspace) -> None:
    ServiceFactory(workspace=workspace, name="churn-a")
    ServiceFactory(workspace=workspace, name="churn-b", state=Service.State.FAILED)
    ServiceFactory(workspace=workspace, name="fraud")
    client.force_login(alice)

    response = client.get(_url(workspace), {"q": "churn", "state": "Failed"})

    assert b"churn-b" in response.content
    assert b"churn-a" not in response.content
    assert b"fraud" not in response.content


def test_it_paginates(client: Client, alice: Any, workspace: Workspace) -> None:
    for i in range(55):
        ServiceFactory(workspace=workspace, name=f"svc-{i:03}", models=[])
    client.force_login(alice)

    first = client.get(_url(workspace))
    second = client.get(_url(workspace), {"page": 2})

    assert b"svc-049" in first.content
    assert b"svc-050" not in first.content
    assert b"svc-054" in second.content
    assert b"Page 2 of 2 (55 in all)" in second.content


def test_it_uses_a_constant_number_of_queries(
    client: Client, alice: Any, workspace: Workspace, django_assert_num_queries: Any
) -> None:
    for i in range(30):
        ServiceFactory(workspace=workspace, name=f"svc-{i:03}")
    client.force_login(alice)

    # session, user, membership, count, services, their models
    with django_assert_num_queries(6):
        client.get(_url(workspace))


def test_it_renders_only_the_table_for_htmx(client: Client, alice: Any, workspace: Workspace) -> None:
    ServiceFactory(workspace=workspace, name="churn")
    client.force_login(alice)

    response = client.get(_url(workspace), {"q": "ch"}, headers={"HX-Request": "true"})

    assert b"<html" not in response.content
    assert b'<div id="services">' in response.content
    assert b"churn" in response.content


def test_it_shows_deploy_only_to_writers(client: Client, alice: Any, bob: Any, workspace: Workspace) -> None:
    client.force_login(alice)
    assert b"Deploy a service" in client.get(_url(workspace)).content
    client.force_login(bob)
    response = client.get(_url(workspace))
    assert response.status_code == 200
    assert b"Deploy a service" not in response.content


def test_it_is_404_for_outsiders(client: Client, charlie: Any, workspace: Workspace) -> None:
    client.force_login(charlie)

    assert client.get(_url(workspace)).status_code == 404
