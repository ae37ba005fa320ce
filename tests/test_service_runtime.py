"""A service's page shows what its runtime says of itself: requests, latency, and what became of the collected rows,
dropped ones with the reason. Against a real scoring process on this machine, collecting into Azurite."""

from __future__ import annotations

import json
import re
import urllib.request
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from django.test import Client
from django.urls import reverse

from deployments import actions, drivers, runtime
from deployments.models import ComputeTarget, Service, Workspace
from devstack.services import free_port
from tests.conftest import cluster_pod, on_cluster, wait_until
from tests.factories import ServiceFactory, local_service
from tests.test_scoring_runtime import start_runtime, write_script

# A legacy-shaped script with one collector that works and one that is given what no CSV can hold.
SCRIPT = """
    import json
    from azureml.monitoring import ModelDataCollector

    def init():
        global inputs, notes
        inputs = ModelDataCollector("sample-model", designation="inputs", feature_names=["a", "b"])
        notes = ModelDataCollector("sample-model", designation="notes")

    def run(raw):
        rows = json.loads(raw)["data"]
        inputs.collect(rows)
        notes.collect({"free": "text"})
        return len(rows)
"""


def _runtime_page(client: Client, service: Service) -> str:
    response = client.get(reverse("deployments:service-runtime", args=[service.pk]), headers={"HX-Request": "true"})
    assert response.status_code == 200
    return response.content.decode()


def _text(html: str) -> str:
    """The words a user reads: inline tags go, block tags separate."""
    inline = re.sub(r"</?(code|strong|span)\b[^>]*>", "", html)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", inline)).split())


@pytest.mark.django_db
def test_the_page_shows_the_runtimes_requests_and_its_dropped_rows_with_the_reason(
    client: Client,
    alice: Any,
    bob: Any,
    workspace: Workspace,
    blob_container: ContainerClient,
    settings: Any,
    tmp_path: Path,
) -> None:
    settings.VAR_DIR = tmp_path
    service = local_service(workspace, write_script(tmp_path, SCRIPT), collect_model_data=True)
    driver = drivers.local_driver(workspace.storage_secret)
    spec = actions.desired_spec(service, 1)
    driver.apply(spec)
    try:
        state = wait_until(
            lambda: (s := driver.rollout_state(spec)).finished and s, timeout=60, message="the service to start"
        )
        assert state.status == "Healthy", state.reason
        client.force_login(bob)  # a reader sees it too
        assert "Scoring requests 0 Latency no request yet" in _text(_runtime_page(client, service))

        for _ in range(3):
            body = json.dumps({"data": [[1, 2], [3, 4]]}).encode()
            with urllib.request.urlopen(urllib.request.Request(state.scoring_url, data=body), timeout=10) as answer:
                assert answer.read() == b"2"

        page = wait_until(
            lambda: "6 collected, 6 in storage" in (text := _text(_runtime_page(client, service))) and text,
            timeout=30,
            message="the six input rows in storage",
        )
        assert "Scoring requests 3 (3 answered, 0 refused (4xx), 0 failed (5xx))" in page
        assert "1 of 1 ready" in page
        assert (
            "Dropped rows 3 3: collect() was given a value it cannot write as rows (rows are a list, a 1-D or 2-D "
            "numpy array, a DataFrame or a scalar) (not_tabular)" in page
        )
        assert "Storage errors" not in page
        assert len(list(blob_container.list_blobs(name_starts_with=f"{workspace.path}/churn/"))) == 1
    finally:
        driver.remove(spec)

    assert "The runtime does not answer" in _text(_runtime_page(client, service))


@pytest.mark.django_db
def test_the_service_page_asks_for_the_figures_after_it_has_loaded(
    client: Client, alice: Any, workspace: Workspace
) -> None:
    service = ServiceFactory(workspace=workspace, name="churn")
    client.force_login(alice)

    page = client.get(reverse("deployments:service-detail", args=[service.pk])).content.decode()

    runtime_url = reverse("deployments:service-runtime", args=[service.pk])
    assert f'hx-get="{runtime_url}"\n  hx-trigger="load"' in page
    assert "Asking the runtime" in page


@pytest.mark.django_db
def test_for_kubernetes_services_it_adds_up_what_each_pod_says(
    client: Client, bob: Any, workspace: Workspace, cluster: ComputeTarget, kube: Any, tmp_path: Path
) -> None:
    service = on_cluster(
        ServiceFactory(workspace=workspace, name="churn", compute_target=cluster, image="r.example/churn:1")
    )
    script = write_script(tmp_path, "def init():\n    pass\n\ndef run(raw):\n    return raw\n")
    pods = [start_runtime(script, tmp_path), start_runtime(script, tmp_path)]  # what two pods would run
    try:
        for pod, name, requests in zip(pods, ("churn-7d4-a", "churn-7d4-b"), (3, 1), strict=True):
            pod.wait_ready()
            for _ in range(requests):
                assert pod.score({"data": 1})[0] == 200
            cluster_pod(kube, name, "churn", status_port=pod.port, ip="127.0.0.1")
        cluster_pod(kube, "churn-7d4-c", "churn")  # scheduled, not yet running: it has no address
        client.force_login(bob)

        page = _text(_runtime_page(client, service))
        slowest = max(p.status()["latency"]["p99_ms"] for p in pods)
    finally:
        for pod in pods:
            pod.stop()

    assert "Pods 2 of 3 answered" in page
    assert "Workers 2 of 2 ready" in page
    assert "Scoring requests 4 (4 answered, 0 refused (4xx), 0 failed (5xx))" in page
    assert f"p99 {slowest} ms (the slowest pod's)" in page
    assert "Collected rows collection is off" in page
    assert "Counted since the service's pods started" in page


@pytest.mark.django_db
def test_for_kubernetes_services_it_says_when_no_pod_answers_or_the_cluster_does_not(
    client: Client, alice: Any, workspace: Workspace, cluster: ComputeTarget, kube: Any
) -> None:
    service = on_cluster(
        ServiceFactory(workspace=workspace, name="churn", compute_target=cluster, image="r.example/churn:1")
    )
    client.force_login(alice)
    assert "The service has no pods." in _text(_runtime_page(client, service))

    cluster_pod(kube, "churn-7d4-a", "churn", status_port=free_port(), ip="127.0.0.1")  # nothing listens there
    assert "None of the service's 1 pods answers" in _text(_runtime_page(client, service))

    Path(cluster.kubeconfig_path).write_text(
        Path(cluster.kubeconfig_path).read_text().replace(kube.url, "http://127.0.0.1:9")
    )
    assert "Could not list the service's pods: the cluster did not answer" in _text(_runtime_page(client, service))


@pytest.mark.django_db
def test_to_outsiders_the_figures_do_not_exist(client: Client, charlie: Any, workspace: Workspace) -> None:
    service = ServiceFactory(workspace=workspace, name="churn")
    client.force_login(charlie)

    assert client.get(reverse("deployments:service-runtime", args=[service.pk])).status_code == 404


def _status_with_storage_error(message: str) -> dict[str, Any]:
    return {
        "requests": {"score_requests": 1, "score_ok": 1, "score_client_errors": 0, "score_errors": 0},
        "latency": {"p50_ms": 1.0, "p99_ms": 2.0},
        "workers": [{"ready": True}],
        "collector": {
            "mode": "upload",
            "upload_failures": 2,
            "last_error": message,
            "last_error_at": 1_764_000_000.0,
        },
    }


def test_a_storage_error_is_shown_without_the_query_of_a_url_in_it() -> None:
    status = _status_with_storage_error(
        "Server refused https://acct.blob.core.windows.net/modeldata?sv=2024&sig=SECRET'"
    )

    figures = runtime.figures(status)

    assert figures is not None
    assert figures.last_error == "Server refused https://acct.blob.core.windows.net/modeldata?…'"
    assert figures.last_error_at == datetime(2025, 11, 24, 16, 0, tzinfo=UTC)
    assert runtime.figures({"requests": "not a status document"}) is None


def test_a_storage_error_is_shown_without_a_credential_in_it() -> None:
    # As the service's log is: readers see both.
    status = _status_with_storage_error(
        "Connection string rejected: DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5;"
    )

    figures = runtime.figures(status)

    assert figures is not None
    assert "c2VjcmV0a2V5" not in figures.last_error
    assert (
        figures.last_error
        == "Connection string rejected: DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=<hidden>;"
    )
