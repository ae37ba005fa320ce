"""Thin access to the blob storage that holds collected model data, built lazily once per process.

Every read is bounded: listings are one page (delimiter listing, continuation token), previews are ranged reads
of the bytes they show, downloads are streamed in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobPrefix, BlobServiceClient, ContainerClient
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import Http404

DOWNLOAD_CHUNK = 4 * 1024 * 1024


@cache
def _client(connection_string: str) -> BlobServiceClient:
    # Downloads come in 4 MiB pieces (the SDK's first GET would otherwise take up to 32 MiB at once).
    return BlobServiceClient.from_connection_string(
        connection_string, max_single_get_size=DOWNLOAD_CHUNK, max_chunk_get_size=DOWNLOAD_CHUNK
    )


def service_client() -> BlobServiceClient:
    if not settings.BLOB_CONNECTION_STRING:
        raise ImproperlyConfigured("BLOB_CONNECTION_STRING is not set")
    return _client(settings.BLOB_CONNECTION_STRING)


def container() -> ContainerClient:
    return service_client().get_container_client(settings.BLOB_CONTAINER)


def probe(timeout: float = 3.0) -> None:
    """Raise unless blob storage answers within `timeout` seconds: one try, no SDK retries (a health check)."""
    if not settings.BLOB_CONNECTION_STRING:
        raise ImproperlyConfigured("BLOB_CONNECTION_STRING is not set")
    client = BlobServiceClient.from_connection_string(
        settings.BLOB_CONNECTION_STRING, retry_total=0, connection_timeout=timeout, read_timeout=timeout
    )
    with client:
        client.get_service_properties(timeout=int(timeout))


class BadListing(ValueError):
    """The listing asked for cannot be made; the message is for the user."""


@dataclass(frozen=True)
class Entry:
    """One row of a folder listing: a sub-folder (a common prefix) or a blob."""

    name: str  # the full blob name or prefix
    is_folder: bool
    size: int | None = None
    last_modified: datetime | None = None

    @property
    def leaf(self) -> str:
        return self.name.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Listing:
    entries: list[Entry]
    next_token: str | None


def list_folder(prefix: str, *, page_token: str | None = None, page_size: int = 200) -> Listing:
    """One page of the folders and blobs directly under `prefix` (which ends with "/")."""
    pages: Any = (  # the SDK's pager: an iterator of pages that also carries the next continuation token
        container()
        .walk_blobs(name_starts_with=prefix, delimiter="/", results_per_page=page_size)
        .by_page(continuation_token=page_token or None)
    )
    try:
        items = list(next(pages))
    except StopIteration:
        items = []
    except ResourceNotFoundError:  # no container yet: nothing was collected
        return Listing([], None)
    except HttpResponseError as exc:
        if exc.status_code == 400:  # a continuation token that the storage did not issue
            raise BadListing("That page of the listing does not exist: start again from the folder.") from exc
        raise
    entries = [
        Entry(item.name, True)
        if isinstance(item, BlobPrefix)
        else Entry(item.name, False, item.size, item.last_modified)
        for item in items
    ]
    return Listing(entries, pages.continuation_token or None)


def list_blobs(prefix: str, *, limit: int = 5000) -> list[Entry]:
    """Blobs (flat) under `prefix`, at most `limit`: for summaries over a bounded range of days."""
    entries = []
    try:
        for item in container().list_blobs(name_starts_with=prefix, results_per_page=min(limit, 5000)):
            entries.append(Entry(item.name, False, item.size, item.last_modified))
            if len(entries) >= limit:
                break
    except ResourceNotFoundError:
        return []
    return entries


def size_of(name: str) -> int:
    try:
        return int(container().get_blob_client(name).get_blob_properties().size)
    except ResourceNotFoundError as exc:
        raise Http404("No such file") from exc


def read_range(name: str, offset: int, length: int) -> bytes:
    """`length` bytes from `offset` (fewer at the end of the blob); one ranged GET."""
    if length <= 0:
        return b""
    try:
        return container().download_blob(name, offset=offset, length=length, max_concurrency=1).readall()
    except ResourceNotFoundError as exc:
        raise Http404("No such file") from exc


def stream(name: str) -> tuple[int, Iterator[bytes]]:
    """The blob's size and its bytes in chunks, for a streamed download that never holds the whole file."""
    try:
        downloader = container().download_blob(name, max_concurrency=1)
    except ResourceNotFoundError as exc:
        raise Http404("No such file") from exc
    return int(downloader.size), downloader.chunks()
