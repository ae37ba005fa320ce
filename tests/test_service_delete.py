"""Deleting a service: on its page in Chromium (a real worker stopping a real local process), by the REST API and
the SDK, the task's removal from Kubernetes and its failure, and what a service on its way out refuses."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from kubernetes import client as k8s
from playwright.sync_api import Page, expect

from deployments import actions, tasks
from deployments.compute.local import LocalDriver
from deployments.models import AuditEvent, ComputeTarget, Service, ServiceUpdate, Workspace
from tests.conftest import REPO, log_in, wait_until
from tests.factories import ComputeTargetFactory, ModelFactory, ServiceFactory
from tributary_sdk import Webservice, WebserviceException
from tributary_sdk import Workspace as SdkWorkspace


@pytest.fixture
def service(workspace: Workspace, cluster: ComputeTarget) -> Service:
    return ServiceFactory(
        workspace=workspace,
        name="churn",
        compute_target=cluster,
        image="registry.example/churn:7",
        entry_script="",
        models=[ModelFactory(workspace=workspace, name="best_model", version=4)],
    )


def _deployed(service: Service, kube: Any) -> None:
    """Make the service run on the test cluster, as its first update would."""
    tasks.apply_service_update(actions.do_redeploy_service(service, acting_user=None).pk)
    assert Service.objects.get(pk=service.pk).state == Service.State.HEALTHY


def _cluster_has(kube: Any, name: str) -> tuple[bool, bool]:
    """Whether the cluster has the Deployment and the Service of that name."""
    apps, core = k8s.AppsV1Api(kube.api_client()), k8s.CoreV1Api(kube.api_client())
    deployments = [d.metadata.name for d in apps.list_namespaced_deployment("ml").items]
    services = [s.metadata.name for s in core.list_namespaced_service("ml").items]
    return name in deployments, name in services


def _events(workspace: Workspace, service_id: int) -> list[tuple[str, str, str]]:
    rows = AuditEvent.objects.filter(workspace=workspace, target_id=service_id).order_by("created", "id")
    return [(e.action, e.actor_name, e.reason) for e in rows]


# --- the removal ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_removal_takes_the_service_off_the_cluster_then_deletes_it_and_records_both_steps(
    kube: Any, service: Service, alice: Any, settings_fast: Any
) -> None:
    _deployed(service, kube)
    assert _cluster_has(kube, "churn") == (True, True)

    update = actions.do_delete_service(service, acting_user=alice, reason="replaced by churn-v2")

    service.refresh_from_db()
    assert (service.state, update.kind, update.status) == ("Deleting", "remove", "pending")
    requested = AuditEvent.objects.get(action=AuditEvent.Action.SERVICE_DELETE_REQUESTED)
    # What was deleted stays on record: every setting it had.
    assert requested.changes["image"] == ["registry.example/churn:7", None]
    assert requested.changes["models"] == [["best_model:4"], None]

    tasks.apply_service_update(update.pk)

    assert _cluster_has(kube, "churn") == (False, False)
    assert not Service.objects.filter(pk=service.pk).exists()
    assert not ServiceUpdate.objects.filter(service_id=service.pk).exists()
    assert _events(service.workspace, service.pk)[-2:] == [
        ("service.delete_requested", "alice", "replaced by churn-v2"),
        ("service.deleted", "system", ""),
    ]


@pytest.mark.django_db
def test_a_removal_that_fails_leaves_the_service_failed_with_the_reason_and_it_can_be_deleted_again(
    kube: Any, service: Service, alice: Any, settings_fast: Any
) -> None:
    import kmock

    _deployed(service, kube)
    kube.emulator[kmock.action.DELETE, kmock.resource("apps/v1/deployments")] << 403
    update = actions.do_delete_service(service, acting_user=alice)

    tasks.apply_service_update(update.pk)

    service.refresh_from_db()
    assert service.state == Service.State.FAILED
    assert service.state_reason.startswith("Could not delete the service: ")
    assert "403" in service.state_reason
    assert ServiceUpdate.objects.get(pk=update.pk).status == ServiceUpdate.Status.FAILED
    assert _events(service.workspace, service.pk)[-1][:2] == ("service.delete_failed", "system")
    assert _cluster_has(kube, "churn") == (True, True)

    kube.reset()
    tasks.apply_service_update(actions.do_delete_service(service, acting_user=alice).pk)

    assert not Service.objects.filter(pk=service.pk).exists()
    assert _cluster_has(kube, "churn") == (False, False)


@pytest.mark.django_db
def test_the_removal_leaves_a_deployment_of_the_same_name_that_is_not_the_services(
    kube: Any, service: Service, alice: Any, settings_fast: Any
) -> None:
    # Another team's, or made by hand: no Tributary label, or another service's id.
    apps = k8s.AppsV1Api(kube.api_client())
    apps.create_namespaced_deployment(
        "ml",
        {
            "metadata": {"name": "churn", "labels": {"app": "churn"}},
            "spec": {
                "selector": {"matchLabels": {"app": "churn"}},
                "template": {
                    "metadata": {"labels": {"app": "churn"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx"}]},
                },
            },
        },
    )
    k8s.CoreV1Api(kube.api_client()).create_namespaced_service(
        "ml",
        {
            "metadata": {
                "name": "churn",
                "labels": {"app.kubernetes.io/managed-by": "tributary"},
                "annotations": {"tributary.dev/service-id": str(service.pk + 1000)},
            },
            "spec": {"ports": [{"port": 80}]},
        },
    )

    tasks.apply_service_update(actions.do_redeploy_service(service, acting_user=None).pk)

    service.refresh_from_db()
    assert service.state == Service.State.FAILED
    assert "already has a Deployment named churn that is not this service's" in service.state_reason

    tasks.apply_service_update(actions.do_delete_service(service, acting_user=alice).pk)

    assert not Service.objects.filter(pk=service.pk).exists()
    assert _cluster_has(kube, "churn") == (True, True)
    assert apps.read_namespaced_deployment("churn", "ml").metadata.labels == {"app": "churn"}


@pytest.mark.django_db
def test_a_service_being_deleted_refuses_edits_a_second_delete_and_a_restart(
    client: Client, service: Service, alice: Any
) -> None:
    actions.do_delete_service(service, acting_user=alice)
    service.refresh_from_db()

    with pytest.raises(actions.BeingDeleted, match="churn is being deleted"):
        actions.do_update_service(service, expected_version=service.version, acting_user=alice, replicas=3)
    with pytest.raises(actions.ActionError, match="already being deleted"):
        actions.do_delete_service(service, acting_user=alice)
    with pytest.raises(actions.BeingDeleted):
        actions.do_redeploy_service(service, acting_user=None)
    call_command("start_local_services", stdout=io.StringIO())

    client.force_login(alice)
    page = client.get(reverse("deployments:service-detail", args=[service.pk]))
    assert b"Delete churn" not in page.content
    assert reverse("deployments:service-edit", args=[service.pk]).encode() not in page.content
    service.refresh_from_db()
    assert (service.state, service.replicas) == (Service.State.DELETING, 1)
    assert list(service.updates.values_list("kind", flat=True)) == ["remove"]


@pytest.mark.django_db
def test_an_edit_form_opened_before_the_delete_says_the_service_is_being_deleted(
    client: Client, service: Service, alice: Any
) -> None:
    # Not "Someone else changed this service since you opened the form ... make your change again": the change can
    # never be made, whatever the user does with the form.
    opened_at = service.version
    actions.do_delete_service(service, acting_user=alice)
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-edit", args=[service.pk]),
        {"models": [m.pk for m in service.models.all()], "image": service.image, "replicas": 3, "version": opened_at},
    )

    assert response.status_code == 200
    assert b"churn is being deleted: it can no longer be changed." in response.content
    assert b"Someone else changed this service" not in response.content
    with pytest.raises(actions.BeingDeleted):
        actions.do_update_service(service, expected_version=opened_at, acting_user=alice, replicas=3)
    service.refresh_from_db()
    assert (service.state, service.replicas) == (Service.State.DELETING, 1)


# --- who may delete -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_readers_may_not_delete_and_to_outsiders_the_service_does_not_exist(
    client: Client, service: Service, bob: Any, charlie: Any
) -> None:
    url = reverse("deployments:service-delete", args=[service.pk])

    client.force_login(bob)
    assert client.post(url).status_code == 403
    assert b"Delete churn" not in client.get(reverse("deployments:service-detail", args=[service.pk])).content
    client.force_login(charlie)
    assert client.post(url).status_code == 404

    service.refresh_from_db()
    assert service.state == Service.State.HEALTHY
    assert not ServiceUpdate.objects.filter(service=service).exists()


@pytest.mark.django_db
def test_delete_is_a_post_with_a_csrf_token(service: Service, carol: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(carol)
    url = reverse("deployments:service-delete", args=[service.pk])

    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 403

    service.refresh_from_db()
    assert service.state == Service.State.HEALTHY


@pytest.mark.django_db
def test_the_page_of_a_deleted_service_leads_members_to_the_list_and_tells_others_nothing(
    client: Client, kube: Any, service: Service, alice: Any, charlie: Any, settings_fast: Any
) -> None:
    tasks.apply_service_update(actions.do_delete_service(service, acting_user=alice).pk)
    services = reverse("deployments:service-list", args=[service.workspace_id])

    client.force_login(alice)
    # A page left open follows; its live regions all notice, and the list says it once.
    for live in ("deployments:service-status", "deployments:service-runtime", "deployments:service-logs"):
        poll = client.get(reverse(live, args=[service.pk]), headers={"HX-Request": "true"})
        assert poll.headers["HX-Redirect"] == services
    listing = client.get(services)
    assert listing.content.decode().count("churn was deleted.") == 1
    assert client.get(reverse("deployments:service-detail", args=[service.pk])).url == services

    client.force_login(charlie)
    assert client.get(reverse("deployments:service-detail", args=[service.pk])).status_code == 404
    assert client.get(reverse("deployments:service-status", args=[service.pk])).status_code == 404
    assert client.get(reverse("deployments:service-runtime", args=[service.pk])).status_code == 404
    assert client.get(reverse("deployments:service-logs", args=[service.pk])).status_code == 404


# --- the page, end to end -------------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_deleting_a_local_service_on_its_page_stops_its_process_and_ends_on_the_list(
    page: Page, live_server: Any, alice: Any, workspace: Workspace, own_workers: Any, tmp_path: Path
) -> None:
    own_workers.start(VAR_DIR=str(tmp_path))
    state_dir = tmp_path / "services"
    target = ComputeTargetFactory(workspace=workspace, name="this-machine", kind=ComputeTarget.Kind.LOCAL)
    model = ModelFactory(workspace=workspace, name="sample-model", version=1, path=str(REPO / "examples/sample_model"))
    service = ServiceFactory(workspace=workspace, name="sample", compute_target=target, models=[model])
    try:
        actions.do_redeploy_service(service, acting_user=None)
        wait_until(
            lambda: Service.objects.get(pk=service.pk).state != Service.State.TRANSITIONING,
            timeout=60,
            message="the service to start",
        )
        assert Service.objects.get(pk=service.pk).state == Service.State.HEALTHY
        pid = json.loads((state_dir / f"service-{service.pk}" / "state.json").read_text())["pid"]
        assert Path(f"/proc/{pid}").exists()

        log_in(page, f"{live_server.url}{reverse('deployments:service-detail', args=[service.pk])}", "alice")
        page.get_by_label("Reason").fill("no longer needed")
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete sample").click()

        expect(page.get_by_test_id("service-state")).to_have_text("Deleting")
        # The page follows the removal (htmx polling), then goes to the list, which says what happened.
        expect(page).to_have_url(
            f"{live_server.url}{reverse('deployments:service-list', args=[workspace.pk])}", timeout=60_000
        )
        expect(page.get_by_text("sample was deleted.")).to_be_visible()
        expect(page.locator("#services")).not_to_contain_text("sample")

        assert not Path(f"/proc/{pid}").exists() or " Z " in Path(f"/proc/{pid}/stat").read_text()
        assert not (state_dir / f"service-{service.pk}").exists()
        assert _events(workspace, service.pk)[-2:] == [
            ("service.delete_requested", "alice", "no longer needed"),
            ("service.deleted", "system", ""),
        ]
    finally:
        LocalDriver(state_dir).stop_all()


@pytest.mark.browser
@pytest.mark.django_db
def test_cancelling_the_question_deletes_nothing(page: Page, live_server: Any, alice: Any, service: Service) -> None:
    log_in(page, f"{live_server.url}{reverse('deployments:service-detail', args=[service.pk])}", "alice")
    questions = []

    def dismiss(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.get_by_role("button", name="Delete churn").click()

    expect(page.get_by_test_id("service-state")).to_have_text("Healthy")
    assert questions == ["Delete churn? It stops serving requests at once."]
    service.refresh_from_db()
    assert service.state == Service.State.HEALTHY


# --- the REST API and the SDK ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_api_answers_202_deleting_then_404_once_it_is_gone(
    client: Client, kube: Any, service: Service, alice: Any, bob: Any, settings_fast: Any
) -> None:
    from deployments.models import ApiToken

    url = reverse("deployments:api-service", args=[service.workspace_id, "churn"])
    _, reader = ApiToken.issue(bob, "ci")
    _, writer = ApiToken.issue(alice, "ci")

    refused = client.delete(url, headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403
    unknown = client.delete(
        url, {"force": True}, content_type="application/json", headers={"Authorization": f"Bearer {writer}"}
    )
    assert (unknown.status_code, unknown.json()["error"]) == (400, "Unknown parameters: force")
    assert Service.objects.get(pk=service.pk).state == Service.State.HEALTHY

    accepted = client.delete(
        url, {"reason": "from CI"}, content_type="application/json", headers={"Authorization": f"Bearer {writer}"}
    )
    assert accepted.status_code == 202
    body = accepted.json()
    assert (body["state"], body["latest_update"]["status"]) == ("Deleting", "Pending")
    again = client.delete(url, headers={"Authorization": f"Bearer {writer}"})
    assert (again.status_code, again.json()["error"]) == (409, "churn is already being deleted.")
    patch = client.patch(
        url, {"replicas": 2}, content_type="application/json", headers={"Authorization": f"Bearer {writer}"}
    )
    assert (patch.status_code, patch.json()["error"]) == (409, "churn is being deleted: it can no longer be changed.")

    tasks.apply_service_update(body["latest_update"]["id"])

    gone = client.get(url, headers={"Authorization": f"Bearer {writer}"})
    assert gone.status_code == 404
    assert _events(service.workspace, service.pk)[-2][2] == "from CI"


@pytest.mark.django_db(transaction=True)
def test_the_sdk_delete_returns_once_the_service_is_gone(
    live_server: Any, alice: Any, workspace: Workspace, cluster: ComputeTarget, kube: Any, celery_worker: Any
) -> None:
    from deployments.models import ApiToken

    ServiceFactory(workspace=workspace, name="fraud", compute_target=cluster, image="registry.example/fraud:1")
    _, key = ApiToken.issue(alice, "notebook")
    ws = SdkWorkspace("sub-0001", "rg-ml", "alices-team", url=live_server.url, token=key)
    service = Webservice(ws, "fraud")
    service.update(num_replicas=2)
    service.wait_for_deployment(timeout_sec=60)
    assert _cluster_has(kube, "fraud") == (True, True)

    service.delete(timeout_sec=60)

    assert service.state == "Deleted"
    assert "fraud" not in ws.webservices
    assert _cluster_has(kube, "fraud") == (False, False)
    with pytest.raises(WebserviceException) as raised:
        Webservice(ws, "fraud")
    assert raised.value.status == 404


# --- what staff may do in the admin -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_deletes_neither_a_service_nor_a_workspace_that_has_one(
    client: Client, admin_user: Any, service: Service
) -> None:
    client.force_login(admin_user)

    assert (
        client.post(reverse("admin:deployments_service_delete", args=[service.pk]), {"post": "yes"}).status_code == 403
    )
    refused = client.post(reverse("admin:deployments_workspace_delete", args=[service.workspace_id]), {"post": "yes"})

    assert "Cannot delete workspace" in refused.content.decode()
    assert Service.objects.filter(pk=service.pk).exists()
    assert Workspace.objects.filter(pk=service.workspace_id).exists()
