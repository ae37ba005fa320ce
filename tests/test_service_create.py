from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from deployments.models import AuditEvent, Model, Service, ServiceUpdate, Workspace
from tests.factories import EXAMPLE_SCRIPT, ComputeTargetFactory, ModelFactory, ServiceFactory


@pytest.fixture
def model(workspace: Workspace) -> Model:
    return ModelFactory(workspace=workspace, name="best_model", version=1)


def _form(workspace: Workspace, model: Model, **overrides: Any) -> dict[str, Any]:
    target = ComputeTargetFactory(workspace=workspace, name="local")
    data = {
        "name": "churn",
        "compute_target": target.pk,
        "models": [model.pk],
        "entry_script": str(EXAMPLE_SCRIPT),
        "replicas": 1,
    }
    data.update(overrides)
    return data


def test_it_deploys_with_both_flags_off_by_default(
    client: Client, alice: Any, workspace: Workspace, model: Model, django_capture_on_commit_callbacks: Any
) -> None:
    client.force_login(alice)
    url = reverse("deployments:service-create", args=[workspace.pk])
    form = client.get(url).content.decode()
    assert 'name="collect_model_data" id="id_collect_model_data">' in form

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(url, _form(workspace, model))

    service = Service.objects.get(name="churn")
    assert response["Location"] == reverse("deployments:service-detail", args=[service.pk])
    assert service.collect_model_data is False
    assert service.enable_app_insights is False
    assert list(service.models.all()) == [model]
    update = ServiceUpdate.objects.get(service=service)
    assert update.desired_spec["models"] == [{"name": "best_model", "version": "1", "path": model.path}]
    assert len(callbacks) == 1
    event = AuditEvent.objects.get()
    assert event.action == AuditEvent.Action.SERVICE_CREATED
    assert event.changes["collect_model_data"] == [None, False]


def test_it_refuses_a_duplicate_name(client: Client, alice: Any, workspace: Workspace, model: Model) -> None:
    ServiceFactory(workspace=workspace, name="churn")
    client.force_login(alice)

    response = client.post(reverse("deployments:service-create", args=[workspace.pk]), _form(workspace, model))

    assert b"A service with this name already exists" in response.content
    assert Service.objects.count() == 1


@pytest.mark.parametrize("name", ["Churn", "-x", "a" * 33, "a_b", "../etc"])
def test_it_refuses_names_that_are_not_dns_labels(
    client: Client, alice: Any, workspace: Workspace, model: Model, name: str
) -> None:
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-create", args=[workspace.pk]), _form(workspace, model, name=name)
    )

    assert response.status_code == 200
    assert not Service.objects.exists()


def test_it_requires_write_access(client: Client, bob: Any, workspace: Workspace, model: Model) -> None:
    client.force_login(bob)

    response = client.post(reverse("deployments:service-create", args=[workspace.pk]), _form(workspace, model))

    assert response.status_code == 403
    assert not Service.objects.exists()


def test_it_is_404_for_outsiders(client: Client, charlie: Any, workspace: Workspace, model: Model) -> None:
    client.force_login(charlie)

    response = client.post(reverse("deployments:service-create", args=[workspace.pk]), _form(workspace, model))

    assert response.status_code == 404
    assert not Service.objects.exists()


@pytest.mark.parametrize("script", ["/etc/passwd", "/tmp/../etc/passwd", "examples/../manage.py"])
def test_it_runs_only_scripts_from_the_allowed_folders(
    client: Client, alice: Any, workspace: Workspace, model: Model, script: str
) -> None:
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-create", args=[workspace.pk]), _form(workspace, model, entry_script=script)
    )

    assert b"This machine runs only scripts inside" in response.content
    assert not Service.objects.exists()


def test_a_second_submit_that_passed_the_name_check_too_is_refused_not_a_500(
    client: Client, alice: Any, workspace: Workspace, model: Model, monkeypatch: Any
) -> None:
    # Two submits of one form (a double click) both pass the form's name check before either is saved.
    from deployments.forms import ServiceCreateForm

    monkeypatch.setattr(ServiceCreateForm, "clean_name", lambda form: form.cleaned_data["name"])
    client.force_login(alice)
    url = reverse("deployments:service-create", args=[workspace.pk])
    data = _form(workspace, model)

    first = client.post(url, data)
    second = client.post(url, data)

    assert first.status_code == 302
    assert second.status_code == 200
    assert b"A service named churn already exists in this workspace." in second.content
    assert Service.objects.count() == 1
    assert AuditEvent.objects.count() == ServiceUpdate.objects.count() == 1


def test_a_script_path_the_system_cannot_read_is_a_form_error(
    client: Client, alice: Any, workspace: Workspace, model: Model
) -> None:
    client.force_login(alice)
    too_long = str(EXAMPLE_SCRIPT.parent / ("a" * 300) / "score.py")

    response = client.post(
        reverse("deployments:service-create", args=[workspace.pk]), _form(workspace, model, entry_script=too_long)
    )

    assert response.status_code == 200
    assert b"This is not a path to a file this machine can read." in response.content
    assert not Service.objects.exists()
