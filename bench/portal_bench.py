"""Portal pages at scale: the Deployments page of a workspace with 5,000 services; the collected-data listing of
a folder holding 10,000 blobs; the preview of the first 100 rows of a 200 MB blob beside a full download of the
same blob. One command, one run, one table:

    .venv/bin/python bench/portal_bench.py [--services 5000] [--blobs 10000] [--megabytes 200] [--repeat 15]

The pages are requested through Django's test client (URL routing, access checks, templates and all), logged in,
against a private Azurite and a throwaway SQLite database.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def timed(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    fn()  # warm-up: connections, template caches
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=5_000)
    parser.add_argument("--blobs", type=int, default=10_000)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    import devstack

    azurite = devstack.start_azurite()
    var = Path(tempfile.mkdtemp(prefix="tributary-bench-"))
    os.environ.update(DEBUG="true", VAR_DIR=str(var), BLOB_CONNECTION_STRING=azurite.url, LOG_LEVEL="WARNING")
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from azure.storage.blob import BlobServiceClient
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.urls import reverse

    from deployments import blobs
    from deployments.models import ComputeTarget, Membership, Model, Service, Workspace

    setup_test_environment()
    settings.ALLOWED_HOSTS = ["testserver"]
    call_command("migrate", verbosity=0)
    user = django.contrib.auth.get_user_model().objects.create_user("bench", password="bench")  # type: ignore[attr-defined]
    workspace = Workspace.objects.create(subscription_id="sub", resource_group="rg", name="ws")
    Membership.objects.create(workspace=workspace, user=user, role=Membership.Role.OWNER)
    client = Client()
    client.force_login(user)
    target = ComputeTarget.objects.create(workspace=workspace, name="local")
    model = Model.objects.create(workspace=workspace, name="best_model", version=1, path="/models/best")
    services = Service.objects.bulk_create(
        Service(workspace=workspace, name=f"svc-{i:05d}", compute_target=target, state="Healthy")
        for i in range(args.services)
    )
    Service.models.through.objects.bulk_create(
        Service.models.through(service_id=s.pk, model_id=model.pk) for s in services
    )

    container = BlobServiceClient.from_connection_string(azurite.url).get_container_client(settings.BLOB_CONTAINER)
    container.create_container()
    folder = f"{workspace.path}/many/best_model/1/inputs/2026/11"
    print(f"uploading {args.blobs} small blobs and one {args.megabytes} MB blob to Azurite ...", file=sys.stderr)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: container.upload_blob(f"{folder}/{i:05d}.csv", b"a,b\n1,2\n"), range(args.blobs)))
    row = b"0.123456,0.654321,text-value-of-some-length,42,-1.5,2026-11-24T00:00:00Z\n"
    body = b"f1,f2,f3,f4,f5,ts\n" + row * (args.megabytes * 1024 * 1024 // len(row))
    container.upload_blob(f"{workspace.path}/big/data.csv", body)

    services_url = reverse("deployments:service-list", args=[workspace.pk])
    browse_url = reverse("deployments:data-browser", args=[workspace.pk])

    def deployments_page() -> None:
        response = client.get(services_url, {"page": "40"})
        assert response.status_code == 200
        assert len(response.context["page"].object_list) == 50

    def deployments_filtered() -> None:
        response = client.get(services_url, {"q": "svc-0499", "state": "Healthy"}, headers={"HX-Request": "true"})
        assert response.status_code == 200
        assert len(response.context["page"].object_list) == 10

    preview_url = reverse("deployments:data-preview", args=[workspace.pk])

    def listing_page() -> None:
        response = client.get(browse_url, {"path": "many/best_model/1/inputs/2026/11"})
        assert response.status_code == 200
        assert len(response.context["entries"]) == 200

    def preview_page() -> None:
        response = client.get(preview_url, {"blob": "big/data.csv", "rows": "100"})
        assert response.status_code == 200
        assert len(response.context["head"].rows) == 100

    def full_download() -> None:
        size, chunks = blobs.stream(f"{workspace.path}/big/data.csv")
        assert sum(len(c) for c in chunks) == size

    results = [
        (f"Deployments page 40 of {args.services:,} services", timed(deployments_page, args.repeat), 100),
        ("Deployments filtered by name and state (htmx)", timed(deployments_filtered, args.repeat), 100),
        (f"data listing page: 200 of {args.blobs:,} blobs", timed(listing_page, args.repeat), 200),
        (f"preview page: first 100 rows (+ last 100) of {args.megabytes} MB", timed(preview_page, args.repeat), 150),
        (f"full download of the same {args.megabytes} MB blob", timed(full_download, max(3, args.repeat // 5)), None),
    ]
    azurite.stop()

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; Azurite 3.35 in memory"
    )
    print(f"{'measurement':58} {'median ms':>10} {'p95 ms':>8} {'target':>8}")
    for name, samples, target in results:
        p95 = sorted(samples)[max(0, round(len(samples) * 0.95) - 1)]
        median = statistics.median(samples)
        verdict = "" if target is None else (f"< {target}" + (" ok" if median < target else " MISSED"))
        print(f"{name:58} {median:10.1f} {p95:8.1f} {verdict:>8}")
    download = statistics.median(results[-1][1])
    print(f"\npreview / full download: {statistics.median(results[-2][1]) / download:.3f} of the time")


if __name__ == "__main__":
    main()
