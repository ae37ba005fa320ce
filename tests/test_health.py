from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse


@pytest.mark.django_db(transaction=True)
def test_it_reports_every_service_healthy(client: Client, alice: Any, celery_worker: Any, blob_container: Any) -> None:
    client.force_login(alice)

    response = client.get(reverse("deployments:health"))

    assert response.status_code == 200
    body = response.json()
    assert body["healthy"] is True
    assert {name: check["status"] for name, check in body["checks"].items()} == {
        "database": "ok",
        "broker": "ok",
        "worker": "ok",
        "storage": "ok",
    }


@pytest.mark.django_db
def test_it_reports_unreachable_storage_without_its_secret(
    client: Client, alice: Any, redis_url: str, settings: Any
) -> None:
    settings.BLOB_CONNECTION_STRING = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=c2VjcmV0;"
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    client.force_login(alice)

    response = client.get(reverse("deployments:health"))

    assert response.status_code == 503
    assert response.json()["checks"]["storage"]["status"].startswith("error")
    assert b"c2VjcmV0" not in response.content


def test_it_requires_login(client: Client, db: None) -> None:
    assert client.get(reverse("deployments:health")).status_code == 302


@pytest.mark.django_db(transaction=True)
def test_the_command_exits_non_zero_when_a_service_is_down(redis_url: str, settings: Any) -> None:
    settings.BLOB_CONNECTION_STRING = ""
    out = StringIO()

    with pytest.raises(CommandError, match=r"unhealthy: .*storage"):
        call_command("healthcheck", stdout=out)
    assert "database   ok" in out.getvalue()
