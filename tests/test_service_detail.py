from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Page, expect

from deployments.models import AuditEvent, Membership, Service, ServiceUpdate, Workspace
from tests.conftest import log_in
from tests.factories import ServiceFactory

# What a service's pages ask by htmx every few seconds while they are open.
LIVE_REGIONS = ("deployments:service-status", "deployments:service-runtime", "deployments:service-logs")


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


def test_it_shows_the_swagger_url_beside_a_known_scoring_url(
    client: Client, bob: Any, service: Service, workspace: Workspace
) -> None:
    starting = ServiceFactory(workspace=workspace, state=Service.State.TRANSITIONING, scoring_url="")
    client.force_login(bob)

    shown = client.get(reverse("deployments:service-detail", args=[service.pk])).content.decode()
    not_yet = client.get(reverse("deployments:service-detail", args=[starting.pk])).content.decode()

    assert '<dd data-testid="swagger-url"><code>http://127.0.0.1:9001/swagger.json</code>' in shown
    assert "swagger-url" not in not_yet


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


def test_a_page_left_open_on_a_service_the_user_cannot_see_loads_again_as_not_found_whatever_the_cause(
    client: Client, alice: Any, service: Service
) -> None:
    elsewhere = ServiceFactory(name="fraud")  # in another workspace
    deleted = ServiceFactory(name="spam")  # in another workspace, then deleted there
    AuditEvent.objects.create(
        workspace=deleted.workspace,
        actor_name="system",
        action=AuditEvent.Action.SERVICE_DELETED,
        target_type="service",
        target_id=deleted.pk,
        target_repr="spam",
    )
    deleted_id = deleted.pk
    deleted.delete()
    Membership.objects.filter(user=alice, workspace=service.workspace).delete()  # alice left (or was removed)
    client.force_login(alice)

    for service_id in (service.pk, elsewhere.pk, deleted_id, 999999):
        for live in LIVE_REGIONS:
            url = reverse(live, args=[service_id])
            poll = client.get(url, headers={"HX-Request": "true"})
            # Not a 404, which htmx would ask again for as long as the page is open: the page loads again, and
            # shows the 404 page. The same answer whatever the cause, so it tells nothing of other workspaces.
            assert (poll.status_code, poll.headers.get("HX-Refresh"), poll.content) == (200, "true", b""), url
            assert client.get(url).status_code == 404, url
        assert client.get(reverse("deployments:service-detail", args=[service_id])).status_code == 404


def test_a_page_whose_session_has_expired_goes_whole_to_the_log_in_page_and_back_to_itself_after(
    client: Client, service: Service
) -> None:
    page = reverse("deployments:service-detail", args=[service.pk])
    log_in_then_page = f"{reverse('login')}?next={page}"
    assert client.get(page).headers["Location"] == log_in_then_page
    for live in LIVE_REGIONS:
        url = reverse(live, args=[service.pk])
        poll = client.get(url, headers={"HX-Request": "true", "HX-Current-URL": f"http://testserver{page}"})
        # Not the log-in form inside the live region (htmx follows a plain redirect), asked again every 5 s.
        assert (poll.status_code, poll.headers["HX-Redirect"]) == (200, log_in_then_page), url
        assert client.get(url).status_code == 302, url  # without htmx, the plain redirect as before


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_chromium_an_open_page_stops_asking_once_its_user_is_no_longer_a_member(
    page: Page, live_server: Any, alice: Any, service: Service
) -> None:
    url = f"{live_server.url}{reverse('deployments:service-detail', args=[service.pk])}"
    log_in(page, url, "alice")
    expect(page.get_by_test_id("service-state")).to_have_text("Healthy")
    expect(page.get_by_role("heading", name="Runtime")).to_be_visible()

    Membership.objects.filter(user=alice, workspace=service.workspace).delete()

    # The next poll (the runtime's, every 5 s) reloads the page, which is now the 404 page, and asks nothing more.
    expect(page.get_by_role("heading", name="Not found")).to_be_visible(timeout=20_000)
    assert page.url == url
    expect(page.locator("[hx-get]")).to_have_count(0)


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


def test_every_page_of_a_service_leads_back_to_the_workspaces_first(
    client: Client, alice: Any, service: Service, blob_container: Any
) -> None:
    # The service, its logs and the audit log started their trail at Workspaces; Edit, Keys, Collected rows, Join
    # a request and Deploy a service started it at the workspace, one step short.
    client.force_login(alice)
    home = reverse("deployments:home")
    for name, args in (
        ("deployments:service-detail", [service.pk]),
        ("deployments:service-edit", [service.pk]),
        ("deployments:service-keys", [service.pk]),
        ("deployments:service-data-summary", [service.pk]),
        ("deployments:service-data-join", [service.pk]),
        ("deployments:service-create", [service.workspace_id]),
    ):
        page = client.get(reverse(name, args=args)).content.decode()
        trail = page.split('<nav class="crumbs" aria-label="Breadcrumb">', 1)[1].split("</nav>", 1)[0]
        assert trail.strip().startswith(f'<a href="{home}">Workspaces</a>'), name
