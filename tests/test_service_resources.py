"""CPU and memory of a Kubernetes service's pods (Azure ML's cpu_cores, memory_gb and their limits): set on the
create and edit forms and through the API, audited, applied to the Deployment; refused where they cannot apply."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from deployments import actions, drivers
from deployments.models import ApiToken, AuditEvent, ComputeTarget, Service, Workspace
from tests.conftest import on_cluster
from tests.factories import ModelFactory, ServiceFactory, edit_form

pytestmark = pytest.mark.django_db


@pytest.fixture
def service(workspace: Workspace, cluster: ComputeTarget) -> Service:
    return ServiceFactory(
        workspace=workspace, name="churn", compute_target=cluster, image="r.example/churn:1", cpu_cores=0.5
    )


def _container(kube: Any, name: str) -> dict[str, Any]:
    deployment = kube.get_object("apps/v1/deployments", "ml", name)
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_a_new_kubernetes_service_gets_the_resources_it_was_deployed_with(
    client: Client, alice: Any, workspace: Workspace, cluster: ComputeTarget, kube: Any
) -> None:
    model = ModelFactory(workspace=workspace, name="best_model", version=1)
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-create", args=[workspace.pk]),
        {
            "name": "fraud",
            "compute_target": cluster.pk,
            "models": [model.pk],
            "image": "r.example/fraud:1",
            "replicas": 1,
            "cpu_cores": "0.25",
            "memory_gb": "1.5",
            "memory_gb_limit": "2",
        },
    )

    assert response.status_code == 302
    service = Service.objects.get(name="fraud")
    assert (service.cpu_cores, service.memory_gb, service.cpu_cores_limit, service.memory_gb_limit) == (
        0.25,
        1.5,
        None,
        2.0,
    )
    created = AuditEvent.objects.get(action=AuditEvent.Action.SERVICE_CREATED)
    assert created.changes["memory_gb"] == [None, 1.5]
    drivers.driver_for(service).apply(actions.desired_spec(service, 1))
    assert _container(kube, "fraud")["resources"] == {
        "requests": {"cpu": "250m", "memory": "1500M"},
        "limits": {"memory": "2000M"},
    }
    page = client.get(reverse("deployments:service-detail", args=[service.pk])).content.decode()
    assert "requests 0.25 CPU cores, 1.5 GB; at most 2 GB" in page


def test_an_edit_changes_them_with_an_audit_row_and_emptied_they_leave_the_pods(
    client: Client, alice: Any, service: Service, kube: Any
) -> None:
    on_cluster(service)
    driver = drivers.driver_for(service)
    driver.apply(actions.desired_spec(service, 1))
    assert _container(kube, "churn")["resources"] == {"requests": {"cpu": "500m"}}
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-edit", args=[service.pk]), edit_form(service, cpu_cores="", cpu_cores_limit="1")
    )

    assert response.status_code == 302
    service.refresh_from_db()
    assert (service.cpu_cores, service.cpu_cores_limit) == (None, 1.0)
    event = AuditEvent.objects.get(action=AuditEvent.Action.SERVICE_SETTINGS_CHANGED)
    assert event.changes == {"cpu_cores": [0.5, None], "cpu_cores_limit": [None, 1.0]}
    driver.apply(actions.desired_spec(service, 2))
    assert _container(kube, "churn")["resources"] == {"limits": {"cpu": "1000m"}}

    service.refresh_from_db()
    client.post(reverse("deployments:service-edit", args=[service.pk]), edit_form(service, cpu_cores_limit=""))
    service.refresh_from_db()
    driver.apply(actions.desired_spec(service, 3))
    assert "resources" not in _container(kube, "churn")  # the merge patch replaces the container whole


def test_a_limit_below_its_request_or_resources_on_this_machine_are_refused_and_change_nothing(
    client: Client, alice: Any, service: Service, workspace: Workspace
) -> None:
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-edit", args=[service.pk]), edit_form(service, cpu_cores_limit="0.2")
    )

    assert response.status_code == 200
    assert "The most a pod may use cannot be less than what it requests." in response.content.decode()
    local = ServiceFactory(workspace=workspace, name="local-one")  # the local compute target
    response = client.post(
        reverse("deployments:service-edit", args=[local.pk]),
        {
            "compute_target": local.compute_target_id,
            "models": [m.pk for m in local.models.all()],
            "entry_script": local.entry_script,
            "replicas": 1,
            "version": local.version,
            "memory_gb": "1",
        },
    )
    assert "The local compute target runs processes without requests or limits." in response.content.decode()
    for nonsense in ("-1", "0", "lots", "1e9"):
        response = client.post(
            reverse("deployments:service-edit", args=[service.pk]), edit_form(service, memory_gb=nonsense)
        )
        assert response.status_code == 200, nonsense
    assert Service.objects.get(pk=service.pk).version == service.version
    assert Service.objects.get(pk=local.pk).version == local.version
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.SERVICE_SETTINGS_CHANGED).exists()


def _patch(client: Client, service: Service, user: Any, body: dict[str, Any]) -> Any:
    return client.patch(
        reverse("deployments:api-service", args=[service.workspace_id, service.name]),
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {ApiToken.issue(user, 'test')[1]}"},
    )


def test_the_api_sets_and_clears_them_and_refuses_what_is_not_a_number(
    client: Client, alice: Any, service: Service
) -> None:
    for body, message in (
        ({"cpu_cores": "lots"}, "cpu_cores must be a number, or null for none."),
        ({"memory_gb": True}, "memory_gb must be a number, or null for none."),
        ({"memory_gb_limit": 0.1, "memory_gb": 1}, "cannot be less than what it requests"),
    ):
        response = _patch(client, service, alice, body)
        assert response.status_code == 400, body
        assert message in response.content.decode()
    assert Service.objects.get(pk=service.pk).version == service.version

    response = _patch(client, service, alice, {"memory_gb": 2, "cpu_cores": None})

    assert response.status_code == 202
    assert (response.json()["memory_gb"], response.json()["cpu_cores"]) == (2.0, None)
    service.refresh_from_db()
    assert (service.memory_gb, service.cpu_cores) == (2.0, None)
