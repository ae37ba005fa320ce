from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from deployments.models import AuditEvent, Service, ServiceUpdate, Workspace
from tests.factories import ServiceFactory


@pytest.fixture
def service(workspace: Workspace) -> Service:
    return ServiceFactory(workspace=workspace, name="churn", scoring_url="http://127.0.0.1:9001/score")


def test_it_shows_settings_state_and_scoring_url(client: Client, bob: Any, service: Service) -> None:
    client.force_login(bob)

    response = client.get(reverse("deployments:service-detail", args=[service.pk]))

    content = response.content.decode()
    assert "<h1>churn</h1>" in content
    assert "http://127.0.0.1:9001/score" in content
    assert 'data-testid="service-state">Healthy<' in content
    assert ">Edit</a>" not in content  # bob only reads


def test_it_shows_edit_to_writers(client: Client, alice: Any, service: Service) -> None:
    client.force_login(alice)

    response = client.get(reverse("deployments:service-detail", args=[service.pk]))

    assert b">Edit</a>" in response.content


def test_it_polls_while_an_update_is_unfinished(client: Client, alice: Any, service: Service) -> None:
    ServiceUpdate.objects.create(service=service, desired_spec={}, status=ServiceUpdate.Status.RUNNING)
    client.force_login(alice)

    page = client.get(reverse("deployments:service-detail", args=[service.pk]))
    region = client.get(reverse("deployments:service-status", args=[service.pk]), headers={"HX-Request": "true"})

    status_url = reverse("deployments:service-status", args=[service.pk])
    assert f'hx-get="{status_url}?following=1" hx-trigger="every 1s"'.encode() in page.content
    assert region.status_code == 200
    assert b"<html" not in region.content
    assert b"Running" in region.content


def test_it_reloads_the_page_once_the_update_it_followed_has_ended(
    client: Client, alice: Any, service: Service
) -> None:
    ServiceUpdate.objects.create(
        service=service,
        desired_spec={},
        status=ServiceUpdate.Status.FAILED,
        error="Image pull failed",
        finished=timezone.now(),
    )
    client.force_login(alice)

    status_url = reverse("deployments:service-status", args=[service.pk])

    followed = client.get(f"{status_url}?following=1", headers={"HX-Request": "true"})
    region = client.get(status_url, headers={"HX-Request": "true"})

    # The page that followed the update loads again whole: its scoring URL and recent changes are the end's.
    assert followed.headers["HX-Refresh"] == "true"
    # Then it only looks every 10 s, for a change made elsewhere (an update, a deletion).
    assert region.status_code == 200
    assert b'hx-trigger="every 10s"' in region.content
    assert b"Image pull failed" in region.content


def test_it_shows_recent_audit_events(client: Client, alice: Any, service: Service) -> None:
    AuditEvent.objects.create(
        workspace=service.workspace,
        actor=alice,
        actor_name="alice",
        action=AuditEvent.Action.SERVICE_SETTINGS_CHANGED,
        target_type="service",
        target_id=service.pk,
        target_repr="churn",
        changes={"replicas": [1, 2]},
    )
    client.force_login(alice)

    response = client.get(reverse("deployments:service-detail", args=[service.pk]))

    assert b"replicas</span>: 1 \xe2\x86\x92 2" in response.content


def test_it_is_404_for_outsiders(client: Client, charlie: Any, service: Service) -> None:
    client.force_login(charlie)

    assert client.get(reverse("deployments:service-detail", args=[service.pk])).status_code == 404
    assert client.get(reverse("deployments:service-status", args=[service.pk])).status_code == 404


def test_it_is_404_for_unknown_services(client: Client, alice: Any) -> None:
    client.force_login(alice)

    assert client.get(reverse("deployments:service-detail", args=[999999])).status_code == 404


def test_it_says_where_diagnostics_go_or_that_nothing_receives_them(
    client: Client, bob: Any, service: Service, settings: Any
) -> None:
    settings.APPLICATIONINSIGHTS_CONNECTION_STRING = ""
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = ""
    service.enable_app_insights = True
    service.save()
    client.force_login(bob)
    url = reverse("deployments:service-detail", args=[service.pk])

    assert b'data-testid="no-telemetry-destination"' in client.get(url).content

    settings.APPLICATIONINSIGHTS_CONNECTION_STRING = "InstrumentationKey=secret-key"
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = "https://user:token-123@collector.example:4318/v1?key=token-456"
    content = client.get(url).content.decode()
    assert "to Azure Monitor (APPLICATIONINSIGHTS_CONNECTION_STRING); OTLP at https://collector.example" in content
    assert "secret-key" not in content
    assert "token-" not in content
    assert "no-telemetry-destination" not in content
