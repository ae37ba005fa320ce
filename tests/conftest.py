"""Personas, workspaces and the real services the tests talk to.

Services are found through their environment variable (REDIS_URL, BLOB_CONNECTION_STRING, DATABASE_URL) or
started on a free loopback port for the session. A service that can be neither found nor started fails the tests
that need it, loudly: nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

import collector
import devstack
from deployments.models import Membership, Workspace
from tests.factories import MembershipFactory, UserFactory, WorkspaceFactory

REPO = Path(__file__).resolve().parent.parent


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02, message: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; fail the test with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(interval)


# --- personas ------------------------------------------------------------------------------------------------


@pytest.fixture
def workspace(db: None) -> Workspace:
    return WorkspaceFactory(name="alices-team")


@pytest.fixture
def alice(workspace: Workspace) -> Any:
    """Owns the workspace."""
    return MembershipFactory(workspace=workspace, user=UserFactory(username="alice"), role=Membership.Role.OWNER).user


@pytest.fixture
def bob(workspace: Workspace) -> Any:
    """Reads the workspace but may not change it."""
    return MembershipFactory(workspace=workspace, user=UserFactory(username="bob"), role=Membership.Role.READER).user


@pytest.fixture
def carol(workspace: Workspace) -> Any:
    """Contributes to the workspace: may change it, like its owner."""
    return MembershipFactory(
        workspace=workspace, user=UserFactory(username="carol"), role=Membership.Role.CONTRIBUTOR
    ).user


@pytest.fixture
def charlie(db: None) -> Any:
    """Belongs to another workspace only."""
    return MembershipFactory(user=UserFactory(username="charlie"), role=Membership.Role.OWNER).user


# --- Azurite -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """A blob storage connection string: BLOB_CONNECTION_STRING's, or a private Azurite's."""
    given = os.environ.get("BLOB_CONNECTION_STRING")
    if given:
        yield given
        return
    try:
        server = devstack.start_azurite()
    except devstack.ServiceError as exc:
        pytest.fail(f"Azurite is needed and could not start: {exc}", pytrace=False)
    yield server.url
    server.stop()


@pytest.fixture
def blob_container(azurite: str, settings: Any) -> Iterator[ContainerClient]:
    """A fresh, empty container for one test; the portal's settings point at it."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    container = BlobServiceClient.from_connection_string(azurite).get_container_client(name)
    container.create_container()
    settings.BLOB_CONNECTION_STRING = azurite
    settings.BLOB_CONTAINER = name
    yield container
    container.delete_container()


@pytest.fixture
def collecting(blob_container: ContainerClient, azurite: str, workspace: Workspace, tmp_path: Path) -> Iterator[None]:
    """The collector as a scoring process of the service `churn` runs it, writing into this test's container."""
    collector.reconfigure(
        {
            "AML_MODEL_DC_STORAGE_ENABLED": "true",
            "AML_MODEL_DC_STORAGE": azurite,
            "AML_MODEL_DC_CONTAINER": blob_container.container_name,
            "AML_MODEL_DC_WORKSPACE": workspace.path,
            "SERVICE_NAME": "churn",
            "AML_MODEL_DC_MODEL_VERSIONS": '{"best_model": "1"}',
            "AML_MODEL_DC_SPOOL_DIR": str(tmp_path / "spool"),
            "AML_MODEL_DC_FLUSH_INTERVAL": "0.1",
        }
    )
    yield
    collector.reconfigure({})


def collect_rows(rows: list[list[Any]]) -> list[str]:
    """Collect each row as one request's input, and its prediction with the request's correlation values."""
    inputs = collector.ModelDataCollector("best_model", designation="inputs", feature_names=["age", "plan"])
    predictions = collector.ModelDataCollector("best_model", designation="predictions", feature_names=["churn"])
    ids = []
    for row in rows:
        correlations = inputs.collect([row])
        predictions.collect(predictions.add_correlations([[1 if row[0] > 40 else 0]], correlations))
        ids.append(correlations["$aml_dc_correlation_id"])
    assert collector.flush(20)
    return ids


@pytest.fixture
def settings_fast(settings: Any) -> Any:
    """Rollouts polled every 50 ms and given up after 10 s, for tests that run the update task in-process."""
    settings.ROLLOUT_POLL_SECONDS = 0.05
    settings.ROLLOUT_TIMEOUT_SECONDS = 10
    return settings


# --- Redis and a real Celery worker --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def celery_queue() -> str:
    # Unique per run, so that a developer's own worker on the same Redis never takes the tests' tasks.
    return f"tributary-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def redis_url(celery_queue: str) -> Iterator[str]:
    """REDIS_URL's server when set (it must answer), else a private Redis; the portal's Celery app uses it."""
    from portal.celery import app

    given = os.environ.get("REDIS_URL")
    server = None
    if given:
        if not devstack.redis_answers(given):
            pytest.fail(f"REDIS_URL={given} is set but does not answer PING", pytrace=False)
    else:
        try:
            server = devstack.start_redis()
        except devstack.ServiceError as exc:
            pytest.fail(f"Redis is needed and could not start: {exc}", pytrace=False)
    url = given or server.url
    app.conf.update(broker_url=url, result_backend=url, task_default_queue=celery_queue)
    yield url
    if server:
        server.stop()


def _database_url_of(settings_dict: dict[str, Any]) -> str:
    """The DATABASE_URL of the test database that pytest-django made, for processes we start."""
    name = str(settings_dict["NAME"])
    if settings_dict["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{name}"
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path=f"/{name}"))


class WorkerProcess:
    """A real `celery -A portal worker` process on this session's queue and test database."""

    def __init__(
        self, redis_url: str, queue: str, database_url: str, log_path: Path, beat: bool = False, **env: str
    ) -> None:
        self.name = f"{queue}-{uuid.uuid4().hex[:6]}@{os.uname().nodename}"
        self.log_path = log_path
        full_env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CELERY_QUEUE": queue,
            "DEBUG": "true",
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            **env,
        }
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "portal",
                    "worker",
                    "--pool=solo",
                    "--loglevel=INFO",
                    f"--queues={queue}",
                    f"--hostname={self.name}",
                    "--without-mingle",
                    "--without-gossip",
                    # Celery beat inside the worker, as `make run` runs it, with a schedule file of its own.
                    *(["--beat", f"--schedule={log_path.parent / self.name}.schedule"] if beat else []),
                ],
                cwd=REPO,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30) -> WorkerProcess:
        from portal.celery import app

        deadline = time.monotonic() + timeout
        while not app.control.ping(timeout=0.5, destination=[self.name]):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"the Celery worker did not start:\n{self.log_path.read_text()[-3000:]}")
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the worker dies in the middle of whatever it does, as on an OOM kill or a lost node."""
        self.process.kill()
        self.process.wait()


class WorkerPool:
    """The workers of this test session, all on its queue; a test can pause them to run its own alone."""

    def __init__(self, redis_url: str, queue: str, database_url: str) -> None:
        self.redis_url, self.queue, self.database_url = redis_url, queue, database_url
        self.workers: list[WorkerProcess] = []

    def start(self, beat: bool = False, **env: str) -> WorkerProcess:
        """Start a worker, e.g. with its own settings as environment variables (and Celery beat in it)."""
        log_path = REPO / "var" / "test-worker.log"
        worker = WorkerProcess(self.redis_url, self.queue, self.database_url, log_path, beat, **env)
        self.workers.append(worker)
        return worker.wait_ready()

    def _running(self) -> list[str]:
        return [w.name for w in self.workers if w.process.poll() is None]

    def pause(self) -> list[str]:
        """Make every running worker stop taking tasks from the queue; returns their names for `resume`."""
        from portal.celery import app

        names = self._running()
        if names:
            app.control.cancel_consumer(self.queue, destination=names, reply=True, timeout=5)
        return names

    def resume(self, names: list[str]) -> None:
        from portal.celery import app

        if names:
            app.control.add_consumer(self.queue, destination=names, reply=True, timeout=5)

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture(scope="session")
def workers(django_db_setup: None, redis_url: str, celery_queue: str) -> Iterator[WorkerPool]:
    from django.db import connection

    pool = WorkerPool(redis_url, celery_queue, _database_url_of(connection.settings_dict))
    yield pool
    pool.stop_all()


@pytest.fixture
def own_workers(workers: WorkerPool) -> Iterator[WorkerPool]:
    """For a test that starts (and kills) its own workers: the session's other workers take no task meanwhile."""
    paused = workers.pause()
    before = len(workers.workers)
    yield workers
    for worker in workers.workers[before:]:
        worker.stop()
    workers.resume(paused)


@pytest.fixture(scope="session")
def celery_worker(workers: WorkerPool) -> WorkerProcess:
    """A worker for the session. Tests that use it need `@pytest.mark.django_db(transaction=True)`, so that the
    worker sees their rows."""
    return workers.start()


# --- Kubernetes API test server -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kube_server() -> Iterator[Any]:
    from devstack.kube import KubeTestServer

    server = KubeTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def kube(kube_server: Any) -> Iterator[Any]:
    """The Kubernetes API test server, emptied for this test, and checked for server-side errors after it."""
    kube_server.reset()
    yield kube_server
    assert kube_server.unexpected_errors == []


@pytest.fixture
def kubeconfig(kube: Any, tmp_path: Path) -> Path:
    """A kubeconfig file for the test server, as a compute target references it."""
    import json

    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(kube.kubeconfig_dict()))
    return path


@pytest.fixture
def cluster(workspace: Workspace, kubeconfig: Path) -> Any:
    """A Kubernetes compute target of the workspace: the test server, namespace `ml`."""
    from deployments.models import ComputeTarget
    from tests.factories import ComputeTargetFactory

    return ComputeTargetFactory(
        workspace=workspace,
        name="aks",
        kind=ComputeTarget.Kind.KUBERNETES,
        kubeconfig_path=str(kubeconfig),
        namespace="ml",
    )


def on_cluster(service: Any) -> Any:
    """The service with its Deployment on the test cluster, as an applied update leaves it."""
    from deployments import actions, drivers

    drivers.driver_for(service).apply(actions.desired_spec(service, 1))
    return service


def cluster_pod(
    kube: Any, name: str, service: str, *, managed: bool = True, status_port: int | None = None, ip: str = ""
) -> None:
    """A pod in namespace `ml` labelled as the service's Deployment labels its pods (nothing runs pods here).
    `status_port`: where its scoring container answers its probes; `ip`: its status.podIP, where the test
    server's pod proxy reaches it (a runtime of this machine at 127.0.0.1)."""
    from kubernetes import client as k8s

    from deployments.compute.kubernetes import MANAGED_BY, SERVICE_LABEL

    labels = {SERVICE_LABEL: service, **({MANAGED_BY[0]: MANAGED_BY[1]} if managed else {})}
    probe = {"httpGet": {"path": "/ready", "port": status_port or 5002}}
    container = {"name": "scoring", "image": "registry.example/churn:1", "readinessProbe": probe}
    core = k8s.CoreV1Api(kube.api_client())
    core.create_namespaced_pod(
        "ml", {"metadata": {"name": name, "labels": labels}, "spec": {"containers": [container]}}
    )
    if ip:
        core.patch_namespaced_pod_status(name, "ml", {"status": {"podIP": ip}})


# --- Chromium ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Debian's Chromium, not a browser that Playwright would download (this machine cannot download one)."""
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.fail(
            "browser tests need Chromium: `apt-get install chromium` (or set CHROMIUM=/path/to/it)", pytrace=False
        )
    return {
        **browser_type_launch_args,
        "executable_path": chromium,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
        ],
    }


def log_in(page: Any, url: str, username: str) -> None:
    """Open `url` in Chromium and log in there as one of the personas (password "password")."""
    page.goto(url)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill("password")
    page.get_by_role("button", name="Log in").click()
