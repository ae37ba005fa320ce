"""In Chromium: an owner manages a workspace's members, and a user makes, uses and revokes an API token."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from deployments.models import AuditEvent, Workspace
from tests.conftest import log_in
from tests.factories import UserFactory


def _api_status(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            json.load(response)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_an_owner_adds_a_member_changes_a_role_and_removes_a_member(
    page: Page, live_server: Any, alice: Any, bob: Any, workspace: Workspace
) -> None:
    UserFactory(username="dave")
    log_in(page, f"{live_server.url}/w/{workspace.pk}/deployments/", "alice")
    page.get_by_role("link", name="Members").click()

    page.get_by_label("User name").fill("dave")
    page.get_by_label("Role", exact=True).select_option("Contributor")
    page.get_by_role("button", name="Add").click()
    rows = page.locator("table.grid tbody tr")
    expect(rows.filter(has_text="dave")).to_have_count(1)
    expect(page.get_by_label("Role of dave")).to_have_value("contributor")

    page.get_by_label("Role of bob").select_option("Owner")
    rows.filter(has_text="bob").get_by_role("button", name="Change").click()
    expect(page.get_by_label("Role of bob")).to_have_value("owner")

    # Removing asks first: cancelled, nothing changes; confirmed, the member goes.
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.get_by_role("button", name="Remove dave").click()
    expect(rows.filter(has_text="dave")).to_have_count(1)
    assert asked == [f"Remove dave from {workspace.name}? They lose access to its services and data."]
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Remove dave").click()
    expect(rows.filter(has_text="dave")).to_have_count(0)
    # A user who does not exist is a form error on the same page, and nobody is added.
    page.get_by_label("User name").fill("nobody-by-that-name")
    page.get_by_role("button", name="Add").click()
    expect(page.get_by_role("alert").or_(page.locator(".errorlist"))).to_be_visible()
    expect(rows).to_have_count(2)

    page.get_by_role("link", name="audit log").click()
    audit = page.locator("table.audit")
    expect(audit).to_contain_text("dave")
    actions = set(AuditEvent.objects.filter(workspace=workspace).values_list("action", flat=True))
    assert {"member.added", "member.role_changed", "member.removed"} <= actions


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_token_made_in_the_browser_works_for_the_api_until_revoked(
    page: Page, live_server: Any, alice: Any, workspace: Workspace
) -> None:
    log_in(page, live_server.url, "alice")
    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Name").fill("laptop <b>")
    page.get_by_role("button", name="Create token").click()

    token = page.get_by_test_id("new-token").inner_text()
    api = f"{live_server.url}/api/v1/workspaces/"
    assert _api_status(api, token) == 200
    row = page.locator("table.grid tbody tr").filter(has_text="laptop <b>")
    expect(row).to_contain_text(token[:8])
    page.reload()
    expect(page.get_by_test_id("new-token")).to_have_count(0)  # shown once only
    assert token not in page.content()

    page.get_by_role("button", name="Revoke laptop <b>").click()
    expect(page.get_by_text("You have no tokens.")).to_be_visible()
    assert _api_status(api, token) == 401
