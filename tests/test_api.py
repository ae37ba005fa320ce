from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from deployments.models import ApiToken, AuditEvent, Service, ServiceUpdate, Workspace
from tests.factories import EXAMPLE_SCRIPT, ComputeTargetFactory, ModelFactory, ServiceFactory


@pytest.fixture
def service(workspace: Workspace) -> Service:
    return ServiceFactory(workspace=workspace, name="churn", collect_model_data=True)


def _auth(user: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {ApiToken.issue(user, 'test')[1]}"}


def _patch(client: Client, service: Service, user: Any, body: Any) -> Any:
    url = reverse("deployments:api-service", args=[service.workspace_id, service.name])
    return client.patch(url, json.dumps(body), content_type="application/json", headers=_auth(user))


def test_it_requires_a_token(client: Client, alice: Any, service: Service) -> None:
    client.force_login(alice)  # a session is not enough: the API takes tokens only, so it needs no CSRF

    response = client.get(reverse("deployments:api-service", args=[service.workspace_id, "churn"]))

    assert response.status_code == 401
    assert "Bearer" in response.json()["error"]


def test_it_refuses_a_wrong_token(client: Client, service: Service) -> None:
    response = client.get(
        reverse("deployments:api-services", args=[service.workspace_id]), headers={"Authorization": "Bearer nope"}
    )

    assert response.status_code == 401


def test_it_stores_only_a_hash_of_the_token(alice: Any) -> None:
    token, key = ApiToken.issue(alice, "ci")

    assert key not in token.key_hash
    assert token.prefix == key[:12]


def test_it_gets_a_service(client: Client, bob: Any, service: Service) -> None:
    response = client.get(reverse("deployments:api-service", args=[service.workspace_id, "churn"]), headers=_auth(bob))

    body = response.json()
    assert (body["name"], body["state"], body["collect_model_data"]) == ("churn", "Healthy", True)


def test_it_updates_a_flag_with_patch(client: Client, alice: Any, service: Service) -> None:
    response = _patch(client, service, alice, {"collect_model_data": False, "reason": "from CI"})

    assert response.status_code == 202
    assert response.json()["state"] == "Transitioning"
    assert response.json()["latest_update"]["status"] == "Pending"
    service.refresh_from_db()
    assert service.collect_model_data is False
    event = AuditEvent.objects.get()
    assert (event.actor_name, event.changes, event.reason) == (
        "alice",
        {"collect_model_data": [True, False]},
        "from CI",
    )


def test_it_refuses_an_empty_update(client: Client, alice: Any, service: Service) -> None:
    response = _patch(client, service, alice, {})

    assert response.status_code == 400
    assert response.json()["error"] == "No parameters provided to update: the settings are the same as before."
    assert not ServiceUpdate.objects.exists()


def test_it_refuses_unknown_parameters(client: Client, alice: Any, service: Service) -> None:
    response = _patch(client, service, alice, {"collect_model_data": False, "cpu": 3})

    assert response.status_code == 400
    assert "Unknown parameters: cpu" in response.json()["error"]
    service.refresh_from_db()
    assert service.collect_model_data is True


def test_it_refuses_to_move_a_service_to_another_compute_target(client: Client, alice: Any, service: Service) -> None:
    other = ComputeTargetFactory(workspace=service.workspace, name="elsewhere")

    response = _patch(client, service, alice, {"compute_target": other.name, "replicas": 2})

    assert response.status_code == 400
    assert response.json()["error"].startswith("A service stays on the compute target it was deployed to")
    service.refresh_from_db()
    assert service.compute_target_id != other.pk
    assert service.replicas == 1
    assert (
        _patch(client, service, alice, {"compute_target": service.compute_target.name, "replicas": 2}).status_code
        == 202
    )


def test_it_refuses_invalid_values_with_the_field(client: Client, alice: Any, service: Service) -> None:
    response = _patch(client, service, alice, {"replicas": 0})

    assert response.status_code == 400
    assert "replicas" in response.json()["fields"]


def test_it_refuses_a_body_that_is_not_an_object(client: Client, alice: Any, service: Service) -> None:
    assert _patch(client, service, alice, [1, 2]).status_code == 400


def test_it_refuses_json_nested_too_deep_for_the_parser(client: Client, alice: Any, service: Service) -> None:
    url = reverse("deployments:api-service", args=[service.workspace_id, service.name])

    response = client.patch(url, "[" * 100_000, content_type="application/json", headers=_auth(alice))

    assert response.status_code == 400
    assert response.json()["error"] == "The body must be a JSON object."


def test_it_refuses_a_body_too_large_with_413_in_json(
    client: Client, alice: Any, service: Service, settings: Any, caplog: Any
) -> None:
    body = {"collect_model_data": False, "description": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)}

    response = _patch(client, service, alice, body)

    assert response.status_code == 413
    assert response.json() == {"error": f"The body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."}
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # a client's mistake, not the server's
    service.refresh_from_db()
    assert service.collect_model_data is True


@pytest.mark.parametrize("value", ["no", "off", "", 0, None, [False]])
def test_flags_are_json_booleans_only(client: Client, alice: Any, service: Service, value: Any) -> None:
    # A form field reads any text but "false" and "0" as on: "no" must not switch collection on.
    service.collect_model_data = False
    service.save()

    response = _patch(client, service, alice, {"collect_model_data": value, "enable_app_insights": value})

    assert response.status_code == 400
    assert response.json()["error"] == "collect_model_data must be true or false."
    service.refresh_from_db()
    assert (service.collect_model_data, service.enable_app_insights) == (False, False)
    assert not ServiceUpdate.objects.exists()


def test_an_update_of_another_workspace_is_answered_as_if_it_did_not_exist(
    client: Client, alice: Any, charlie: Any, service: Service
) -> None:
    _patch(client, service, alice, {"replicas": 2})
    update = ServiceUpdate.objects.get()

    theirs = client.get(reverse("deployments:api-update", args=[update.pk]), headers=_auth(charlie))
    missing = client.get(reverse("deployments:api-update", args=[update.pk + 1000]), headers=_auth(charlie))
    mine = client.get(reverse("deployments:api-update", args=[update.pk]), headers=_auth(alice))

    assert (theirs.status_code, missing.status_code, mine.status_code) == (404, 404, 200)
    assert theirs.json() == missing.json() == {"error": "No such update"}


def test_it_refuses_a_stale_version_with_409(client: Client, alice: Any, service: Service) -> None:
    _patch(client, service, alice, {"replicas": 2})

    response = _patch(client, service, alice, {"replicas": 3, "version": 1})

    assert response.status_code == 409
    service.refresh_from_db()
    assert service.replicas == 2


def test_readers_get_403(client: Client, bob: Any, service: Service) -> None:
    response = _patch(client, service, bob, {"collect_model_data": False})

    assert response.status_code == 403
    service.refresh_from_db()
    assert service.collect_model_data is True


def test_outsiders_get_404(client: Client, charlie: Any, service: Service) -> None:
    assert _patch(client, service, charlie, {"collect_model_data": False}).status_code == 404
    url = reverse("deployments:api-service", args=[service.workspace_id, "churn"])
    assert client.get(url, headers=_auth(charlie)).status_code == 404


def test_an_unknown_service_is_named_in_the_404(client: Client, alice: Any, service: Service) -> None:
    # The SDK shows this message as is (Webservice(ws, "nope")): it must say what was not found, in the API's words.
    url = reverse("deployments:api-service", args=[service.workspace_id, "nope"])

    response = client.get(url, headers=_auth(alice))

    assert response.status_code == 404
    assert response.json() == {"error": "No service 'nope' in this workspace."}


def test_it_deploys(client: Client, alice: Any, workspace: Workspace) -> None:
    ComputeTargetFactory(workspace=workspace, name="local")
    ModelFactory(workspace=workspace, name="best_model", version=2)
    body = {
        "name": "fraud",
        "compute_target": "local",
        "models": ["best_model:2"],
        "entry_script": str(EXAMPLE_SCRIPT),
        "collect_model_data": True,
    }

    response = client.post(
        reverse("deployments:api-services", args=[workspace.pk]),
        json.dumps(body),
        content_type="application/json",
        headers=_auth(alice),
    )

    assert response.status_code == 202, response.content
    assert response.json()["models"] == ["best_model:2"]
    service = Service.objects.get(name="fraud")
    assert (service.collect_model_data, service.enable_app_insights) == (True, False)


def test_it_lists_my_workspaces(client: Client, alice: Any, charlie: Any, workspace: Workspace) -> None:
    response = client.get(reverse("deployments:api-workspaces"), headers=_auth(alice))

    assert [w["name"] for w in response.json()["workspaces"]] == ["alices-team"]
