"""Autoscaling of a Kubernetes service (Azure ML's autoscale_*): set on the create and edit forms, the API and the
SDK, audited, applied as a HorizontalPodAutoscaler of the service's Deployment, shown on its page with what the
autoscaler says; refused where it cannot apply."""

from __future__ import annotations

import json
import re
from html import unescape
from typing import Any

import kmock
import pytest
from django.test import Client
from django.urls import reverse
from kubernetes import client as k8s

from deployments import actions, drivers
from deployments.compute import PermanentError
from deployments.models import ApiToken, AuditEvent, ComputeTarget, Service, Workspace
from tests.conftest import on_cluster
from tests.factories import EXAMPLE_SCRIPT, ModelFactory, ServiceFactory, edit_form, local_service

pytestmark = pytest.mark.django_db

HPAS = "autoscaling/v2/horizontalpodautoscalers"


@pytest.fixture
def service(workspace: Workspace, cluster: ComputeTarget) -> Service:
    return ServiceFactory(
        workspace=workspace, name="churn", compute_target=cluster, image="r.example/churn:1", cpu_cores=0.5
    )


def _text(html: str) -> str:
    inline = re.sub(r"</?(code|strong|span|small)\b[^>]*>", "", html)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", inline)).split())


def _replicas(kube: Any, name: str = "churn") -> int:
    return int(kube.get_object("apps/v1/deployments", "ml", name)["spec"]["replicas"])


def _scale_to(kube: Any, replicas: int, name: str = "churn") -> None:
    """What the cluster's autoscaler does: it sets the Deployment's replicas."""
    k8s.AppsV1Api(kube.api_client()).patch_namespaced_deployment(name, "ml", {"spec": {"replicas": replicas}})


def test_a_new_service_deployed_to_autoscale_gets_an_autoscaler_of_its_deployment(
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
            "cpu_cores": "0.5",
            "autoscale_enabled": "on",
            "autoscale_min_replicas": "2",
            "autoscale_max_replicas": "6",
            "autoscale_target_utilization": "60",
        },
    )

    assert response.status_code == 302
    service = Service.objects.get(name="fraud")
    created = AuditEvent.objects.get(action=AuditEvent.Action.SERVICE_CREATED)
    assert created.changes["autoscale_enabled"] == [None, True]
    assert created.changes["autoscale_max_replicas"] == [None, 6]
    drivers.driver_for(service).apply(actions.desired_spec(service, 1))
    hpa = kube.get_object(HPAS, "ml", "fraud")
    assert hpa["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud"},
        "minReplicas": 2,
        "maxReplicas": 6,
        "metrics": [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
            }
        ],
    }
    assert _replicas(kube, "fraud") == 2  # it starts at the fewest
    page = _text(client.get(reverse("deployments:service-detail", args=[service.pk])).content.decode())
    assert "Replicas 2 to 6, autoscaled at 60% of the requested CPU" in page


def test_an_edit_turns_it_on_the_autoscaler_keeps_the_count_and_turning_it_off_removes_it(
    client: Client, alice: Any, service: Service, kube: Any
) -> None:
    on_cluster(service)
    driver = drivers.driver_for(service)
    edit_url = reverse("deployments:service-edit", args=[service.pk])
    client.force_login(alice)

    response = client.post(
        edit_url, edit_form(service, autoscale_enabled="on", autoscale_min_replicas=2, autoscale_max_replicas=4)
    )

    assert response.status_code == 302
    event = AuditEvent.objects.get(action=AuditEvent.Action.SERVICE_SETTINGS_CHANGED)
    assert event.changes == {
        "autoscale_enabled": [False, True],
        "autoscale_min_replicas": [1, 2],
        "autoscale_max_replicas": [10, 4],
    }
    service.refresh_from_db()
    driver.apply(actions.desired_spec(service, 2))
    assert kube.get_object(HPAS, "ml", "churn")["spec"]["maxReplicas"] == 4
    assert _replicas(kube) == 2  # the one replica it had, brought up to the fewest for the new autoscaler
    assert _pods_made_by(kube) == "1"  # a change of scaling alone restarts no pod

    _scale_to(kube, 4)  # the cluster's autoscaler at work; an edit of something else leaves its count alone
    assert client.post(edit_url, edit_form(service, memory_gb="1")).status_code == 302
    service.refresh_from_db()
    driver.apply(actions.desired_spec(service, 3))
    assert _replicas(kube) == 4
    assert _pods_made_by(kube) == "3"  # new pods for the new memory

    assert client.post(edit_url, edit_form(service, autoscale_max_replicas=3)).status_code == 302
    service.refresh_from_db()
    driver.apply(actions.desired_spec(service, 4))
    assert kube.get_object(HPAS, "ml", "churn")["spec"]["maxReplicas"] == 3
    assert _replicas(kube) == 4  # the autoscaler's to bring down, at its next round: no write races its own
    assert _pods_made_by(kube) == "3"

    assert client.post(edit_url, edit_form(service, autoscale_enabled=False, replicas=3)).status_code == 302
    service.refresh_from_db()
    assert (service.autoscale_enabled, service.replicas) == (False, 3)
    driver.apply(actions.desired_spec(service, 5))
    assert kube.get_object(HPAS, "ml", "churn") is None
    assert _replicas(kube) == 3  # the fixed count again
    assert _pods_made_by(kube) == "3"


def test_a_change_of_the_replicas_alone_restarts_no_pod_unless_someone_changed_the_pods_by_hand(
    service: Service, kube: Any
) -> None:
    driver = drivers.driver_for(service)
    driver.apply(actions.desired_spec(service, 1))

    service.replicas = 3
    driver.apply(actions.desired_spec(service, 2))
    assert (_replicas(kube), _pods_made_by(kube)) == (3, "1")

    # `kubectl set image`: the next update puts the service's own image back, with new pods.
    apps = k8s.AppsV1Api(kube.api_client())
    apps.patch_namespaced_deployment(
        "churn", "ml", {"spec": {"template": {"spec": {"containers": [{"name": "scoring", "image": "r.example/x:9"}]}}}}
    )
    service.replicas = 2
    driver.apply(actions.desired_spec(service, 3))
    deployment = kube.get_object("apps/v1/deployments", "ml", "churn")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "r.example/churn:1"
    assert (_replicas(kube), _pods_made_by(kube)) == (2, "3")


def _pods_made_by(kube: Any) -> str:
    """The update whose pod template the Deployment runs: a new one means new pods."""
    template = kube.get_object("apps/v1/deployments", "ml", "churn")["spec"]["template"]
    return str(template["metadata"]["annotations"]["tributary.dev/update-id"])


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"cpu_cores": ""}, "cpu_cores", "Autoscaling compares the pods' CPU use with what each requests"),
        ({"autoscale_min_replicas": 5, "autoscale_max_replicas": 3}, "autoscale_max_replicas", "cannot be fewer"),
        ({"autoscale_target_utilization": 0}, "autoscale_target_utilization", "greater than or equal to 1"),
        ({"autoscale_target_utilization": 101}, "autoscale_target_utilization", "less than or equal to 100"),
        ({"autoscale_max_replicas": 51}, "autoscale_max_replicas", "less than or equal to 50"),
        ({"replicas": 3}, "replicas", "While it autoscales, the autoscaler sets the replicas"),
        (
            {"cpu_cores_limit": "0.5", "autoscale_target_utilization": 91},
            "autoscale_target_utilization",
            "Kubernetes adds a pod only once use is 10% above the target: set a target under 91%",
        ),
    ],
)
def test_bad_autoscaling_is_a_form_error_and_changes_nothing(
    client: Client, alice: Any, service: Service, changes: dict[str, Any], field: str, message: str
) -> None:
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-edit", args=[service.pk]),
        edit_form(service, autoscale_enabled="on", **changes),
    )

    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors[field])
    service.refresh_from_db()
    assert (service.autoscale_enabled, service.version) == (False, 1)
    assert not AuditEvent.objects.exists()


def test_the_local_target_refuses_to_autoscale(client: Client, alice: Any, workspace: Workspace) -> None:
    service = local_service(workspace, EXAMPLE_SCRIPT)
    client.force_login(alice)

    response = client.post(
        reverse("deployments:service-edit", args=[service.pk]), edit_form(service, autoscale_enabled="on")
    )

    assert response.status_code == 200
    assert response.context["form"].errors["autoscale_enabled"] == [
        "The local compute target runs a fixed number of processes."
    ]
    assert Service.objects.get(pk=service.pk).autoscale_enabled is False


def test_deleting_the_service_deletes_its_autoscaler_and_leaves_one_that_is_not_its_own(
    service: Service, kube: Any
) -> None:
    service.autoscale_enabled = True
    service.save()
    driver = drivers.driver_for(service)
    driver.apply(actions.desired_spec(service, 1))
    assert kube.get_object(HPAS, "ml", "churn") is not None

    driver.remove(actions.desired_spec(service, 2))

    assert kube.get_object(HPAS, "ml", "churn") is None
    assert kube.get_object("apps/v1/deployments", "ml", "churn") is None

    # Someone else's autoscaler of the same name is neither taken over nor deleted.
    k8s.AutoscalingV2Api(kube.api_client()).create_namespaced_horizontal_pod_autoscaler(
        "ml",
        {
            "metadata": {"name": "churn"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"}, "maxReplicas": 3},
        },
    )
    with pytest.raises(PermanentError, match="already has a HorizontalPodAutoscaler named churn that is not this"):
        driver.apply(actions.desired_spec(service, 3))
    driver.remove(actions.desired_spec(service, 4))
    assert kube.get_object(HPAS, "ml", "churn")["spec"]["maxReplicas"] == 3


def test_without_permission_on_autoscalers_only_an_autoscaled_service_fails_and_leaves_its_deployment_as_it_was(
    service: Service, kube: Any
) -> None:
    driver = drivers.driver_for(service)
    kube.emulator[kmock.resource(HPAS)] << 403  # kmock's DSL: RBAC's answer to every request

    driver.apply(actions.desired_spec(service, 1))  # it never made one: it needs no such permission
    assert _pods_made_by(kube) == "1"

    service.autoscale_enabled = True
    service.memory_gb = 2
    service.save()
    with pytest.raises(PermanentError) as failure:
        driver.apply(actions.desired_spec(service, 2))

    assert str(failure.value).startswith("Could not apply the HorizontalPodAutoscaler: HTTP 403")
    assert "needs the kubeconfig's user to have horizontalpodautoscalers get, create, patch and delete" in str(
        failure.value
    )
    assert _pods_made_by(kube) == "1"  # the autoscaler is asked first: nothing else of the update was applied
    annotations = kube.get_object("apps/v1/deployments", "ml", "churn")["metadata"]["annotations"]
    assert annotations["tributary.dev/update-id"] == "1"


def test_a_service_that_autoscaled_does_not_take_a_refusal_to_remove_its_autoscaler_for_an_answer(
    service: Service, kube: Any
) -> None:
    service.autoscale_enabled = True
    service.save()
    driver = drivers.driver_for(service)
    driver.apply(actions.desired_spec(service, 1))
    kube.emulator[kmock.resource(HPAS)] << 403  # the kubeconfig's user lost the permission since

    service.autoscale_enabled = False
    service.save()
    with pytest.raises(PermanentError, match="Could not remove the HorizontalPodAutoscaler: HTTP 403"):
        driver.apply(actions.desired_spec(service, 2))  # else its autoscaler would go on scaling the fixed count
    with pytest.raises(PermanentError, match="Could not remove the HorizontalPodAutoscaler: HTTP 403"):
        driver.remove(actions.desired_spec(service, 3))
    assert kube.get_object("apps/v1/deployments", "ml", "churn") is not None


def test_a_cluster_without_autoscaling_v2_is_named_as_the_reason(service: Service, kube: Any) -> None:
    service.autoscale_enabled = True
    service.save()
    kube.emulator[kmock.action.CREATE, kmock.resource(HPAS)] << 404

    with pytest.raises(PermanentError, match=r"needs the cluster's autoscaling/v2 API, Kubernetes 1\.23 or later"):
        drivers.driver_for(service).apply(actions.desired_spec(service, 1))
    assert kube.get_object("apps/v1/deployments", "ml", "churn") is None


def test_the_service_page_says_what_the_autoscaler_sees_and_why_it_cannot_scale(
    client: Client, alice: Any, service: Service, kube: Any
) -> None:
    service.autoscale_enabled = True
    service.autoscale_max_replicas = 5
    service.save()
    client.force_login(alice)
    runtime_url = reverse("deployments:service-runtime", args=[service.pk])
    htmx = {"HX-Request": "true"}

    page = _text(client.get(runtime_url, headers=htmx).content.decode())
    assert "Autoscaler (1 to 5 replicas): The cluster has no autoscaler for this service" in page

    on_cluster(service)
    page = _text(client.get(runtime_url, headers=htmx).content.decode())
    assert "Autoscaler (1 to 5 replicas): The autoscaler has not counted the pods yet." in page

    k8s.AutoscalingV2Api(kube.api_client()).patch_namespaced_horizontal_pod_autoscaler_status(
        "churn",
        "ml",
        {
            "status": {
                "currentReplicas": 2,
                "desiredReplicas": 3,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 91}}}
                ],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "SucceededRescale"}],
            }
        },
    )
    page = _text(client.get(runtime_url, headers=htmx).content.decode())
    assert (
        "Autoscaler (1 to 5 replicas): 2 now, going to 3; CPU use 91% of what the pods request, for a target of 70%."
        in page
    )

    k8s.AutoscalingV2Api(kube.api_client()).patch_namespaced_horizontal_pod_autoscaler_status(
        "churn",
        "ml",
        {
            "status": {
                "currentMetrics": None,
                "conditions": [
                    {
                        "type": "ScalingActive",
                        "status": "False",
                        "reason": "FailedGetResourceMetric",
                        "message": "the HPA was unable to compute the replica count: <no metrics returned>",
                    },
                    {
                        "type": "ScalingLimited",
                        "status": "True",
                        "reason": "TooManyReplicas",
                        "message": "the desired replica count is more than the maximum replica count",
                    },
                ],
            }
        },
    )
    kube.emulator[kmock.resource("", "v1", "pods")] << 403  # the pods cannot be listed: the autoscaler still shows
    html = client.get(runtime_url, headers=htmx).content.decode()
    assert (
        "FailedGetResourceMetric: the HPA was unable to compute the replica count: &lt;no metrics returned&gt;" in html
    )
    page = _text(html)
    assert "Could not list the service's pods: HTTP 403" in page
    assert "the desired replica count is more than the maximum replica count" in page


def test_the_api_sets_and_shows_autoscaling_and_refuses_what_is_not_a_whole_number(
    client: Client, alice: Any, workspace: Workspace, cluster: ComputeTarget, service: Service
) -> None:
    _, key = ApiToken.issue(alice, "ci")
    auth = {"Authorization": f"Bearer {key}"}
    url = f"/api/v1/workspaces/{workspace.pk}/services/churn/"

    answer = client.patch(
        url, json.dumps({"autoscale_enabled": True, "autoscale_max_replicas": 4}), "application/json", headers=auth
    )

    assert answer.status_code == 202, answer.content
    body = answer.json()
    assert (body["autoscale_enabled"], body["autoscale_min_replicas"], body["autoscale_max_replicas"]) == (True, 1, 4)
    assert body["autoscale_target_utilization"] == 70
    for bad in ("4", 2.5, True, None):
        refused = client.patch(url, json.dumps({"autoscale_max_replicas": bad}), "application/json", headers=auth)
        assert refused.status_code == 400
        assert refused.json()["error"] == "autoscale_max_replicas must be a whole number."
    refused = client.patch(url, json.dumps({"autoscale_enabled": "yes"}), "application/json", headers=auth)
    assert refused.json()["error"] == "autoscale_enabled must be true or false."
    off = client.patch(url, json.dumps({"autoscale_enabled": False}), "application/json", headers=auth)
    assert off.status_code == 400
    assert off.json()["error"] == "replicas: give the number of replicas to run once it no longer autoscales."
    without_cpu = client.patch(url, json.dumps({"cpu_cores": None}), "application/json", headers=auth)
    assert without_cpu.status_code == 400
    assert without_cpu.json()["error"].startswith("cpu_cores: Autoscaling compares the pods' CPU use")
    assert Service.objects.get(pk=service.pk).version == 2
