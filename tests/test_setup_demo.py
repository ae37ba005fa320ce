from __future__ import annotations

import re
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from deployments.models import Membership, Workspace


def _run(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name in ("DJANGO_SUPERUSER_USERNAME", "DJANGO_SUPERUSER_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = StringIO()
    call_command("setup_demo", stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_it_creates_the_demo_workspace_owned_by_a_superuser(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _run(monkeypatch, DJANGO_SUPERUSER_USERNAME="ops", DJANGO_SUPERUSER_PASSWORD="s3cret-enough")

    user = authenticate(username="ops", password="s3cret-enough")
    assert user is not None
    assert user.is_superuser
    assert user.is_staff
    membership = Membership.objects.get(user=user)
    assert membership.workspace.path == "demo-subscription/demo-rg/demo"
    assert membership.role == Membership.Role.OWNER
    assert "s3cret-enough" not in out


@pytest.mark.django_db
def test_it_generates_and_prints_a_password_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _run(monkeypatch)

    password = re.search(r"Log in as admin with the generated password: (\S+)", out).group(1)
    assert len(password) >= 16
    assert authenticate(username="admin", password=password) is not None


@pytest.mark.django_db
def test_it_generates_a_different_password_on_each_machine(
    monkeypatch: pytest.MonkeyPatch, django_user_model: Any
) -> None:
    first = _run(monkeypatch)
    django_user_model.objects.all().delete()
    second = _run(monkeypatch)

    assert first != second


@pytest.mark.django_db
def test_it_is_idempotent_and_keeps_an_existing_password(monkeypatch: pytest.MonkeyPatch) -> None:
    password = re.search(r"password: (\S+)", _run(monkeypatch)).group(1)

    out = _run(monkeypatch)

    assert "printed when it was created" in out
    assert authenticate(username="admin", password=password) is not None
    assert Workspace.objects.count() == 1
    assert Membership.objects.count() == 1


@pytest.mark.django_db
def test_it_deploys_the_demo_service_on_this_machine_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments import tasks
    from deployments.models import Service, ServiceUpdate

    monkeypatch.setattr(tasks.apply_service_update, "delay", lambda update_id: None)
    _run(monkeypatch)
    _run(monkeypatch)

    service = Service.objects.get()
    assert (service.name, service.compute_target.kind, service.collect_model_data) == ("demo-scoring", "local", True)
    assert service.entry_script.endswith("examples/score.py")
    assert [str(m) for m in service.models.all()] == ["sample-model:1"]
    assert ServiceUpdate.objects.filter(service=service).count() == 1


@pytest.mark.django_db
def test_start_local_services_redeploys_them_through_the_task_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments import tasks
    from deployments.models import AuditEvent, Service, ServiceUpdate

    queued: list[int] = []
    monkeypatch.setattr(tasks.apply_service_update, "delay", queued.append)
    _run(monkeypatch)
    out = StringIO()

    call_command("start_local_services", stdout=out)

    service = Service.objects.get()
    assert "Starting 1 local service(s)." in out.getvalue()
    assert ServiceUpdate.objects.filter(service=service).count() == 2
    assert AuditEvent.objects.filter(action=AuditEvent.Action.SERVICE_REDEPLOYED, actor_name="system").count() == 1
