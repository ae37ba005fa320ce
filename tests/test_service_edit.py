from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from deployments import actions, tasks
from deployments.models import AuditEvent, ComputeTarget, Service, ServiceUpdate, Workspace
from tests.factories import ComputeTargetFactory, ServiceFactory, edit_form


@pytest.fixture
def service(workspace: Workspace) -> Service:
    return ServiceFactory(workspace=workspace, name="churn", collect_model_data=True, enable_app_insights=False)


def test_it_shows_the_legacy_labels(client: Client, alice: Any, service: Service) -> None:
    client.force_login(alice)

    response = client.get(reverse("deployments:service-edit", args=[service.pk]))

    content = response.content.decode()
    assert "<summary>Advanced settings</summary>" in content
    assert ">Enable model data collection</label>" in content
    assert ">Enable AppInsights diagnostics</label>" in content
    assert ">Update</button>" in content
    assert 'name="collect_model_data" id="id_collect_model_data" checked' in content


def test_it_unchecking_clears_the_flag_records_the_update_and_audits(
    client: Client, alice: Any, service: Service, django_capture_on_commit_callbacks: Any, monkeypatch: Any
) -> None:
    queued: list[int] = []
    monkeypatch.setattr(tasks.apply_service_update, "delay", queued.append)
    client.force_login(alice)
    data = edit_form(service, collect_model_data=None, reason="GDPR review")
    data.pop("collect_model_data", None)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("deployments:service-edit", args=[service.pk]), data)

    assert response.status_code == 302
    assert response["Location"] == reverse("deployments:service-detail", args=[service.pk])
    service.refresh_from_db()
    assert service.collect_model_data is False
    assert service.version == 2
    assert service.state == Service.State.TRANSITIONING
    update = ServiceUpdate.objects.get(service=service)
    assert update.status == ServiceUpdate.Status.PENDING
    assert update.desired_spec["collect_model_data"] is False
    assert update.desired_spec["update_id"] == update.pk
    assert queued == [update.pk]
    event = AuditEvent.objects.get(action=AuditEvent.Action.SERVICE_SETTINGS_CHANGED)
    assert event.actor == alice
    assert event.actor_name == "alice"
    assert event.changes == {"collect_model_data": [True, False]}
    assert event.reason == "GDPR review"
    assert event.request_id is not None


def test_it_checks_app_insights(
    client: Client, alice: Any, service: Service, django_capture_on_commit_callbacks: Any
) -> None:
    client.force_login(alice)

    with django_capture_on_commit_callbacks() as callbacks:
        client.post(
            reverse("deployments:service-edit", args=[service.pk]), edit_form(service, enable_app_insights="on")
        )

    service.refresh_from_db()
    assert service.enable_app_insights is True
    assert service.collect_model_data is True
    assert len(callbacks) == 1


def test_it_lets_a_contributor_update(client: Client, carol: Any, service: Service) -> None:
    client.force_login(carol)

    response = client.post(reverse("deployments:service-edit", args=[service.pk]), edit_form(service, replicas=3))

    assert response.status_code == 302
    service.refresh_from_db()
    assert service.replicas == 3


def test_it_requires_write_access(client: Client, bob: Any, service: Service) -> None:
    client.force_login(bob)

    response = client.post(reverse("deployments:service-edit", args=[service.pk]), edit_form(service, replicas=3))

    assert response.status_code == 403
    service.refresh_from_db()
    assert service.replicas == 1
    assert not ServiceUpdate.objects.exists()
    assert not AuditEvent.objects.exists()


def test_it_hides_the_form_from_readers(client: Client, bob: Any, service: Service) -> None:
    client.force_login(bob)

    assert client.get(reverse("deployments:service-edit", args=[service.pk])).status_code == 403


def test_it_is_404_for_outsiders(client: Client, charlie: Any, service: Service) -> None:
    client.force_login(charlie)

    assert client.get(reverse("deployments:service-edit", args=[service.pk])).status_code == 404
    assert client.post(reverse("deployments:service-edit", args=[service.pk]), edit_form(service)).status_code == 404


def test_it_refuses_a_stale_edit(client: Client, alice: Any, carol: Any, service: Service) -> None:
    stale = edit_form(service, replicas=5)
    client.force_login(carol)
    client.post(reverse("deployments:service-edit", args=[service.pk]), edit_form(service, replicas=2))
    client.force_login(alice)

    response = client.post(reverse("deployments:service-edit", args=[service.pk]), stale)

    assert response.status_code == 200
    assert b"Someone else changed this service since you opened the form" in response.content
    service.refresh_from_db()
    assert service.replicas == 2
    assert ServiceUpdate.objects.count() == 1
    assert AuditEvent.objects.count() == 1
    # The form now shows the current settings and version, so the next Update starts from them.
    assert response.context["form"]["replicas"].value() == 2
    assert b'name="version" value="2"' in response.content


def test_it_says_when_nothing_changed(client: Client, alice: Any, service: Service) -> None:
    client.force_login(alice)

    response = client.post(reverse("deployments:service-edit", args=[service.pk]), edit_form(service))

    assert b"No parameters provided to update" in response.content
    service.refresh_from_db()
    assert service.version == 1
    assert not ServiceUpdate.objects.exists()


def test_it_rerenders_the_form_region_for_htmx(client: Client, alice: Any, service: Service) -> None:
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-edit", args=[service.pk]),
        edit_form(service, replicas=0),
        headers={"HX-Request": "true"},
    )

    assert response.status_code == 200
    assert b"<html" not in response.content
    assert b'id="service-form"' in response.content
    assert b"greater than or equal to 1" in response.content


def test_it_redirects_htmx_with_hx_redirect(client: Client, alice: Any, service: Service) -> None:
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-edit", args=[service.pk]),
        edit_form(service, replicas=2),
        headers={"HX-Request": "true"},
    )

    assert response["HX-Redirect"] == reverse("deployments:service-detail", args=[service.pk])


def test_it_refuses_a_compute_target_of_another_workspace(client: Client, alice: Any, service: Service) -> None:
    foreign = ComputeTargetFactory()
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-edit", args=[service.pk]), edit_form(service, compute_target=foreign.pk)
    )

    assert b"No parameters provided to update" in response.content  # the target is not the form's to change
    service.refresh_from_db()
    assert service.compute_target_id != foreign.pk


def test_a_service_stays_on_its_compute_target(client: Client, alice: Any, service: Service) -> None:
    cluster = ComputeTargetFactory(workspace=service.workspace, kind=ComputeTarget.Kind.KUBERNETES)
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-edit", args=[service.pk]),
        edit_form(service, compute_target=cluster.pk, image="r.example/churn:2"),
    )

    # Applied where it runs: moving it would have left it running, unmanaged, on its first target.
    assert response.status_code == 302
    service.refresh_from_db()
    assert service.compute_target.kind == ComputeTarget.Kind.LOCAL
    assert service.image == "r.example/churn:2"
    with pytest.raises(actions.TargetChange):
        actions.do_update_service(
            service, expected_version=service.version, acting_user=alice, compute_target=cluster, image="x"
        )


def test_it_requires_csrf(alice: Any, service: Service) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    response = client.post(reverse("deployments:service-edit", args=[service.pk]), edit_form(service, replicas=2))

    assert response.status_code == 403
    service.refresh_from_db()
    assert service.replicas == 1
