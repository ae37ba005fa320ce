"""The liveness probe of a Kubernetes service's pods (Azure ML's period_seconds, initial_delay_seconds,
timeout_seconds and failure_threshold): set on the forms and through the API, audited, applied to the Deployment;
refused on this machine, whose processes have no probes."""

from __future__ import annotations

import json
import re
from html import unescape
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from deployments import actions, drivers
from deployments.compute import PermanentError
from deployments.models import ApiToken, AuditEvent, ComputeTarget, Service, Workspace
from tests.factories import EXAMPLE_SCRIPT, ServiceFactory, edit_form, local_service

pytestmark = pytest.mark.django_db

DEFAULT_PROBE = {"httpGet": {"path": "/", "port": 5002}, "periodSeconds": 10}


@pytest.fixture
def service(workspace: Workspace, cluster: ComputeTarget) -> Service:
    return ServiceFactory(workspace=workspace, name="churn", compute_target=cluster, image="r.example/churn:1")


def _probe(kube: Any) -> dict[str, Any]:
    deployment = kube.get_object("apps/v1/deployments", "ml", "churn")
    return dict(deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"])


def _text(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_a_slow_loading_model_gets_its_first_probe_later_and_the_page_says_so(
    client: Client, alice: Any, service: Service, kube: Any
) -> None:
    driver = drivers.driver_for(service)
    driver.apply(actions.desired_spec(service, 1))
    assert _probe(kube) == DEFAULT_PROBE
    client.force_login(alice)
    page = _text(client.get(reverse("deployments:service-detail", args=[service.pk])).content.decode())
    assert "Liveness probe every 10 s from the start, 1 s to answer, restarted after 3 failures in a row" in page

    response = client.post(
        reverse("deployments:service-edit", args=[service.pk]),
        edit_form(service, liveness_initial_delay_seconds=310, liveness_timeout_seconds=2),
    )

    assert response.status_code == 302
    event = AuditEvent.objects.get(action=AuditEvent.Action.SERVICE_SETTINGS_CHANGED)
    assert event.changes == {"liveness_initial_delay_seconds": [None, 310], "liveness_timeout_seconds": [None, 2]}
    service.refresh_from_db()
    driver.apply(actions.desired_spec(service, 2))
    assert _probe(kube) == {**DEFAULT_PROBE, "initialDelaySeconds": 310, "timeoutSeconds": 2}
    page = _text(client.get(reverse("deployments:service-detail", args=[service.pk])).content.decode())
    assert "every 10 s from 310 s after the start, 2 s to answer, restarted after 3 failures in a row" in page

    # Emptied, they are the defaults again (the merge patch replaces the container whole).
    client.post(
        reverse("deployments:service-edit", args=[service.pk]),
        edit_form(service, liveness_initial_delay_seconds="", liveness_timeout_seconds=""),
    )
    service.refresh_from_db()
    driver.apply(actions.desired_spec(service, 3))
    assert _probe(kube) == DEFAULT_PROBE


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"liveness_period_seconds": 0}, "liveness_period_seconds", "greater than or equal to 1"),
        ({"liveness_initial_delay_seconds": -1}, "liveness_initial_delay_seconds", "greater than or equal to 0"),
        ({"liveness_failure_threshold": 101}, "liveness_failure_threshold", "less than or equal to 100"),
        ({"liveness_timeout_seconds": "soon"}, "liveness_timeout_seconds", "Enter a whole number"),
    ],
)
def test_a_probe_that_cannot_be_is_a_form_error_and_changes_nothing(
    client: Client, alice: Any, service: Service, changes: dict[str, Any], field: str, message: str
) -> None:
    client.force_login(alice)

    response = client.post(reverse("deployments:service-edit", args=[service.pk]), edit_form(service, **changes))

    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors[field])
    assert Service.objects.get(pk=service.pk).version == 1


def test_this_machine_has_no_probes_to_set(client: Client, alice: Any, workspace: Workspace) -> None:
    service = local_service(workspace, EXAMPLE_SCRIPT)
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-edit", args=[service.pk]), edit_form(service, liveness_period_seconds=30)
    )

    assert response.status_code == 200
    assert response.context["form"].errors["liveness_period_seconds"] == [
        "The local compute target watches its processes itself: it has no probes."
    ]
    page = client.get(reverse("deployments:service-detail", args=[service.pk])).content.decode()
    assert "Liveness probe" not in page
    assert "Resources" not in page  # neither has this machine's process


def test_the_local_driver_refuses_a_probe_too(workspace: Workspace) -> None:
    service = local_service(workspace, EXAMPLE_SCRIPT, liveness_failure_threshold=1)

    with pytest.raises(PermanentError, match="the local target watches its processes itself: it has no liveness probe"):
        drivers.driver_for(service).apply(actions.desired_spec(service, 1))


def test_the_api_sets_them_and_null_is_the_default(
    client: Client, alice: Any, workspace: Workspace, service: Service
) -> None:
    _, key = ApiToken.issue(alice, "ci")
    auth = {"Authorization": f"Bearer {key}"}
    url = f"/api/v1/workspaces/{workspace.pk}/services/churn/"

    answer = client.patch(url, json.dumps({"liveness_failure_threshold": 5}), "application/json", headers=auth)

    assert answer.status_code == 202, answer.content
    assert answer.json()["liveness_failure_threshold"] == 5
    assert answer.json()["liveness_period_seconds"] is None
    for bad in ("2", 2.0, True):
        refused = client.patch(url, json.dumps({"liveness_timeout_seconds": bad}), "application/json", headers=auth)
        assert refused.status_code == 400
        assert refused.json()["error"] == "liveness_timeout_seconds must be a whole number, or null for the default."
    back = client.patch(url, json.dumps({"liveness_failure_threshold": None}), "application/json", headers=auth)
    assert back.status_code == 202
    assert Service.objects.get(pk=service.pk).liveness_failure_threshold is None
