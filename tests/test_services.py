"""Each real service the tests rely on really works: a round trip through every one of them."""

from __future__ import annotations

import pytest
from azure.storage.blob import ContainerClient
from django.db import connection

from deployments import tasks


def test_it_round_trips_a_blob_through_azurite(blob_container: ContainerClient) -> None:
    blob_container.upload_blob("a/b/data.csv", b"x,y\n1,2\n")

    assert [b.name for b in blob_container.list_blobs(name_starts_with="a/")] == ["a/b/data.csv"]
    assert blob_container.download_blob("a/b/data.csv").readall() == b"x,y\n1,2\n"


@pytest.mark.django_db(transaction=True)
def test_it_round_trips_a_task_through_a_real_worker(celery_worker: object) -> None:
    result = tasks.ping.delay()

    assert result.get(timeout=10) == "pong"


@pytest.mark.django_db
def test_it_runs_on_the_configured_database_engine() -> None:
    import os

    expected = "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"
    assert connection.vendor == expected
