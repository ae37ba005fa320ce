"""Scoring keys ("Require a key to score", Azure ML's auth_enabled): the Keys page, the REST API, the SDK's
get_keys(), regen_key() and run(), and a local service that refuses requests without one of its keys."""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from playwright.sync_api import Page, expect

from deployments import actions, drivers, keys
from deployments import runtime as service_runtime
from deployments.compute import DesiredSpec
from deployments.compute.kubernetes import container_env
from deployments.compute.local import LocalDriver
from deployments.models import ApiToken, AuditEvent, ComputeTarget, ScoringKey, Service, ServiceUpdate, Workspace
from scoring import config as scoring_config
from tests.conftest import cluster_pod, log_in, wait_until
from tests.factories import EXAMPLE_SCRIPT, ServiceFactory, local_service
from tests.test_scoring_runtime import start_runtime, write_script
from tributary_sdk import InferenceConfig, LocalWebservice, Model, Webservice, WebserviceException
from tributary_sdk import Workspace as SdkWorkspace


@pytest.fixture
def service(workspace: Workspace) -> Service:
    return ServiceFactory(workspace=workspace, name="churn", auth_enabled=True)


def _keys(service: Service) -> dict[str, str]:
    return {key.slot: keys.unseal(key.sealed) for key in service.keys.all()}


def _keys_page(client: Client, service: Service) -> Any:
    return client.get(reverse("deployments:service-keys", args=[service.pk]))


def _regenerate(client: Client, service: Service, slot: str) -> Any:
    return client.post(reverse("deployments:service-keys", args=[service.pk]), {"slot": slot}, follow=True)


def _api(client: Client, service: Service, user: Any, body: dict[str, Any] | None = None) -> Any:
    url = reverse("deployments:api-service-keys", args=[service.workspace_id, service.name])
    headers = {"Authorization": f"Bearer {ApiToken.issue(user, 'test')[1]}"}
    if body is None:
        return client.get(url, headers=headers)
    return client.post(url, json.dumps(body), content_type="application/json", headers=headers)


# --- the page -------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_those_who_may_change_a_service_read_its_two_keys_on_a_page_no_cache_keeps(
    client: Client, carol: Any, service: Service
) -> None:
    client.force_login(carol)
    detail = client.get(reverse("deployments:service-detail", args=[service.pk])).content.decode()
    found = _keys(service)

    page = _keys_page(client, service)

    assert page.status_code == 200
    assert page["Cache-Control"] == "no-store"
    text = page.content.decode()
    assert found["primary"] in text
    assert found["secondary"] in text
    assert found["primary"] != found["secondary"]
    # The service's page says a key is required and links here, but never holds a key itself.
    assert "Required" in detail
    assert reverse("deployments:service-keys", args=[service.pk]) in detail
    assert found["primary"] not in detail


@pytest.mark.django_db
def test_readers_see_that_a_key_is_required_but_not_the_keys_and_outsiders_see_nothing(
    client: Client, bob: Any, charlie: Any, service: Service
) -> None:
    client.force_login(bob)
    detail = client.get(reverse("deployments:service-detail", args=[service.pk])).content.decode()
    assert "Required" in detail
    assert reverse("deployments:service-keys", args=[service.pk]) not in detail
    assert _keys_page(client, service).status_code == 403
    assert _regenerate(client, service, "primary").status_code == 403

    client.force_login(charlie)
    assert _keys_page(client, service).status_code == 404
    assert _regenerate(client, service, "primary").status_code == 404
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.SERVICE_KEY_REGENERATED).exists()


@pytest.mark.django_db
def test_regenerating_a_key_replaces_it_alone_and_updates_the_service_to_accept_only_the_new_one(
    client: Client, alice: Any, service: Service
) -> None:
    client.force_login(alice)
    before = _keys(service)

    page = _regenerate(client, service, "primary")

    after = _keys(service)
    assert after["primary"] != before["primary"]
    assert after["secondary"] == before["secondary"]
    update = ServiceUpdate.objects.get(service=service)
    assert f"once update #{update.pk} has finished" in page.content.decode()
    assert f"Update #{update.pk} is still being applied" in page.content.decode()
    assert after["primary"] in page.content.decode()  # back on the Keys page, with the new key
    spec = DesiredSpec.from_json(update.desired_spec)
    assert spec.key_hashes == (keys.key_hash(after["primary"]), keys.key_hash(after["secondary"]))
    event = AuditEvent.objects.get(action=AuditEvent.Action.SERVICE_KEY_REGENERATED)
    assert (event.actor_name, event.changes) == (
        "alice",
        {"primary key": ["old", "new, generated"], "update": [None, update.pk]},
    )
    # Neither key is anywhere but sealed in its row: not in the spec, the audit log or the row itself.
    stored = json.dumps(update.desired_spec) + json.dumps(event.changes)
    stored += "".join(ScoringKey.objects.values_list("sealed", flat=True))
    for key in (*before.values(), *after.values()):
        assert key not in stored
    assert Service.objects.get(pk=service.pk).state == Service.State.TRANSITIONING


@pytest.mark.django_db
def test_a_key_regenerated_while_none_is_required_needs_no_update(
    client: Client, alice: Any, workspace: Workspace
) -> None:
    service = ServiceFactory(workspace=workspace, name="open", auth_enabled=False)
    client.force_login(alice)

    page = _regenerate(client, service, "secondary")

    assert "The service requires no key yet" in page.content.decode()
    assert "Once a key is required, a client sends it so:" in page.content.decode()  # the curl example's header
    assert not ServiceUpdate.objects.filter(service=service).exists()
    assert Service.objects.get(pk=service.pk).state == Service.State.HEALTHY


@pytest.mark.django_db
def test_a_regeneration_that_names_no_key_or_comes_during_deletion_changes_nothing(
    client: Client, alice: Any, service: Service
) -> None:
    client.force_login(alice)
    before = _keys(service)

    page = _regenerate(client, service, "tertiary")
    assert "Say which key to regenerate" in page.content.decode()

    Service.objects.filter(pk=service.pk).update(state=Service.State.DELETING)
    page = _regenerate(client, service, "primary")
    assert "churn is being deleted" in page.content.decode()

    assert _keys(service) == before
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.SERVICE_KEY_REGENERATED).exists()


@pytest.mark.django_db
def test_a_new_service_asks_for_a_key_unless_unticked_and_the_edit_switches_it_with_an_audit_row(
    client: Client, alice: Any, service: Service
) -> None:
    client.force_login(alice)
    create = client.get(reverse("deployments:service-create", args=[service.workspace_id])).content.decode()
    assert re.search(r'<input type="checkbox" name="auth_enabled"[^>]* checked>', create)

    actions.do_update_service(service, expected_version=service.version, acting_user=alice, auth_enabled=False)

    update = ServiceUpdate.objects.get(service=service)
    assert DesiredSpec.from_json(update.desired_spec).key_hashes == ()
    event = AuditEvent.objects.get(action=AuditEvent.Action.SERVICE_SETTINGS_CHANGED)
    assert event.changes == {"auth_enabled": [True, False]}


# --- sealing --------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_keys_sealed_under_another_secret_key_say_so_and_can_be_regenerated(
    client: Client, alice: Any, service: Service, settings: Any
) -> None:
    before = _keys(service)
    old_secret = settings.SECRET_KEY
    settings.SECRET_KEY = "a-new-secret-key-" + "x" * 40
    client.force_login(alice)  # a session made under the new secret key

    page = _keys_page(client, service).content.decode()
    assert "sealed with another SECRET_KEY" in page
    assert _api(client, service, alice).status_code == 409

    settings.SECRET_KEY_FALLBACKS = [old_secret]  # the documented rotation: the old key still opens them
    assert _keys(service) == before

    settings.SECRET_KEY_FALLBACKS = []
    _regenerate(client, service, "primary")
    assert keys.unseal(service.keys.get(slot="primary").sealed) not in before.values()


@pytest.mark.django_db
def test_the_reseal_command_lets_the_old_secret_key_go_and_names_the_keys_no_secret_opens(
    service: Service, workspace: Workspace, settings: Any
) -> None:
    old_secret = settings.SECRET_KEY
    lost = ServiceFactory(workspace=workspace, name="lost")
    settings.SECRET_KEY = "a-secret-key-long-gone-" + "y" * 40  # lost's secondary key is sealed under this one
    ScoringKey.objects.filter(pk=lost.keys.get(slot="secondary").pk).update(sealed=keys.seal(keys.generate()))
    settings.SECRET_KEY = old_secret
    before = _keys(service)
    digests = {k.slot: k.digest for k in service.keys.all()}
    updates = ServiceUpdate.objects.count()
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "a-new-secret-key-" + "x" * 40, [old_secret]
    out = io.StringIO()

    with pytest.raises(CommandError, match=rf"1 key\(s\) open with neither.*{workspace.name} / lost: secondary"):
        call_command("reseal_scoring_keys", stdout=out)

    assert "Sealed 3 scoring key(s) with the current SECRET_KEY." in out.getvalue()
    settings.SECRET_KEY_FALLBACKS = []  # the old secret key gone: the resealed keys still open, unchanged
    assert _keys(service) == before
    assert {k.slot: k.digest for k in service.keys.all()} == digests
    assert keys.unseal(lost.keys.get(slot="primary").sealed)
    with pytest.raises(keys.UnreadableKey):
        keys.unseal(lost.keys.get(slot="secondary").sealed)
    assert ServiceUpdate.objects.count() == updates  # no service moves: its keys did not change


@pytest.mark.django_db
def test_services_deployed_before_keys_existed_get_theirs_from_the_migration(workspace: Workspace) -> None:
    service = ServiceFactory(workspace=workspace, name="older")
    service.keys.all().delete()
    migration = importlib.import_module("deployments.migrations.0008_scoring_keys")

    migration.give_every_service_its_keys(apps, None)

    found = _keys(service)
    assert sorted(found) == ["primary", "secondary"]
    assert all(len(key) >= keys.MIN_LENGTH for key in found.values())
    assert not Service.objects.get(pk=service.pk).auth_enabled  # required only once someone says so


# --- the REST API ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_api_gives_the_keys_to_contributors_only(
    client: Client, carol: Any, bob: Any, charlie: Any, service: Service
) -> None:
    answer = _api(client, service, carol)
    assert answer.status_code == 200
    found = _keys(service)
    assert answer.json() == {"primary_key": found["primary"], "secondary_key": found["secondary"]}

    assert _api(client, service, bob).status_code == 403
    assert _api(client, service, charlie).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"key_type": "Tertiary"}, "key_type must be 'Primary' or 'Secondary'"),
        ({}, "key_type must be 'Primary' or 'Secondary'"),
        ({"key_type": "Primary", "key": "short"}, "32 to 128 characters"),
        ({"key_type": "Primary", "key": "x" * 31 + " "}, "without spaces"),
        ({"key_type": "Primary", "key": 12345}, "32 to 128 characters"),
        ({"key_type": "Primary", "colour": "red"}, "Unknown parameters: colour"),
    ],
)
def test_the_api_refuses_a_regeneration_it_cannot_do_and_changes_nothing(
    client: Client, alice: Any, service: Service, body: dict[str, Any], said: str
) -> None:
    before = _keys(service)

    answer = _api(client, service, alice, body)

    assert answer.status_code == 400
    assert said in answer.json()["error"]
    assert _keys(service) == before
    assert not ServiceUpdate.objects.filter(service=service).exists()


@pytest.mark.django_db
def test_the_api_sets_a_key_the_user_chose_and_answers_the_update_that_applies_it(
    client: Client, alice: Any, service: Service
) -> None:
    chosen = "my-own-key-" + "k" * 30

    answer = _api(client, service, alice, {"key_type": "Secondary", "key": chosen, "reason": "rotation"})

    assert answer.status_code == 202
    update = ServiceUpdate.objects.get(service=service)
    assert answer.json()["update"]["id"] == update.pk
    assert answer.json()["service"]["state"] == "Transitioning"
    assert _keys(service)["secondary"] == chosen
    event = AuditEvent.objects.get(action=AuditEvent.Action.SERVICE_KEY_REGENERATED)
    assert event.changes["secondary key"] == ["old", "new, given by the user"]
    assert event.reason == "rotation"


# --- the drivers ----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_pods_get_the_keys_digests_not_the_keys(service: Service) -> None:
    spec = actions.desired_spec(service, 1)

    env = {e["name"]: e.get("value") for e in container_env(spec)}

    found = _keys(service)
    digests = env[scoring_config.KEY_HASHES].split(",")
    assert digests == [keys.key_hash(found["primary"]), keys.key_hash(found["secondary"])]
    assert not any(key in json.dumps(env) for key in found.values())
    service.keys.all().delete()  # required, but no key to give: every request is refused, none let through
    assert {e["name"]: e.get("value") for e in container_env(actions.desired_spec(service, 2))}[
        scoring_config.KEY_HASHES
    ] == ""
    open_service = ServiceFactory(workspace=service.workspace, name="open", auth_enabled=False)
    assert scoring_config.KEY_HASHES not in {e["name"] for e in container_env(actions.desired_spec(open_service, 2))}


# --- end to end: a local service, the SDK, a real Celery worker ------------------------------------------------


def _score(url: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, data=json.dumps({"data": [list(range(10))]}).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.django_db(transaction=True)
def test_a_local_service_that_requires_a_key_scores_only_with_one_and_takes_a_regenerated_one(
    live_server: Any, alice: Any, workspace: Workspace, own_workers: Any, tmp_path: Path
) -> None:
    own_workers.start(VAR_DIR=str(tmp_path))
    local_service(workspace, EXAMPLE_SCRIPT).delete()  # its target and model stay, for the SDK to deploy onto
    ws = SdkWorkspace("sub-0001", "rg-ml", "alices-team", url=live_server.url, token=ApiToken.issue(alice, "nb")[1])
    try:
        service = Model.deploy(
            ws,
            "churn",
            ["sample-model:1"],
            InferenceConfig(entry_script=str(EXAMPLE_SCRIPT)),
            deployment_config=LocalWebservice.deploy_configuration(auth_enabled=True),
            deployment_target="this-machine",
        )
        service.wait_for_deployment(timeout_sec=60)
        assert service.auth_enabled

        # run() sends the key: a JSON string as the legacy SDK took it, or what json.dumps takes.
        rows = [list(range(10)), list(range(10, 20))]  # the sample model takes 10 features
        answer = service.run(json.dumps({"data": rows}))
        assert len(answer) == 2
        assert service.run({"data": rows}) == answer
        old_primary, secondary = service.get_keys()
        assert _score(service.scoring_uri, None) == 401
        assert _score(service.scoring_uri, "not-a-key") == 401
        assert _score(service.scoring_uri, old_primary) == 200

        service.regen_key("Primary")  # returns once the service takes the new key

        new_primary, still_secondary = service.get_keys()
        assert (new_primary != old_primary, still_secondary) == (True, secondary)
        assert _score(service.scoring_uri, old_primary) == 401
        assert _score(service.scoring_uri, new_primary) == 200
        assert _score(service.scoring_uri, secondary) == 200
        assert service.state == "Healthy"
        with pytest.raises(WebserviceException, match="key_type must be 'Primary' or 'Secondary'"):
            service.regen_key("primary key")

        Webservice(ws, "churn").update(auth_enabled=False)
        Webservice(ws, "churn").wait_for_deployment(timeout_sec=60)
        assert _score(service.scoring_uri, None) == 200

        read_while_open = Webservice(ws, "churn")
        Webservice(ws, "churn").update(auth_enabled=True)
        Webservice(ws, "churn").wait_for_deployment(timeout_sec=60)
        # Its 401 makes run() read the service again and send the key it now needs.
        assert read_while_open.run({"data": rows}) == answer
    finally:
        LocalDriver(tmp_path / "services").stop_all()


# --- in Chromium ----------------------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_chromium_a_contributor_finds_the_keys_and_regenerates_one_after_a_question(
    page: Page, live_server: Any, carol: Any, workspace: Workspace
) -> None:
    service = ServiceFactory(workspace=workspace, name="churn", auth_enabled=False)  # no update to wait for
    before = _keys(service)
    log_in(page, f"{live_server.url}{reverse('deployments:service-detail', args=[service.pk])}", "carol")
    expect(page.get_by_test_id("auth")).to_contain_text("anyone who reaches the scoring URL may score")

    page.get_by_role("link", name="Keys").click()
    expect(page.get_by_test_id("primary-key")).to_have_text(before["primary"])
    expect(page.get_by_test_id("secondary-key")).to_have_text(before["secondary"])
    questions: list[str] = []

    def answer(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.once("dialog", answer)
    page.get_by_role("button", name="Regenerate the secondary key").click()

    expect(page.get_by_text("Regenerated the secondary key of churn.")).to_be_visible()
    after = _keys(service)
    expect(page.get_by_test_id("secondary-key")).to_have_text(after["secondary"])
    assert after["secondary"] != before["secondary"]
    assert after["primary"] == before["primary"]
    assert questions == [
        "Regenerate the secondary key of churn? Clients that send it are refused once the service has been updated."
    ]


@pytest.mark.django_db
def test_an_api_edit_of_another_setting_leaves_the_key_required(client: Client, alice: Any, service: Service) -> None:
    url = reverse("deployments:api-service", args=[service.workspace_id, service.name])
    headers = {"Authorization": f"Bearer {ApiToken.issue(alice, 'test')[1]}"}

    answer = client.patch(
        url, json.dumps({"collect_model_data": True}), content_type="application/json", headers=headers
    )

    assert answer.status_code == 202
    assert answer.json()["auth_enabled"] is True
    spec = DesiredSpec.from_json(ServiceUpdate.objects.get(service=service).desired_spec)
    assert len(spec.key_hashes) == 2
    bad = client.patch(url, json.dumps({"auth_enabled": "no"}), content_type="application/json", headers=headers)
    assert (bad.status_code, bad.json()["error"]) == (400, "auth_enabled must be true or false.")


@pytest.mark.django_db
def test_a_kubernetes_rollout_that_requires_a_key_is_healthy_only_once_its_pods_say_they_check_keys(
    workspace: Workspace, cluster: ComputeTarget, kube: Any, tmp_path: Path
) -> None:
    service = ServiceFactory(
        workspace=workspace, name="churn", compute_target=cluster, image="r.example/churn:1", auth_enabled=True
    )
    driver = drivers.driver_for(service)
    spec = actions.desired_spec(service, 1)
    driver.apply(spec)
    script = write_script(tmp_path, "def init():\n    pass\n\ndef run(raw):\n    return raw\n")
    digests = ",".join(spec.key_hashes)
    checking = start_runtime(script, tmp_path, env={scoring_config.KEY_HASHES: digests})
    # What an image built on a runtime older than scoring keys does: it ignores SCORING_KEY_HASHES.
    older = start_runtime(script, tmp_path)
    try:
        for runtime in (checking, older):
            runtime.wait_ready()
        healthy = wait_until(
            lambda: (state := driver.rollout_state(spec)).status != "Failed" and state, message="the rollout"
        )
        assert healthy.status == "Transitioning"  # no pod has said it checks keys yet
        assert "Waiting for the pods" in healthy.reason

        cluster_pod(kube, "churn-7d4-a", "churn", status_port=checking.port, ip="127.0.0.1")
        assert driver.rollout_state(spec).status == "Healthy"

        cluster_pod(kube, "churn-7d4-b", "churn", status_port=older.port, ip="127.0.0.1")
        state = driver.rollout_state(spec)
        assert state.status == "Failed"
        assert "r.example/churn:1 does not check keys" in state.reason
        # A service that requires no key does not ask.
        assert driver.rollout_state(dataclasses.replace(spec, require_key=False, key_hashes=())).status == "Healthy"
    finally:
        for runtime in (checking, older):
            runtime.stop()


@pytest.mark.django_db
def test_a_kubernetes_rollout_that_requires_a_key_fails_at_once_when_the_pod_proxy_is_forbidden(
    workspace: Workspace, cluster: ComputeTarget, kube: Any
) -> None:
    # Without pods/proxy the pods cannot be asked: the update says so now rather than at its deadline, minutes on.
    service = ServiceFactory(
        workspace=workspace, name="churn", compute_target=cluster, image="r.example/churn:1", auth_enabled=True
    )
    driver = drivers.driver_for(service)
    spec = actions.desired_spec(service, 1)
    driver.apply(spec)
    cluster_pod(kube, "churn-7d4-a", "churn", ip="127.0.0.1")
    kube.emulator.pod_proxy_forbidden = True

    state = wait_until(lambda: (state := driver.rollout_state(spec)).status != "Transitioning" and state)

    assert state.status == "Failed"
    assert 'cannot get resource "pods/proxy"' in state.reason
    assert "the kubeconfig's user needs pods/proxy get" in state.reason
    # The service page's runtime figures say the same, instead of "no pod answers".
    assert "needs pods/proxy get" in service_runtime.of_service(service).error


@pytest.mark.django_db
def test_the_edit_form_unticked_stops_requiring_a_key_and_ticked_keeps_it(
    client: Client, alice: Any, service: Service
) -> None:
    client.force_login(alice)
    url = reverse("deployments:service-edit", args=[service.pk])
    form = {
        "models": [m.pk for m in service.models.all()],
        "entry_script": service.entry_script,
        "replicas": 1,
        "version": service.version,
    }

    client.post(url, {**form, "auth_enabled": "on", "replicas": 2})
    assert Service.objects.get(pk=service.pk).auth_enabled  # another change leaves it on
    client.post(url, {**form, "version": service.version + 1})  # the box unticked: absent from the post

    assert not Service.objects.get(pk=service.pk).auth_enabled
    assert AuditEvent.objects.filter(changes__auth_enabled=[True, False]).count() == 1


@pytest.mark.django_db
def test_a_service_deployed_through_the_api_requires_a_key_unless_told_otherwise(
    client: Client, alice: Any, workspace: Workspace
) -> None:
    template = ServiceFactory(workspace=workspace, name="template")
    url = reverse("deployments:api-services", args=[workspace.pk])
    headers = {"Authorization": f"Bearer {ApiToken.issue(alice, 'test')[1]}"}
    body = {
        "compute_target": template.compute_target.name,
        "models": [str(m) for m in template.models.all()],
        "entry_script": str(EXAMPLE_SCRIPT),
    }

    default = client.post(url, json.dumps({**body, "name": "keyed"}), content_type="application/json", headers=headers)
    told = client.post(
        url,
        json.dumps({**body, "name": "open", "auth_enabled": False}),
        content_type="application/json",
        headers=headers,
    )

    assert (default.status_code, default.json()["auth_enabled"]) == (202, True)
    assert (told.status_code, told.json()["auth_enabled"]) == (202, False)


@pytest.mark.django_db
def test_a_service_deployed_with_the_keys_its_clients_hold_takes_them_and_the_audit_says_so_without_them(
    client: Client, alice: Any, workspace: Workspace
) -> None:
    template = ServiceFactory(workspace=workspace, name="template")
    url = reverse("deployments:api-services", args=[workspace.pk])
    headers = {"Authorization": f"Bearer {ApiToken.issue(alice, 'test')[1]}"}
    held = "k" * 40
    body = {
        "compute_target": template.compute_target.name,
        "models": [str(m) for m in template.models.all()],
        "entry_script": str(EXAMPLE_SCRIPT),
    }

    too_short = client.post(
        url, json.dumps({**body, "name": "moved", "primary_key": "short"}), "application/json", headers=headers
    )
    not_text = client.post(
        url, json.dumps({**body, "name": "moved", "secondary_key": 42}), "application/json", headers=headers
    )
    answer = client.post(
        url, json.dumps({**body, "name": "moved", "primary_key": held}), "application/json", headers=headers
    )

    assert (too_short.status_code, too_short.json()["error"]) == (400, "A key must be 32 to 128 characters long.")
    assert (not_text.status_code, not_text.json()["error"]) == (400, "primary_key and secondary_key must be strings.")
    assert answer.status_code == 202, answer.content
    service = Service.objects.get(name="moved")
    found = _keys(service)
    assert found["primary"] == held
    assert len(found["secondary"]) == 43  # generated
    created = AuditEvent.objects.get(action=AuditEvent.Action.SERVICE_CREATED, target_id=service.pk)
    assert created.changes["primary key"] == [None, "given by the user"]
    assert "secondary key" not in created.changes
    assert held not in json.dumps(created.changes)
    assert Service.objects.filter(workspace=workspace).count() == 2  # the refused ones made nothing


def test_the_sdk_keeps_the_keys_of_deploy_configuration_and_never_shows_them() -> None:
    from tributary_sdk import AksWebservice

    config = AksWebservice.deploy_configuration(primary_key="p" * 40, secondary_key="s" * 40)

    assert (config.primary_key, config.secondary_key) == ("p" * 40, "s" * 40)
    assert "p" * 40 not in repr(config)


@pytest.mark.django_db
def test_readers_cannot_regenerate_a_key_through_the_api(client: Client, bob: Any, service: Service) -> None:
    before = _keys(service)

    answer = _api(client, service, bob, {"key_type": "Primary"})

    assert answer.status_code == 403
    assert _keys(service) == before


@pytest.mark.django_db
def test_the_api_takes_the_key_type_in_any_case_as_azureml_core_did(
    client: Client, alice: Any, service: Service
) -> None:
    before = _keys(service)

    answer = _api(client, service, alice, {"key_type": "primary"})

    assert answer.status_code == 202
    assert _keys(service)["primary"] != before["primary"]
    assert _api(client, service, alice)["Cache-Control"] == "no-store"
