from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from deployments import tasks
from deployments.models import AuditEvent, Service, ServiceUpdate, Workspace
from tests.factories import ServiceFactory


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sent: list[int] = []
    monkeypatch.setattr(tasks.apply_service_update, "delay", sent.append)
    return sent


def _update(workspace: Workspace, **fields: Any) -> ServiceUpdate:
    return ServiceUpdate.objects.create(service=ServiceFactory(workspace=workspace), desired_spec={}, **fields)


def _reconcile() -> str:
    out = StringIO()
    call_command("reconcile_updates", stdout=out)
    return out.getvalue()


def test_it_requeues_expired_running_and_lost_pending_updates(workspace: Workspace, queued: list[int]) -> None:
    past = timezone.now() - timedelta(minutes=5)
    expired = _update(workspace, status=ServiceUpdate.Status.RUNNING, attempts=1, lease_until=past)
    lost = _update(workspace)
    ServiceUpdate.objects.filter(pk=lost.pk).update(created=past)
    _update(
        workspace, status=ServiceUpdate.Status.RUNNING, attempts=1, lease_until=timezone.now() + timedelta(minutes=5)
    )
    _update(workspace)  # just created: its task is on its way
    _update(workspace, attempts=1, started=timezone.now() - timedelta(minutes=1))  # its retry is scheduled
    overdue = _update(workspace, attempts=1, started=timezone.now() - timedelta(hours=1))
    _update(workspace, status=ServiceUpdate.Status.SUCCEEDED, finished=past)

    out = _reconcile()

    assert sorted(queued) == sorted([expired.pk, lost.pk, overdue.pk])
    assert "Re-enqueued 3 update(s)" in out


def test_it_fails_updates_out_of_attempts(workspace: Workspace, queued: list[int], settings: Any) -> None:
    update = _update(
        workspace,
        status=ServiceUpdate.Status.RUNNING,
        attempts=settings.UPDATE_MAX_ATTEMPTS,
        lease_until=timezone.now() - timedelta(seconds=1),
    )

    out = _reconcile()

    assert queued == []
    update.refresh_from_db()
    assert update.status == ServiceUpdate.Status.FAILED
    assert "Gave up after" in update.error
    assert update.service.state == Service.State.FAILED
    assert AuditEvent.objects.get().action == AuditEvent.Action.SERVICE_UPDATE_FAILED
    assert "failed 1" in out
