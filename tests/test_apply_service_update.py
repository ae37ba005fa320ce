"""The task that applies a service's desired spec: run in-process against the Kubernetes API test server, and
through a real worker for what only a process can show (a worker killed in the middle of a rollout)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s

from deployments import actions, tasks
from deployments.models import AuditEvent, ComputeTarget, Service, ServiceUpdate, Workspace
from tests.conftest import wait_until
from tests.factories import ModelFactory, ServiceFactory


@pytest.fixture
def service(workspace: Workspace, cluster: ComputeTarget) -> Service:
    return ServiceFactory(
        workspace=workspace,
        name="churn",
        compute_target=cluster,
        image="registry.example/churn:7",
        entry_script="",
        collect_model_data=True,
        models=[ModelFactory(workspace=workspace, name="best_model", version=4)],
    )


def _update(service: Service, actor: Any, **changes: Any) -> ServiceUpdate:
    return actions.do_update_service(service, expected_version=service.version, acting_user=actor, **changes)


def _deployment(kube: Any, name: str = "churn") -> k8s.V1Deployment:
    return k8s.AppsV1Api(kube.api_client()).read_namespaced_deployment(name, "ml")


def _env(deployment: k8s.V1Deployment) -> dict[str, Any]:
    return {e.name: e.value or e.value_from for e in deployment.spec.template.spec.containers[0].env}


@pytest.mark.django_db
def test_it_creates_the_deployment_and_ends_healthy(
    kube: Any, service: Service, alice: Any, settings_fast: Any
) -> None:
    update = _update(service, alice, replicas=2)

    tasks.apply_service_update(update.pk)

    update.refresh_from_db()
    service.refresh_from_db()
    assert (update.status, update.attempts, update.error) == (ServiceUpdate.Status.SUCCEEDED, 1, "")
    assert service.state == Service.State.HEALTHY
    assert service.scoring_url == "http://churn.ml.svc/score"
    deployment = _deployment(kube)
    assert deployment.spec.replicas == 2
    assert deployment.metadata.annotations["tributary.dev/update-id"] == str(update.pk)
    env = _env(deployment)
    assert env["AML_MODEL_DC_STORAGE_ENABLED"] == "true"
    assert env["AML_MODEL_DC_MODEL_VERSIONS"] == '{"best_model": "4"}'
    assert env["AML_MODEL_DC_WORKSPACE"] == "sub-0001/rg-ml/alices-team"
    assert env["AML_APP_INSIGHTS_ENABLED"] == "false"
    # Rows spooled during a storage outage survive a container restart: the spool is a volume of the pod.
    assert env["AML_MODEL_DC_SPOOL_DIR"] == "/var/lib/tributary/spool"
    container = deployment.spec.template.spec.containers[0]
    # The probes go to the runtime's probe port, answered however busy its request threads are.
    assert env["SCORING_PROBE_PORT"] == "5002"
    assert (container.liveness_probe.http_get.port, container.readiness_probe.http_get.port) == (5002, 5002)
    assert deployment.spec.template.spec.volumes[0].empty_dir is not None
    # The connection string is referenced from the workspace's Secret, never written into the Deployment.
    assert env["AML_MODEL_DC_STORAGE"].secret_key_ref.name == "tributary-storage"
    assert k8s.CoreV1Api(kube.api_client()).read_namespaced_service("churn", "ml").spec.ports[0].port == 80
    event = AuditEvent.objects.filter(action=AuditEvent.Action.SERVICE_UPDATE_SUCCEEDED).get()
    assert (event.actor, event.actor_name, event.changes) == (None, "system", {"update": [None, update.pk]})


@pytest.mark.django_db
def test_pods_with_diagnostics_on_read_the_telemetry_destinations(
    kube: Any, service: Service, alice: Any, settings_fast: Any
) -> None:
    settings_fast.OTEL_EXPORTER_OTLP_ENDPOINT = "http://otel-collector.monitoring:4318"
    settings_fast.APPLICATIONINSIGHTS_CONNECTION_STRING = "InstrumentationKey=the-portal's-own"

    tasks.apply_service_update(_update(service, alice, enable_app_insights=True).pk)

    env = _env(_deployment(kube))
    assert env["AML_APP_INSIGHTS_ENABLED"] == "true"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4318"
    # The connection string by reference to the workspace's Secret, never the portal's own value; optional, so that
    # a workspace that sends over OTLP only still starts its pods.
    reference = env["APPLICATIONINSIGHTS_CONNECTION_STRING"].secret_key_ref
    assert (reference.name, reference.key, reference.optional) == (
        "tributary-storage",
        "appinsights-connection-string",
        True,
    )
    service.refresh_from_db()

    tasks.apply_service_update(_update(service, alice, enable_app_insights=False).pk)

    env = _env(_deployment(kube))
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" not in env


@pytest.mark.django_db
def test_it_patches_the_deployment_keeping_the_image(
    kube: Any, service: Service, alice: Any, settings_fast: Any
) -> None:
    tasks.apply_service_update(_update(service, alice, replicas=2).pk)
    service.refresh_from_db()

    update = _update(service, alice, collect_model_data=False)
    tasks.apply_service_update(update.pk)

    deployment = _deployment(kube)
    assert deployment.metadata.generation == 2
    assert deployment.spec.template.spec.containers[0].image == "registry.example/churn:7"
    assert _env(deployment)["AML_MODEL_DC_STORAGE_ENABLED"] == "false"
    assert "AML_MODEL_DC_STORAGE" not in _env(deployment)
    update.refresh_from_db()
    assert update.status == ServiceUpdate.Status.SUCCEEDED


@pytest.mark.django_db
def test_a_deployment_from_before_the_probe_port_keeps_its_probes_until_its_image_changes(
    kube: Any, service: Service, alice: Any, settings_fast: Any
) -> None:
    # As Tributary left a Deployment before the runtime had a probe port: both probes on the main port. The runtime
    # in that image may not listen on 5002, so probing there would keep its new pods unready for good.
    tasks.apply_service_update(_update(service, alice, replicas=2).pk)
    service.refresh_from_db()
    apps = k8s.AppsV1Api(kube.api_client())
    old = apps.read_namespaced_deployment("churn", "ml").to_dict()["spec"]["template"]["spec"]["containers"][0]
    container = {
        "name": "scoring",
        "image": old["image"],
        "ports": [{"name": "http", "containerPort": 5001}],
        "env": [{"name": e["name"], "value": e["value"]} for e in old["env"] if e["name"] != "SCORING_PROBE_PORT"],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 5001}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/", "port": 5001}, "periodSeconds": 10},
    }
    apps.patch_namespaced_deployment(
        "churn",
        "ml",
        {"spec": {"template": {"spec": {"containers": [container]}}}},
        _content_type="application/merge-patch+json",
    )

    tasks.apply_service_update(_update(service, alice, collect_model_data=False).pk)
    service.refresh_from_db()

    container = _deployment(kube).spec.template.spec.containers[0]
    assert (container.liveness_probe.http_get.port, container.readiness_probe.http_get.port) == (5001, 5001)
    assert [p.container_port for p in container.ports] == [5001]
    assert "SCORING_PROBE_PORT" not in _env(_deployment(kube))
    assert _env(_deployment(kube))["AML_MODEL_DC_STORAGE_ENABLED"] == "false"

    # A new image is one built from the current scoring/Dockerfile: probed on its probe port.
    update = _update(service, alice, image="registry.example/churn:8")
    tasks.apply_service_update(update.pk)

    update.refresh_from_db()
    assert update.status == ServiceUpdate.Status.SUCCEEDED
    container = _deployment(kube).spec.template.spec.containers[0]
    assert container.image == "registry.example/churn:8"
    assert (container.liveness_probe.http_get.port, container.readiness_probe.http_get.port) == (5002, 5002)
    assert _env(_deployment(kube))["SCORING_PROBE_PORT"] == "5002"


@pytest.mark.django_db
def test_running_it_twice_applies_once(kube: Any, service: Service, alice: Any, settings_fast: Any) -> None:
    update = _update(service, alice, replicas=2)
    tasks.apply_service_update(update.pk)
    version = _deployment(kube).metadata.resource_version

    tasks.apply_service_update(update.pk)

    update.refresh_from_db()
    assert update.attempts == 1
    assert _deployment(kube).metadata.resource_version == version
    assert AuditEvent.objects.filter(action=AuditEvent.Action.SERVICE_UPDATE_SUCCEEDED).count() == 1


@pytest.mark.django_db
def test_it_fails_with_the_reason_on_progress_deadline(
    kube: Any, service: Service, alice: Any, settings_fast: Any
) -> None:
    kube.rollout(name="churn", delay=0.1, outcome="deadline")
    update = _update(service, alice, replicas=3)

    tasks.apply_service_update(update.pk)

    update.refresh_from_db()
    service.refresh_from_db()
    assert update.status == ServiceUpdate.Status.FAILED
    assert "progress deadline" in update.error
    assert service.state == Service.State.FAILED
    assert "progress deadline" in service.state_reason
    assert AuditEvent.objects.filter(action=AuditEvent.Action.SERVICE_UPDATE_FAILED).count() == 1


@pytest.mark.django_db
def test_it_fails_when_the_rollout_times_out(kube: Any, service: Service, alice: Any, settings_fast: Any) -> None:
    settings_fast.ROLLOUT_TIMEOUT_SECONDS = 0.3
    kube.rollout(name="churn", outcome="pending")
    update = _update(service, alice, replicas=3)

    tasks.apply_service_update(update.pk)

    update.refresh_from_db()
    assert update.status == ServiceUpdate.Status.FAILED
    assert "did not finish within" in update.error


@pytest.mark.django_db
def test_it_fails_at_once_on_a_permanent_error(kube: Any, service: Service, alice: Any, settings_fast: Any) -> None:
    ComputeTarget.objects.filter(pk=service.compute_target_id).update(kubeconfig_path="/nonexistent/kubeconfig")
    update = _update(service, alice, replicas=3)

    tasks.apply_service_update(update.pk)

    update.refresh_from_db()
    assert update.status == ServiceUpdate.Status.FAILED
    assert update.attempts == 1
    assert "Cannot load the kubeconfig" in update.error
    assert "/nonexistent" not in update.error


@pytest.mark.django_db
def test_it_retries_a_transient_error_then_succeeds(
    kube: Any, service: Service, alice: Any, settings_fast: Any
) -> None:
    import kmock
    from celery.exceptions import Retry

    kube.emulator[kmock.action.CREATE, kmock.resource("apps/v1/deployments")] << 503
    update = _update(service, alice, replicas=2)

    with pytest.raises(Retry):
        tasks.apply_service_update(update.pk)
    update.refresh_from_db()
    assert (update.status, update.attempts) == (ServiceUpdate.Status.PENDING, 1)
    assert "HTTP 503" in update.error

    kube.reset()
    tasks.apply_service_update(update.pk)
    update.refresh_from_db()
    assert (update.status, update.attempts) == (ServiceUpdate.Status.SUCCEEDED, 2)


@pytest.mark.django_db(transaction=True)
def test_it_finishes_through_a_real_worker(kube: Any, service: Service, alice: Any, celery_worker: Any) -> None:
    update = _update(service, alice, replicas=2)  # enqueued on commit (autocommit: at once)

    wait_until(lambda: ServiceUpdate.objects.get(pk=update.pk).is_finished, timeout=30, message="the update to finish")

    update.refresh_from_db()
    assert update.status == ServiceUpdate.Status.SUCCEEDED, update.error


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_rollout_leaves_an_update_that_celery_beat_finishes_once(
    kube: Any, service: Service, alice: Any, own_workers: Any
) -> None:
    kube.rollout(name="churn", delay=4, outcome="available")
    doomed = own_workers.start(UPDATE_LEASE_SECONDS="2", ROLLOUT_POLL_SECONDS="0.1")
    update = _update(service, alice, replicas=2)
    wait_until(lambda: kube.get_object("apps/v1/deployments", "ml", "churn"), timeout=20, message="the Deployment")
    doomed.kill()
    update.refresh_from_db()
    assert update.status == ServiceUpdate.Status.RUNNING

    # Nobody runs reconcile_updates by hand: the next worker's Celery beat finds the expired lease.
    own_workers.start(beat=True, UPDATE_LEASE_SECONDS="30", ROLLOUT_POLL_SECONDS="0.1", RECONCILE_INTERVAL_SECONDS="1")

    wait_until(lambda: ServiceUpdate.objects.get(pk=update.pk).is_finished, timeout=30, message="the update to finish")
    update.refresh_from_db()
    assert (update.status, update.attempts) == (ServiceUpdate.Status.SUCCEEDED, 2)
    assert _deployment(kube).metadata.generation == 1  # applied once: the second attempt found its annotation
    assert AuditEvent.objects.filter(action=AuditEvent.Action.SERVICE_UPDATE_SUCCEEDED).count() == 1


@pytest.mark.django_db
def test_an_older_update_never_runs_after_a_newer_one(
    kube: Any, service: Service, alice: Any, settings_fast: Any
) -> None:
    older = _update(service, alice, replicas=2)
    assert actions.claim_update(older.pk) is not None  # running when the user saves another edit
    service.refresh_from_db()
    newer = _update(service, alice, replicas=3)
    older.refresh_from_db()
    actions.release_update(older, "HTTP 503")  # a transient error hands it back for a retry

    tasks.apply_service_update(newer.pk)
    tasks.apply_service_update(older.pk)

    older.refresh_from_db()
    assert (older.status, older.error) == (ServiceUpdate.Status.FAILED, f"Superseded by update #{newer.pk}.")
    assert _deployment(kube).spec.replicas == 3


@pytest.mark.django_db
def test_an_unexpected_error_fails_the_update_instead_of_hanging(
    service: Service, alice: Any, monkeypatch: Any
) -> None:
    from deployments import drivers

    def broken(_service: Service) -> Any:
        raise KeyError("boom")

    monkeypatch.setattr(drivers, "driver_for", broken)
    update = _update(service, alice, replicas=2)

    tasks.apply_service_update(update.pk)

    update.refresh_from_db()
    assert update.status == ServiceUpdate.Status.FAILED
    assert update.error == "Internal error while applying the update (KeyError)."
