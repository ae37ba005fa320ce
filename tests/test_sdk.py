"""The Python SDK against a live portal, a real Celery worker and the Kubernetes API test server."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from kubernetes import client as k8s

from deployments.models import ApiToken, ComputeTarget, Service, ServiceUpdate, Workspace
from tests.conftest import wait_until
from tests.factories import EXAMPLE_SCRIPT, ModelFactory, ServiceFactory
from tests.test_scoring_runtime import SCHEMA_SCRIPT, start_runtime, write_script
from tributary_sdk import (
    AksWebservice,
    AutoScaler,
    InferenceConfig,
    LivenessProbeRequirements,
    LocalWebservice,
    Model,
    Webservice,
    WebserviceException,
)
from tributary_sdk import Workspace as SdkWorkspace

EXAMPLE = str(EXAMPLE_SCRIPT)


@pytest.fixture
def ws(live_server: Any, alice: Any, workspace: Workspace) -> SdkWorkspace:
    _, key = ApiToken.issue(alice, "notebook")
    return SdkWorkspace("sub-0001", "rg-ml", "alices-team", url=live_server.url, token=key)


def _resources(kube: Any, name: str) -> dict[str, Any]:
    deployment = kube.get_object("apps/v1/deployments", "ml", name)
    return deployment["spec"]["template"]["spec"]["containers"][0].get("resources", {})


def _env(kube: Any, name: str) -> dict[str, str]:
    deployment = k8s.AppsV1Api(kube.api_client()).read_namespaced_deployment(name, "ml")
    return {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}


@pytest.mark.django_db(transaction=True)
def test_it_deploys_then_updates_and_follows_the_rollout(
    ws: SdkWorkspace, cluster: ComputeTarget, workspace: Workspace, kube: Any, celery_worker: Any
) -> None:
    ModelFactory(workspace=workspace, name="best_model", version=1)
    # No key: the test cluster runs no pods to say that they check one (tests/test_service_keys.py has that).
    config = AksWebservice.deploy_configuration(
        collect_model_data=True, enable_app_insights=True, cpu_cores=0.5, memory_gb=1.5, auth_enabled=False
    )

    service = Model.deploy(
        ws,
        "churn",
        ["best_model:1"],
        InferenceConfig(image="registry.example/churn:1"),
        config,
        deployment_target="aks",
    )
    assert service.state == "Transitioning"
    service.wait_for_deployment(timeout_sec=60)
    assert service.state == "Healthy"
    assert _env(kube, "churn")["AML_MODEL_DC_STORAGE_ENABLED"] == "true"
    assert _resources(kube, "churn") == {"requests": {"cpu": "500m", "memory": "1500M"}}

    again = Webservice(ws, "churn")
    assert (again.cpu_cores, again.memory_gb, again.cpu_cores_limit) == (0.5, 1.5, None)
    again.update(collect_model_data=False, cpu_cores_limit=2, memory_gb_limit=4)
    again.wait_for_deployment(timeout_sec=60)

    assert (again.state, again.collect_model_data, again.enable_app_insights) == ("Healthy", False, True)
    assert _env(kube, "churn")["AML_MODEL_DC_STORAGE_ENABLED"] == "false"
    assert _resources(kube, "churn") == {
        "requests": {"cpu": "500m", "memory": "1500M"},
        "limits": {"cpu": "2000m", "memory": "4000M"},
    }


@pytest.mark.django_db(transaction=True)
def test_it_deploys_a_service_that_autoscales_then_fixes_its_replicas(
    ws: SdkWorkspace, cluster: ComputeTarget, workspace: Workspace, kube: Any, celery_worker: Any
) -> None:
    ModelFactory(workspace=workspace, name="best_model", version=1)
    with pytest.raises(WebserviceException, match="autoscale enabled and num_replicas provided"):
        AksWebservice.deploy_configuration(autoscale_enabled=True, num_replicas=3)
    config = AksWebservice.deploy_configuration(
        cpu_cores=0.5,
        autoscale_enabled=True,
        autoscale_min_replicas=2,
        autoscale_max_replicas=8,
        autoscale_target_utilization=50,
        auth_enabled=False,
        initial_delay_seconds=310,  # as Azure ML's default: a model that loads for minutes
    )

    service = Model.deploy(
        ws,
        "churn",
        ["best_model:1"],
        InferenceConfig(image="registry.example/churn:1"),
        config,
        deployment_target="aks",
    )
    service.wait_for_deployment(timeout_sec=60)

    assert service.state == "Healthy"
    assert service.autoscaler == AutoScaler(
        autoscale_enabled=True, max_replicas=8, min_replicas=2, refresh_period_seconds=None, target_utilization=50
    )
    hpa = kube.get_object("autoscaling/v2/horizontalpodautoscalers", "ml", "churn")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert service.liveness_probe_requirements == LivenessProbeRequirements(10, 310, 1, 1, 3)
    probe = kube.get_object("apps/v1/deployments", "ml", "churn")["spec"]["template"]["spec"]["containers"][0]
    assert probe["livenessProbe"]["initialDelaySeconds"] == 310
    with pytest.raises(WebserviceException, match="autoscale enabled and num_replicas provided"):
        service.update(autoscale_enabled=True, num_replicas=3)
    with pytest.raises(WebserviceException, match=r"autoscale disabled but num_replicas not provided\.$"):
        service.update(autoscale_enabled=False)  # 8 pods would fall to the 1 of its unused count at once
    with pytest.raises(WebserviceException, match=r"^Invalid configuration, autoscale_max_replicas provided without"):
        service.update(autoscale_max_replicas=4)  # as azureml-core: bounds come with autoscale_enabled=True

    service.update(autoscale_enabled=False, num_replicas=3, period_seconds=20)
    service.wait_for_deployment(timeout_sec=60)

    assert service.autoscaler is not None
    assert service.autoscaler.autoscale_enabled is False
    assert service.num_replicas == 3
    assert kube.get_object("autoscaling/v2/horizontalpodautoscalers", "ml", "churn") is None
    assert kube.get_object("apps/v1/deployments", "ml", "churn")["spec"]["replicas"] == 3
    assert service.liveness_probe_requirements == LivenessProbeRequirements(20, 310, 1, 1, 3)


@pytest.mark.django_db(transaction=True)
def test_it_raises_when_the_rollout_fails(
    ws: SdkWorkspace, cluster: ComputeTarget, workspace: Workspace, kube: Any, celery_worker: Any
) -> None:
    ServiceFactory(workspace=workspace, name="fraud", compute_target=cluster, image="registry.example/fraud:1")
    kube.rollout(name="fraud", delay=0.1, outcome="deadline")
    service = Webservice(ws, "fraud")

    service.update(enable_app_insights=True)
    with pytest.raises(
        WebserviceException, match="non-successful terminal state: Rollout exceeded its progress deadline"
    ):
        service.wait_for_deployment(timeout_sec=60)
    assert service.state == "Failed"


@pytest.mark.django_db(transaction=True)
def test_update_without_parameters_is_an_error(ws: SdkWorkspace, workspace: Workspace) -> None:
    ServiceFactory(workspace=workspace, name="churn")
    service = Webservice(ws, "churn")

    with pytest.raises(WebserviceException, match=r"^No parameters provided to update$"):
        service.update()


def _worked_off(service_name: str) -> None:
    """Wait until the worker has ended every update of the service: none still writes while the test's rows go."""
    unfinished = ServiceUpdate.objects.filter(
        service__name=service_name, status__in=[ServiceUpdate.Status.PENDING, ServiceUpdate.Status.RUNNING]
    )
    wait_until(lambda: not unfinished.exists(), timeout=60, message=f"the updates of {service_name} to end")


@pytest.mark.django_db(transaction=True)
def test_update_refuses_settings_it_would_not_apply_and_warns_of_them_beside_others(
    ws: SdkWorkspace, workspace: Workspace, celery_worker: Any
) -> None:
    ServiceFactory(workspace=workspace, name="churn", replicas=1)
    service = Webservice(ws, "churn")

    with pytest.raises(WebserviceException, match=r"^Tributary does not apply these settings: gpu_cores, tags$"):
        service.update(tags={"team": "risk"}, gpu_cores=1, description=None)
    assert Service.objects.get(name="churn").version == 1

    with pytest.warns(UserWarning, match=r"^Tributary does not apply these settings: autoscale_refresh_seconds$"):
        service.update(num_replicas=2, autoscale_refresh_seconds=5)
    assert Service.objects.get(name="churn").replicas == 2
    _worked_off("churn")


@pytest.mark.django_db(transaction=True)
def test_update_changes_the_models_and_what_serves_them(
    ws: SdkWorkspace, workspace: Workspace, celery_worker: Any
) -> None:
    ServiceFactory(workspace=workspace, name="churn", image="", models=[ModelFactory(workspace=workspace, version=1)])
    ModelFactory(workspace=workspace, name="best_model", version=2)
    service = Webservice(ws, "churn")

    service.update(models=[Model(ws, "best_model", 2)], inference_config=InferenceConfig(entry_script=EXAMPLE))

    changed = Service.objects.get(name="churn")
    assert [str(m) for m in changed.models.all()] == ["best_model:2"]
    assert changed.entry_script == EXAMPLE
    _worked_off("churn")


@pytest.mark.django_db(transaction=True)
def test_it_reports_server_errors_clearly(
    ws: SdkWorkspace, workspace: Workspace, live_server: Any, charlie: Any
) -> None:
    with pytest.raises(WebserviceException) as missing:
        Webservice(ws, "nope")
    assert missing.value.status == 404

    _, key = ApiToken.issue(charlie, "x")
    outsider = SdkWorkspace("sub-0001", "rg-ml", "alices-team", url=live_server.url, token=key)
    with pytest.raises(WebserviceException, match="No workspace 'alices-team' that this token may see"):
        Webservice(outsider, "churn")
    assert key not in repr(outsider._client)


@pytest.mark.django_db(transaction=True)
def test_swagger_uri_is_where_the_service_serves_its_swagger_document(
    ws: SdkWorkspace, workspace: Workspace, tmp_path: Any
) -> None:
    runtime = start_runtime(write_script(tmp_path, SCHEMA_SCRIPT), tmp_path)
    try:
        runtime.wait_ready()
        ServiceFactory(workspace=workspace, name="churn", scoring_url=f"http://127.0.0.1:{runtime.port}/score")
        ServiceFactory(workspace=workspace, name="fraud", state=Service.State.TRANSITIONING, scoring_url="")

        service = Webservice(ws, "churn")
        with urllib.request.urlopen(service.swagger_uri, timeout=10) as answer:  # no key: a swagger is no secret
            document = json.load(answer)

        assert service.swagger_uri == f"http://127.0.0.1:{runtime.port}/swagger.json"
        assert set(document["definitions"]["ServiceInput"]["properties"]) == {"data", "scale"}
        assert Webservice(ws, "fraud").swagger_uri is None  # no scoring URI yet, as azureml.core said
        assert ws.webservices["churn"].swagger_uri == service.swagger_uri
    finally:
        runtime.stop()


def test_deploy_configuration_names_the_legacy_settings_it_does_not_apply() -> None:
    with pytest.warns(UserWarning, match=r"^Tributary does not apply these settings: scoring_timeout_ms, tags$") as w:
        config = AksWebservice.deploy_configuration(
            cpu_cores=1, scoring_timeout_ms=5000, tags={"a": "b"}, gpu_cores=None
        )
    assert w[0].filename == __file__  # the warning points at the caller's line
    assert config.cpu_cores == 1

    with pytest.warns(UserWarning, match=r"^Tributary does not apply these settings: success_threshold$"):
        AksWebservice.deploy_configuration(period_seconds=20, success_threshold=2)  # Kubernetes allows only 1
    AksWebservice.deploy_configuration(period_seconds=20, success_threshold=1)  # what it applies: no warning

    with pytest.warns(UserWarning, match=r"^Tributary does not apply these settings: port$"):
        LocalWebservice.deploy_configuration(port=8890)


@pytest.mark.django_db(transaction=True)
def test_webservice_list_filters_by_compute_type_and_model_and_refuses_filters_it_cannot_apply(
    ws: SdkWorkspace, workspace: Workspace, cluster: ComputeTarget
) -> None:
    churn_model = ModelFactory(workspace=workspace, name="churn_model", version=2)
    ServiceFactory(workspace=workspace, name="churn", models=[churn_model])  # on this machine
    ServiceFactory(workspace=workspace, name="fraud", compute_target=cluster, image="registry.example/fraud:1")

    assert [s.name for s in Webservice.list(ws)] == ["churn", "fraud"]
    assert [s.name for s in Webservice.list(ws, compute_type="AKS")] == ["fraud"]
    assert [s.name for s in Webservice.list(ws, compute_type="Local")] == ["churn"]
    assert Webservice.list(ws, compute_type="ACI") == []
    assert [s.name for s in Webservice.list(ws, model_name="churn_model")] == ["churn"]
    with pytest.raises(WebserviceException, match=r"^Tributary does not filter services by: tags$"):
        Webservice.list(ws, tags=[["team", "risk"]])
