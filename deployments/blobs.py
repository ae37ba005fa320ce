"""Thin access to the blob storage that holds collected model data, built lazily once per process."""

from __future__ import annotations

from functools import cache

from azure.storage.blob import BlobServiceClient
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@cache
def _client(connection_string: str) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(connection_string)


def service_client() -> BlobServiceClient:
    if not settings.BLOB_CONNECTION_STRING:
        raise ImproperlyConfigured("BLOB_CONNECTION_STRING is not set")
    return _client(settings.BLOB_CONNECTION_STRING)


def probe(timeout: float = 3.0) -> None:
    """Raise unless blob storage answers within `timeout` seconds: one try, no SDK retries (a health check)."""
    if not settings.BLOB_CONNECTION_STRING:
        raise ImproperlyConfigured("BLOB_CONNECTION_STRING is not set")
    client = BlobServiceClient.from_connection_string(
        settings.BLOB_CONNECTION_STRING, retry_total=0, connection_timeout=timeout, read_timeout=timeout
    )
    with client:
        client.get_service_properties(timeout=int(timeout))
