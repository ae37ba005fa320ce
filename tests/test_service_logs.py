"""A service's log, on its Logs page, in the REST API and by the SDK's get_logs(): what its processes wrote, the
newest lines last, with credentials hidden. Against a real scoring process on this machine, and against the
Kubernetes API test server's pods."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from django.test import Client
from django.urls import reverse

from deployments import actions, drivers, logs
from deployments.models import ApiToken, ComputeTarget, Service, Workspace
from tests.conftest import cluster_pod, log_in, on_cluster, wait_until
from tests.factories import ComputeTargetFactory, ServiceFactory, local_service
from tests.test_scoring_runtime import write_script
from tributary_sdk import Webservice, WebserviceException
from tributary_sdk import Workspace as SdkWorkspace

# A script that prints what scripts print: progress, and, carelessly, its storage's connection string and a SAS URL.
SCRIPT = """
    import json, os
    from azureml.monitoring import ModelDataCollector

    def init():
        global inputs
        inputs = ModelDataCollector("sample-model", designation="inputs")
        print("model loaded", flush=True)
        print("storage:", os.environ["AML_MODEL_DC_STORAGE"], flush=True)
        print("reading https://acct.blob.core.windows.net/m/model.pkl?sv=2024-01-01&sig=c2VjcmV0LXNpZw%3D%3D", flush=True)

    def run(raw):
        rows = json.loads(raw)["data"]
        inputs.collect(rows)
        print(f"scored {len(rows)} rows", flush=True)
        return len(rows)
"""


def _auth(user: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {ApiToken.issue(user, 'test')[1]}"}


def _api_logs(client: Client, service: Service, user: Any, query: str = "") -> Any:
    url = reverse("deployments:api-service-logs", args=[service.workspace_id, service.name]) + query
    return client.get(url, headers=_auth(user))


def _logs_page(client: Client, service: Service, query: str = "", **headers: str) -> Any:
    return client.get(reverse("deployments:service-logs", args=[service.pk]) + query, headers=headers)


@pytest.mark.django_db
def test_the_logs_of_a_local_service_show_what_its_script_printed_with_credentials_hidden(
    client: Client,
    alice: Any,
    bob: Any,
    workspace: Workspace,
    blob_container: ContainerClient,
    azurite: str,
    settings: Any,
    tmp_path: Path,
) -> None:
    settings.VAR_DIR = tmp_path
    service = local_service(workspace, write_script(tmp_path, SCRIPT), collect_model_data=True)
    driver = drivers.local_driver(workspace.storage_secret)
    spec = actions.desired_spec(service, 1)
    client.force_login(bob)  # a reader may read the log
    assert "Nothing in the log yet." in _logs_page(client, service).content.decode()

    driver.apply(spec)
    try:
        state = wait_until(
            lambda: (s := driver.rollout_state(spec)).finished and s, timeout=60, message="the service to start"
        )
        assert state.status == "Healthy", state.reason
        for rows in ([[1, 2]], [[1, 2], [3, 4]]):
            body = json.dumps({"data": rows}).encode()
            with urllib.request.urlopen(urllib.request.Request(state.scoring_url, data=body), timeout=10) as answer:
                assert answer.read() == str(len(rows)).encode()

        page = wait_until(
            lambda: "scored 2 rows" in (text := _logs_page(client, service).content.decode()) and text,
            timeout=10,
            message="the script's output in the log",
        )
        assert "model loaded" in page
        assert page.index("scored 1 rows") < page.index("scored 2 rows")  # the newest last
        assert "storage: &lt;hidden&gt;" in page
        assert "&amp;sig=&lt;hidden&gt;" in page
        assert "c2VjcmV0LXNpZw" not in page
        key = dict(part.split("=", 1) for part in azurite.split(";") if "=" in part)["AccountKey"]
        assert key not in page
        assert azurite not in page

        # What the page asks every 5 s: the log's text alone, for the same number of lines.
        refresh = _logs_page(client, service, "?lines=100", **{"HX-Request": "true"})
        assert refresh["Cache-Control"] == "no-store"
        assert "HX-Request" in refresh["Vary"]
        partial = refresh.content.decode()
        assert "scored 2 rows" in partial
        assert "<pre" not in partial

        whole = _api_logs(client, service, bob)
        assert whole.status_code == 200
        assert "scored 2 rows" in whole.json()["log"]
        assert key not in json.dumps(whole.json())

        def last_two() -> bool:  # the collector may log meanwhile: compare two reads that saw the same log
            two = _api_logs(client, service, bob, "?lines=2").json()["log"].splitlines()
            return len(two) == 2 and two == _api_logs(client, service, bob).json()["log"].splitlines()[-2:]

        wait_until(last_two, timeout=10, message="the log's last two lines")
    finally:
        driver.remove(spec)


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (
            "AccountName=dev;AccountKey=Eby8vd==;BlobEndpoint=http://x",
            "AccountName=dev;AccountKey=<hidden>;BlobEndpoint",
        ),
        ("GET https://a.blob.core.windows.net/c/b?sv=2020&sig=abc%2Fdef&se=1", "?sv=2020&sig=<hidden>&se=1"),
        ('headers {"Authorization": "Bearer eyJhbGciOi.x.y"}', '{"Authorization": "Bearer <hidden>"}'),
        ("send: b'GET / HTTP/1.1\\r\\nauthorization: Bearer eyJhbGciOi.x.y'", "authorization: Bearer <hidden>'"),
        ("psycopg2.connect(password='s3cret')", "psycopg2.connect(password='<hidden>')"),
        ("{'password': 'x'}", "{'password': '<hidden>'}"),
        ('"access_token": "tok-123"', '"access_token": "<hidden>"'),
        ("AZURE_CLIENT_SECRET=abcdef DB_PASSWORD=hunter2", "AZURE_CLIENT_SECRET=<hidden> DB_PASSWORD=<hidden>"),
        ("x-api-key: k123", "x-api-key: <hidden>"),
        ("postgresql://scorer:pw@db:5432/x", "postgresql://scorer:<hidden>@db:5432/x"),
        ("InstrumentationKey=0000-1111;IngestionEndpoint=https://x/", "InstrumentationKey=<hidden>;IngestionEndpoint"),
        (
            "loss=0.3 token_count=5 tokens: 12, Bearer tokens are short",
            "loss=0.3 token_count=5 tokens: 12, Bearer tokens",
        ),
    ],
)
def test_credentials_in_the_shapes_logs_quote_them_are_hidden(line: str, shown: str) -> None:
    assert shown in logs.without_secrets(line)


@pytest.mark.parametrize(
    "text",
    [
        "Authorization:" + " " * 2_000_000,
        "a_" * 1_000_000,
        "x" * 2_000_000 + "://",
        "a://b:" + "c" * 2_000_000,
        "Bearer " + "A" * 2_000_000,
        "password=" * 200_000,
    ],
    ids=["spaces after a name", "many word starts", "a long scheme", "a URL without @", "a long token", "names"],
)
def test_hiding_them_takes_time_in_proportion_to_the_log_whatever_it_holds(text: str) -> None:
    started = time.perf_counter()
    logs.without_secrets(text)
    assert time.perf_counter() - started < 2.0  # about 0.4 s at worst here; quadratic would be hours


@pytest.mark.django_db
def test_the_page_offers_a_few_lengths_and_takes_any_other_as_the_default(
    client: Client, alice: Any, workspace: Workspace, settings: Any, tmp_path: Path
) -> None:
    settings.VAR_DIR = tmp_path
    service = ServiceFactory(workspace=workspace, name="churn")
    client.force_login(alice)

    for query, shown in (
        ("", 500),
        ("?lines=2000", 2000),
        ("?lines=7", 500),
        ("?lines=abc", 500),
        ("?lines=%C2%B2", 500),
    ):
        page = _logs_page(client, service, query).content.decode()
        assert f'<option value="{shown}" selected>' in page, query
        assert f'?lines={shown}" hx-trigger="every 5s' in page


@pytest.mark.django_db
@pytest.mark.parametrize("lines", ["0", "5001", "-1", "ten", "%C2%B2", "9" * 5000])
def test_the_api_refuses_a_number_of_lines_it_cannot_give(
    client: Client, alice: Any, workspace: Workspace, lines: str
) -> None:
    service = ServiceFactory(workspace=workspace, name="churn")

    response = _api_logs(client, service, alice, f"?lines={lines}")

    assert response.status_code == 400
    assert response.json() == {"error": "lines must be a whole number from 1 to 5000."}


@pytest.mark.django_db
def test_to_outsiders_the_logs_do_not_exist(client: Client, charlie: Any, workspace: Workspace) -> None:
    service = ServiceFactory(workspace=workspace, name="churn")
    client.force_login(charlie)

    assert _logs_page(client, service).status_code == 404
    assert _api_logs(client, service, charlie).status_code == 404


@pytest.mark.django_db
def test_the_logs_of_a_kubernetes_service_are_its_pods_logs_pod_by_pod(
    client: Client, bob: Any, workspace: Workspace, cluster: ComputeTarget, kube: Any
) -> None:
    service = on_cluster(
        ServiceFactory(workspace=workspace, name="churn", compute_target=cluster, image="r.example/c:1")
    )
    cluster_pod(kube, "churn-5d8f-b", "churn")
    cluster_pod(kube, "churn-5d8f-a", "churn")
    cluster_pod(kube, "fraud-77c4-a", "fraud")  # another service's
    cluster_pod(kube, "churn-by-hand", "churn", managed=False)  # not made by Tributary
    kube.set_pod_log("ml", "churn-5d8f-a", "init done\nscored 3 rows\nscored 4 rows\n")
    kube.set_pod_log("ml", "churn-5d8f-b", "init done\nAccountKey=abc123== in a traceback\n")
    kube.set_pod_log("ml", "fraud-77c4-a", "fraud's line\n")

    response = _api_logs(client, service, bob, "?lines=2")

    assert response.status_code == 200
    assert response.json()["log"] == (
        "==> pod churn-5d8f-a <==\nscored 3 rows\nscored 4 rows\n\n"
        "==> pod churn-5d8f-b <==\ninit done\nAccountKey=<hidden> in a traceback"
    )
    client.force_login(bob)
    page = _logs_page(client, service).content.decode()
    assert "==&gt; pod churn-5d8f-a &lt;==" in page
    assert "pods wrote" in " ".join(page.split())
    assert "fraud" not in page
    assert "abc123" not in page


# A kubeconfig's exec plugin (AKS's kubelogin, EKS's aws, GKE's gke-gcloud-auth-plugin): a process that prints a
# token; this one also notes each time it runs.
CREDENTIAL_PLUGIN = """
import json, sys
with open(sys.argv[1], "a") as runs:
    runs.write("ran\\n")
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": sys.argv[2]}}))
"""


def _kubeconfig_with_plugin(kube: Any, path: Path, runs: Path, token: str) -> None:
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": ["-c", CREDENTIAL_PLUGIN, str(runs), token],
        }
    }
    path.write_text(json.dumps({**kube.kubeconfig_dict(), "users": [{"name": "tester", "user": user}]}))


@pytest.mark.django_db
def test_the_pages_refreshes_run_the_kubeconfigs_credential_plugin_once_until_the_kubeconfig_changes(
    client: Client, bob: Any, workspace: Workspace, cluster: ComputeTarget, kube: Any, tmp_path: Path
) -> None:
    runs = tmp_path / "plugin-runs"
    _kubeconfig_with_plugin(kube, Path(cluster.kubeconfig_path), runs, kube.token)
    service = on_cluster(
        ServiceFactory(workspace=workspace, name="churn", compute_target=cluster, image="r.example/c:1")
    )
    cluster_pod(kube, "churn-5d8f-a", "churn")
    kube.set_pod_log("ml", "churn-5d8f-a", "scored 3 rows\n")
    client.force_login(bob)

    def refreshed() -> str:
        return _logs_page(client, service, **{"HX-Request": "true"}).content.decode()

    def plugin_runs() -> int:
        return len(runs.read_text().splitlines())

    # The Logs and Runtime sections read the cluster every 5 s for each open page: one client made for the
    # deployment serves them all, and the plugin ran once.
    for _ in range(3):
        assert "scored 3 rows" in refreshed()
    runtime = client.get(reverse("deployments:service-runtime", args=[service.pk]), headers={"HX-Request": "true"})
    assert "None of the service's 1 pods answers" in runtime.content.decode()  # it has no IP here
    assert plugin_runs() == 1

    # A changed kubeconfig (here, credentials the cluster refuses) is read at the next refresh; so is its repair.
    _kubeconfig_with_plugin(kube, Path(cluster.kubeconfig_path), runs, "revoked")
    assert "The log could not be read: Could not list the service&#x27;s pods: HTTP 401" in refreshed()
    _kubeconfig_with_plugin(kube, Path(cluster.kubeconfig_path), runs, kube.token)
    assert "scored 3 rows" in refreshed()
    assert "scored 3 rows" in refreshed()
    assert plugin_runs() == 3


@pytest.mark.django_db
def test_a_pod_log_that_is_not_utf8_shows_with_replacement_characters(
    client: Client, alice: Any, workspace: Workspace, cluster: ComputeTarget, kube: Any
) -> None:
    service = on_cluster(
        ServiceFactory(workspace=workspace, name="churn", compute_target=cluster, image="r.example/c:1")
    )
    cluster_pod(kube, "churn-5d8f-a", "churn")
    kube.set_pod_log("ml", "churn-5d8f-a", b"caf\xe9 ordered\n")  # Latin-1, as an old library may print it
    client.force_login(alice)

    page = _logs_page(client, service)

    assert page.status_code == 200
    assert "caf\ufffd ordered" in page.content.decode()


@pytest.mark.django_db
def test_a_service_of_the_same_name_in_another_workspace_sharing_the_namespace_sees_none_of_its_pods(
    client: Client, alice: Any, charlie: Any, workspace: Workspace, cluster: ComputeTarget, kube: Any
) -> None:
    on_cluster(ServiceFactory(workspace=workspace, name="churn", compute_target=cluster, image="r.example/c:1"))
    cluster_pod(kube, "churn-5d8f-a", "churn")
    kube.set_pod_log("ml", "churn-5d8f-a", "alice's line\n")
    theirs = charlie.memberships.get().workspace
    twin = ServiceFactory(  # its deployment was refused: the Deployment of that name is alice's service's
        workspace=theirs,
        name="churn",
        compute_target=ComputeTargetFactory(
            workspace=theirs,
            kind=ComputeTarget.Kind.KUBERNETES,
            kubeconfig_path=cluster.kubeconfig_path,
            namespace="ml",
        ),
        image="r.example/c:1",
    )

    response = _api_logs(client, twin, charlie)

    assert response.status_code == 200
    assert response.json()["log"] == ""
    client.force_login(charlie)
    page = _logs_page(client, twin).content.decode()
    assert "alice" not in page
    assert "Nothing in the log yet." in page


@pytest.mark.django_db
def test_when_the_cluster_does_not_answer_the_page_says_so_and_the_api_answers_502(
    client: Client, alice: Any, workspace: Workspace, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    gone = ComputeTargetFactory(
        workspace=workspace, name="gone", kind=ComputeTarget.Kind.KUBERNETES, kubeconfig_path=str(kubeconfig)
    )
    service = ServiceFactory(workspace=workspace, name="churn", compute_target=gone, image="registry.example/c:1")
    client.force_login(alice)

    page = _logs_page(client, service)
    assert page.status_code == 200
    assert "The log could not be read: Could not list the service&#x27;s pods: the cluster did not answer" in (
        page.content.decode()
    )
    response = _api_logs(client, service, alice)
    assert response.status_code == 502
    assert response.json()["error"].startswith("Could not list the service's pods: the cluster did not answer")


@pytest.fixture
def ws(live_server: Any, alice: Any, workspace: Workspace) -> SdkWorkspace:
    _, key = ApiToken.issue(alice, "notebook")
    return SdkWorkspace("sub-0001", "rg-ml", "alices-team", url=live_server.url, token=key)


@pytest.mark.django_db(transaction=True)
def test_the_sdk_gets_the_logs_as_the_legacy_get_logs_did(
    ws: SdkWorkspace, workspace: Workspace, cluster: ComputeTarget, kube: Any
) -> None:
    on_cluster(ServiceFactory(workspace=workspace, name="churn", compute_target=cluster, image="r.example/churn:1"))
    cluster_pod(kube, "churn-5d8f-a", "churn")
    kube.set_pod_log("ml", "churn-5d8f-a", "".join(f"line {n}\n" for n in range(6000)))
    service = Webservice(ws, "churn")

    assert service.get_logs().splitlines()[1:3] == ["line 1000", "line 1001"]  # 5,000 lines by default
    assert service.get_logs(num_lines=1) == "==> pod churn-5d8f-a <==\nline 5999"
    with pytest.warns(UserWarning, match="no init container"):
        assert service.get_logs(num_lines=1, init=True).endswith("line 5999")
    with pytest.raises(WebserviceException, match="lines must be a whole number from 1 to 5000"):
        service.get_logs(num_lines=0)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_chromium_the_page_follows_the_end_of_the_log_and_waits_while_the_reader_scrolls_up(
    page: Any, live_server: Any, alice: Any, workspace: Workspace, settings: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    settings.VAR_DIR = tmp_path
    service = ServiceFactory(workspace=workspace, name="churn")
    log = tmp_path / "services" / f"service-{service.pk}" / "runtime.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {n}\n" for n in range(400)))
    log_in(page, f"{live_server.url}/services/{service.pk}/logs/", "alice")
    pre = page.get_by_test_id("log")

    def wait_at_end() -> None:  # the page's script runs after the text shows: wait for it, within a deadline
        page.wait_for_function(
            "() => { const e = document.querySelector('pre.log');"
            " return e.scrollTop > 0 && e.scrollTop + e.clientHeight >= e.scrollHeight - 8 }",
            timeout=10_000,
        )

    expect(pre).to_contain_text("line 399")
    wait_at_end()  # the newest lines are in view
    with log.open("a") as handle:
        handle.write("scored 7 rows\n")
    expect(pre).to_contain_text("scored 7 rows", timeout=15_000)  # refreshed every 5 s
    wait_at_end()

    # The reader goes back to read: the refreshes wait, so the text stays put; back at the end, they go on.
    pre.evaluate("e => { e.scrollTop = 100; e.dispatchEvent(new Event('scroll')) }")
    assert page.evaluate("window.logFollowing") is False
    with log.open("a") as handle:
        handle.write("scored 8 rows\n")
    pre.evaluate("e => { e.scrollTop = e.scrollHeight; e.dispatchEvent(new Event('scroll')) }")
    expect(pre).to_contain_text("scored 8 rows", timeout=15_000)
    wait_at_end()
