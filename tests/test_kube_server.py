"""The Kubernetes API test server (devstack.kube), seen only through the official `kubernetes` client."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import kubernetes.config
import pytest
from kubernetes import watch
from kubernetes.client import ApiException, AppsV1Api, CoreV1Api, V1Deployment

from devstack.kube import KubeTestServer

NS = "team-a"
MERGE = "application/merge-patch+json"


@pytest.fixture
def api(kube: KubeTestServer) -> Iterator[kubernetes.client.ApiClient]:
    client = kube.api_client()
    yield client
    client.close()


@pytest.fixture
def apps(api: kubernetes.client.ApiClient) -> AppsV1Api:
    return AppsV1Api(api)


@pytest.fixture
def core(api: kubernetes.client.ApiClient) -> CoreV1Api:
    return CoreV1Api(api)


def deployment(
    name: str, *, image: str = "registry.example/scoring:1", env: dict[str, str] | None = None, **labels: str
) -> dict[str, Any]:
    env = {"AML_MODEL_DC_STORAGE_ENABLED": "true"} if env is None else env
    return {
        "metadata": {"name": name, "labels": {"app": name, **labels}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "scoring",
                            "image": image,
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                            "ports": [{"containerPort": 5001}],
                        }
                    ]
                },
            },
        },
    }


def env_of(dep: V1Deployment) -> dict[str, str | None]:
    return {e.name: e.value for e in dep.spec.template.spec.containers[0].env or []}


def rollout_state(dep: V1Deployment) -> str:
    """What `kubectl rollout status` would say: "waiting", "done" or "failed"."""
    status = dep.status
    if status is None or dep.metadata.generation > (status.observed_generation or 0):
        return "waiting"
    progressing = next((c for c in status.conditions or [] if c.type == "Progressing"), None)
    if progressing is not None and progressing.reason == "ProgressDeadlineExceeded":
        return "failed"
    updated = status.updated_replicas or 0
    if updated < dep.spec.replicas or (status.replicas or 0) > updated or (status.available_replicas or 0) < updated:
        return "waiting"
    return "done"


def wait_for_rollout(apps: AppsV1Api, name: str, timeout: float = 5.0) -> tuple[str, V1Deployment, list[str]]:
    """Poll the Deployment until its rollout is done or failed; also return the states seen on the way."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        dep = apps.read_namespaced_deployment(name, NS)
        state = rollout_state(dep)
        seen.append(state)
        if state != "waiting" or time.monotonic() > deadline:
            return state, dep, seen
        time.sleep(0.01)


def test_it_sets_server_metadata_on_a_created_deployment(apps: AppsV1Api) -> None:
    created = apps.create_namespaced_deployment(NS, deployment("web"))

    meta = created.metadata
    assert (meta.name, meta.namespace, meta.generation) == ("web", NS, 1)
    assert len(meta.uid) == 36
    assert meta.resource_version.isdigit()
    assert meta.creation_timestamp is not None
    assert (created.api_version, created.kind) == ("apps/v1", "Deployment")
    assert created.spec.strategy.type == "RollingUpdate"  # defaulted as by a real API server
    read = apps.read_namespaced_deployment("web", NS)
    assert (read.metadata.uid, read.metadata.generation) == (meta.uid, 1)
    with pytest.raises(ApiException) as conflict:
        apps.create_namespaced_deployment(NS, deployment("web"))
    assert conflict.value.status == 409


def test_it_keeps_the_image_when_a_merge_patch_carries_the_whole_containers_list(apps: AppsV1Api) -> None:
    created = apps.create_namespaced_deployment(NS, deployment("web", env={"A": "1", "B": "2"}))
    containers = apps.read_namespaced_deployment("web", NS).to_dict(serialize=True)["spec"]["template"]["spec"][
        "containers"
    ]
    containers[0]["env"] = [{"name": "A", "value": "changed"}]  # read, modify, write the whole list

    patched = apps.patch_namespaced_deployment(
        "web", NS, {"spec": {"template": {"spec": {"containers": containers}}}}, _content_type=MERGE
    )

    assert patched.spec.template.spec.containers[0].image == "registry.example/scoring:1"
    assert env_of(patched) == {"A": "changed"}  # B is gone: the list was replaced whole
    assert patched.metadata.generation == 2
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)
    wait_for_rollout(apps, "web")  # after this, only our writes change the resourceVersion
    relabelled = apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"x": "y"}}}, _content_type=MERGE)
    assert relabelled.metadata.generation == 2  # metadata-only changes leave the generation alone
    same = apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 2}}, _content_type=MERGE)
    assert same.metadata.resource_version == relabelled.metadata.resource_version  # a no-op write changes nothing


def test_it_applies_a_json_patch_and_honours_its_test_operation(apps: AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment("web", env={"A": "1"}))
    rv = wait_for_rollout(apps, "web")[1].metadata.resource_version  # the controller's status writes bump it too

    patched = apps.patch_namespaced_deployment(  # a list body is sent as application/json-patch+json
        "web",
        NS,
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "replace", "path": "/spec/template/spec/containers/0/env/0/value", "value": "2"},
            {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "B", "value": "3"}},
        ],
    )

    assert env_of(patched) == {"A": "2", "B": "3"}
    assert patched.spec.template.spec.containers[0].image == "registry.example/scoring:1"
    assert patched.metadata.generation == 2
    with pytest.raises(ApiException) as stale:
        apps.patch_namespaced_deployment("web", NS, [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}])
    assert stale.value.status == 422


def test_it_merges_containers_by_name_in_a_strategic_merge_patch(apps: AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment("web", env={"A": "1", "B": "2"}))

    # A dict body without _content_type is a strategic merge patch, as on a real cluster.
    patched = apps.patch_namespaced_deployment(
        "web",
        NS,
        {"spec": {"template": {"spec": {"containers": [{"name": "scoring", "env": [{"name": "A", "value": "9"}]}]}}}},
    )

    assert patched.spec.template.spec.containers[0].image == "registry.example/scoring:1"
    assert env_of(patched) == {"A": "9", "B": "2"}  # merged by name: B can't be removed this way


def test_it_rejects_a_write_with_a_stale_resource_version(apps: AppsV1Api) -> None:
    old = apps.create_namespaced_deployment(NS, deployment("web"))
    apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 3}}, _content_type=MERGE)

    stale = {"metadata": {"resourceVersion": old.metadata.resource_version}, "spec": {"replicas": 1}}
    with pytest.raises(ApiException) as patch_error:
        apps.patch_namespaced_deployment("web", NS, stale, _content_type=MERGE)
    with pytest.raises(ApiException) as put_error:
        apps.replace_namespaced_deployment("web", NS, old)

    assert patch_error.value.status == put_error.value.status == 409
    assert apps.read_namespaced_deployment("web", NS).spec.replicas == 3


def test_it_replaces_a_deployment_with_put(apps: AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment("web"))
    current = wait_for_rollout(apps, "web")[1]  # PUT carries resourceVersion: it must postdate status writes
    current.spec.template.spec.containers[0].image = "registry.example/scoring:2"

    replaced = apps.replace_namespaced_deployment("web", NS, current)

    assert replaced.spec.template.spec.containers[0].image == "registry.example/scoring:2"
    assert (replaced.metadata.generation, replaced.metadata.uid) == (2, current.metadata.uid)


def test_it_keeps_status_apart_from_spec_writes(apps: AppsV1Api, kube: KubeTestServer) -> None:
    kube.rollout(outcome="pending")
    apps.create_namespaced_deployment(NS, deployment("web"))

    apps.patch_namespaced_deployment("web", NS, {"status": {"replicas": 99}}, _content_type=MERGE)
    assert apps.read_namespaced_deployment("web", NS).status.replicas != 99
    apps.patch_namespaced_deployment_status("web", NS, {"status": {"replicas": 99}}, _content_type=MERGE)
    read = apps.read_namespaced_deployment("web", NS)
    assert (read.status.replicas, read.metadata.generation) == (99, 1)


def test_it_rolls_out_a_deployment_as_kubectl_rollout_status_sees_it(apps: AppsV1Api, kube: KubeTestServer) -> None:
    kube.rollout(delay=0.2, outcome="available")
    started = time.monotonic()
    created = apps.create_namespaced_deployment(NS, deployment("web"))

    state, dep, seen = wait_for_rollout(apps, "web")

    assert rollout_state(created) == "waiting"  # no status yet: observedGeneration is missing
    assert state == "done"
    assert time.monotonic() - started >= 0.2
    assert set(seen) == {"waiting", "done"}
    status = dep.status
    assert status.observed_generation == dep.metadata.generation == 1
    assert status.replicas == status.updated_replicas == status.ready_replicas == status.available_replicas == 2
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions == {
        "Available": ("True", "MinimumReplicasAvailable"),
        "Progressing": ("True", "NewReplicaSetAvailable"),
    }

    patched = apps.patch_namespaced_deployment(
        "web", NS, {"spec": {"template": {"spec": {"containers": [{"name": "scoring", "image": "x:2"}]}}}}
    )
    assert rollout_state(patched) == "waiting"  # generation 2 is not observed yet
    state, dep, _ = wait_for_rollout(apps, "web")
    assert state == "done"
    assert dep.status.observed_generation == dep.metadata.generation == 2


def test_it_reports_a_rollout_past_its_progress_deadline(apps: AppsV1Api, kube: KubeTestServer) -> None:
    kube.rollout(delay=0.05, outcome="available")
    kube.rollout(name="broken", delay=0.1, outcome="deadline")
    apps.create_namespaced_deployment(NS, deployment("healthy"))
    apps.create_namespaced_deployment(NS, deployment("broken"))

    assert wait_for_rollout(apps, "healthy")[0] == "done"
    state, dep, _ = wait_for_rollout(apps, "broken")

    assert state == "failed"
    assert dep.status.observed_generation == dep.metadata.generation
    assert (dep.status.available_replicas or 0) < dep.spec.replicas
    progressing = next(c for c in dep.status.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")


def test_it_streams_a_rollout_to_a_watch(apps: AppsV1Api, kube: KubeTestServer) -> None:
    kube.rollout(delay=0.1)
    apps.create_namespaced_deployment(NS, deployment("web"))
    apps.create_namespaced_deployment(NS, deployment("other"))

    states = []
    stream = watch.Watch().stream(
        apps.list_namespaced_deployment, NS, field_selector="metadata.name=web", timeout_seconds=3
    )
    for event in stream:
        assert event["object"].metadata.name == "web"
        states.append(rollout_state(event["object"]))
        if states[-1] != "waiting":
            break

    assert states[-1] == "done"


def test_it_filters_lists_by_label_selector(apps: AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment("a1", tier="web", ws="one"))
    apps.create_namespaced_deployment(NS, deployment("a2", tier="batch", ws="one"))
    apps.create_namespaced_deployment(NS, deployment("a3", tier="web", ws="two"))
    apps.create_namespaced_deployment("team-b", deployment("b1", tier="web", ws="one"))

    def names(selector: str, namespace: str | None = NS) -> list[str]:
        if namespace is None:
            found = apps.list_deployment_for_all_namespaces(label_selector=selector)
        else:
            found = apps.list_namespaced_deployment(namespace, label_selector=selector)
        return [d.metadata.name for d in found.items]

    assert names("ws=one") == ["a1", "a2"]
    assert names("ws=one,tier=web") == ["a1"]
    assert names("tier!=web") == ["a2"]
    assert names("ws in (two, three)") == ["a3"]
    assert names("ws notin (one),tier") == ["a3"]
    assert names("!tier") == []
    assert names("ws=one", namespace=None) == ["a1", "a2", "b1"]
    listed = apps.list_namespaced_deployment(NS)
    assert listed.metadata.resource_version.isdigit()
    assert len(listed.items) == 3
    with pytest.raises(ApiException) as bad:
        names("ws in one")
    assert bad.value.status == 400


def test_it_serves_services(core: CoreV1Api) -> None:
    body = {
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 5001}]},
    }
    created = core.create_namespaced_service(NS, body)
    assert created.spec.cluster_ip
    assert created.spec.ports[0].protocol == "TCP"

    patched = core.patch_namespaced_service(
        "web", NS, {"spec": {"ports": [{"port": 8080, "targetPort": 5001}]}}, _content_type=MERGE
    )
    assert patched.spec.ports[0].port == 8080
    assert patched.spec.cluster_ip == created.spec.cluster_ip
    assert core.read_namespaced_service("web", NS).spec.ports[0].port == 8080
    assert [s.metadata.name for s in core.list_namespaced_service(NS, label_selector="app=web").items] == ["web"]

    deleted = core.delete_namespaced_service("web", NS)  # Services answer a DELETE with the object
    assert deleted.metadata.uid == created.metadata.uid
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_service("web", NS)
    assert gone.value.status == 404


def test_it_serves_the_log_a_test_gave_a_pods_container_as_text(core: CoreV1Api, kube: KubeTestServer) -> None:
    containers = [{"name": "scoring", "image": "r.example/s:1"}, {"name": "sidecar", "image": "r.example/p:1"}]
    core.create_namespaced_pod(NS, {"metadata": {"name": "web-1"}, "spec": {"containers": containers}})
    kube.set_pod_log(NS, "web-1", "one\ntwo\nthree\n")

    assert core.read_namespaced_pod_log("web-1", NS, container="scoring") == "one\ntwo\nthree\n"
    assert core.read_namespaced_pod_log("web-1", NS, container="scoring", tail_lines=2) == "two\nthree\n"
    assert core.read_namespaced_pod_log("web-1", NS, container="scoring", tail_lines=5) == "one\ntwo\nthree\n"
    assert core.read_namespaced_pod_log("web-1", NS, container="scoring", limit_bytes=6) == "one\ntw"
    assert core.read_namespaced_pod_log("web-1", NS, container="sidecar") == ""
    assert core.read_namespaced_pod("web-1", NS).metadata.name == "web-1"  # JSON again after a text answer
    for kwargs, status in (({}, 400), ({"container": "nope"}, 400)):  # two containers: one must be named
        with pytest.raises(ApiException) as refused:
            core.read_namespaced_pod_log("web-1", NS, **kwargs)
        assert refused.value.status == status
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod_log("web-2", NS, container="scoring")
    assert missing.value.status == 404

    kube.reset()
    core.create_namespaced_pod(NS, {"metadata": {"name": "web-1"}, "spec": {"containers": containers[:1]}})
    assert core.read_namespaced_pod_log("web-1", NS) == ""  # reset forgets the logs; one container needs no name


def test_it_stores_secrets(core: CoreV1Api, apps: AppsV1Api) -> None:
    core.create_namespaced_secret(
        NS, {"metadata": {"name": "storage"}, "stringData": {"AML_MODEL_DC_STORAGE": "DefaultEndpointsProtocol=http"}}
    )

    secret = core.read_namespaced_secret("storage", NS)
    assert secret.type == "Opaque"
    assert secret.string_data is None
    assert base64.b64decode(secret.data["AML_MODEL_DC_STORAGE"]) == b"DefaultEndpointsProtocol=http"
    body = deployment("web", env={})
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {
            "name": "AML_MODEL_DC_STORAGE",
            "valueFrom": {"secretKeyRef": {"name": "storage", "key": "AML_MODEL_DC_STORAGE"}},
        }
    ]
    created = apps.create_namespaced_deployment(NS, body)
    assert created.spec.template.spec.containers[0].env[0].value_from.secret_key_ref.name == "storage"


def test_it_creates_namespaces_and_accepts_writes_into_new_ones(core: CoreV1Api, apps: AppsV1Api) -> None:
    core.create_namespace({"metadata": {"name": "models"}})
    apps.create_namespaced_deployment("brand-new", deployment("web"))

    assert core.read_namespace("models").status.phase == "Active"
    assert {"default", "models", "brand-new"} <= {n.metadata.name for n in core.list_namespace().items}
    core.delete_namespace("brand-new")
    assert apps.list_namespaced_deployment("brand-new").items == []


def test_it_rejects_invalid_objects(apps: AppsV1Api, core: CoreV1Api) -> None:
    no_image = deployment("web")
    del no_image["spec"]["template"]["spec"]["containers"][0]["image"]
    mismatch = deployment("web")
    mismatch["spec"]["selector"]["matchLabels"] = {"app": "other"}
    bad_service = {"metadata": {"name": "Web_1"}, "spec": {"ports": [{"port": 80}]}}

    for create in (
        lambda: apps.create_namespaced_deployment(NS, no_image),
        lambda: apps.create_namespaced_deployment(NS, mismatch),
        lambda: core.create_namespaced_service(NS, bad_service),
    ):
        with pytest.raises(ApiException) as invalid:
            create()
        assert invalid.value.status == 422
    assert apps.list_namespaced_deployment(NS).items == []


def test_it_requires_the_token_from_its_kubeconfig(kube: KubeTestServer) -> None:
    anonymous = CoreV1Api(kubernetes.client.ApiClient(kubernetes.client.Configuration(host=kube.url)))
    with pytest.raises(ApiException) as refused:
        anonymous.list_namespace()
    assert refused.value.status == 401

    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config_from_dict(kube.kubeconfig_dict(), client_configuration=configuration)
    assert "default" in [
        n.metadata.name for n in CoreV1Api(kubernetes.client.ApiClient(configuration)).list_namespace().items
    ]


def test_it_keeps_its_request_log_bounded(apps: AppsV1Api, kube: KubeTestServer) -> None:
    apps.create_namespaced_deployment(NS, deployment("web"))

    for replicas in range(300):
        apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": replicas % 3 + 1}}, _content_type=MERGE)
        apps.read_namespaced_deployment("web", NS)

    assert kube.recorded_request_count() == 0  # kmock's logs keep only in-flight requests
    assert len(kube.emulator.objects["apps/v1/deployments", NS, "web"].history) <= 5


def test_it_forgets_everything_on_reset(apps: AppsV1Api, kube: KubeTestServer) -> None:
    kube.rollout(outcome="deadline")
    apps.create_namespaced_deployment(NS, deployment("web"))

    kube.reset()

    assert apps.list_deployment_for_all_namespaces().items == []
    assert kube.get_object("v1/namespaces", None, "default") is not None
    apps.create_namespaced_deployment(NS, deployment("web"))
    assert wait_for_rollout(apps, "web")[0] == "done"  # the deadline plan is gone too
