"""Checks of the services the portal depends on, for the health page and `make run`."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection

from deployments import blobs, tasks


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _broker() -> None:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    finally:
        client.close()


def _worker() -> None:
    if tasks.ping.delay().get(timeout=3) != "pong":
        raise RuntimeError("unexpected answer")


def _storage() -> None:
    blobs.probe(timeout=3)


CHECKS: dict[str, Callable[[], None]] = {
    "database": _database,
    "broker": _broker,
    "worker": _worker,
    "storage": _storage,
}


def run_checks() -> dict[str, dict[str, object]]:
    """Run every check; each result says ok or the error's class, never its message (it may hold a secret)."""
    results: dict[str, dict[str, object]] = {}
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            check()
            status = "ok"
        except Exception as exc:
            status = f"error: {type(exc).__name__}"
        results[name] = {"status": status, "ms": round((time.perf_counter() - started) * 1000, 1)}
    return results
