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


@pytest.fixture(scope="session")
def celery_worker(
    django_db_setup: None, django_db_blocker: Any, redis_url: str, celery_queue: str
) -> Iterator[subprocess.Popen]:
    """A real `celery -A portal worker` process consuming this session's queue from the test database.

    Tests that use it need `@pytest.mark.django_db(transaction=True)`, so that the worker sees their rows.
    """
    from django.db import connection

    env = dict(os.environ)
    env.update(
        DATABASE_URL=_database_url_of(connection.settings_dict),
        REDIS_URL=redis_url,
        CELERY_QUEUE=celery_queue,
        DEBUG="true",
        DJANGO_SETTINGS_MODULE="portal.settings",
    )
    log = open(REPO / "var" / "test-worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "--pool=solo",
            "--loglevel=INFO",
            f"--queues={celery_queue}",
            f"--hostname=test-{celery_queue}@%h",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    from portal.celery import app

    deadline = time.monotonic() + 30
    while not (app.control.ping(timeout=0.5, destination=[f"test-{celery_queue}@{os.uname().nodename}"])):
        if worker.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            pytest.fail(f"the Celery worker did not start:\n{(REPO / 'var' / 'test-worker.log').read_text()[-3000:]}")
    yield worker
    worker.terminate()
    worker.wait(20)
    log.close()


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
