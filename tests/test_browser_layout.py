"""In Chromium on a phone's screen (390 px wide): every page fits its width, a wide table scrolls in its own box,
and the top bar's links, Log out included, stay on the screen and on one line with each other."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page

from deployments.models import AuditEvent, ServiceUpdate, Workspace
from tests.conftest import log_in
from tests.factories import ServiceFactory

PHONE = {"width": 390, "height": 844}


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_on_a_phone_every_page_fits_the_screen(
    page: Page, live_server: Any, alice: Any, workspace: Workspace, settings: Any, tmp_path: Any
) -> None:
    settings.VAR_DIR = tmp_path
    service = ServiceFactory(
        workspace=workspace,
        name="customer-churn-prediction-eu-2",
        scoring_url="http://127.0.0.1:40123/a/rather/long/path/to/the/scoring/endpoint/of/this/service/score",
    )
    # An update row and an audit row, the widest tables.
    ServiceUpdate.objects.create(
        service=service,
        desired_spec={},
        status=ServiceUpdate.Status.FAILED,
        requested_by=alice,
        error="Could not apply the Deployment: HTTP 422 Deployment.apps is invalid: spec.template.spec.containers",
    )
    AuditEvent.objects.create(
        actor=alice,
        actor_name="alice",
        workspace=workspace,
        action=AuditEvent.Action.SERVICE_SETTINGS_CHANGED,
        target_type="service",
        target_id=service.pk,
        target_repr=service.name,
        changes={"collect_model_data": [False, True]},
        reason="A reason long enough to need more than one line on a phone's narrow screen, as reasons often are",
    )
    page.set_viewport_size(PHONE)
    log_in(page, f"{live_server.url}/", "alice")

    for path in (
        "/",
        f"/w/{workspace.pk}/deployments/",
        f"/services/{service.pk}/",
        f"/services/{service.pk}/edit/",
        f"/services/{service.pk}/logs/",
        f"/w/{workspace.pk}/audit/",
        f"/w/{workspace.pk}/members/",
        "/account/tokens/",
    ):
        page.goto(f"{live_server.url}{path}")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} is {width} px wide"
        log_out = page.get_by_role("button", name="Log out").bounding_box()
        tokens = page.get_by_role("link", name="API tokens").bounding_box()
        assert log_out is not None
        assert tokens is not None
        assert log_out["x"] + log_out["width"] <= PHONE["width"], path
        # On one line with the link beside it (a button's default margin once put it lower).
        assert abs((log_out["y"] + log_out["height"] / 2) - (tokens["y"] + tokens["height"] / 2)) <= 1, path


BROKEN_WORDS = """cell => {
  // The words (between spaces) of the cell that are split over two lines.
  const broken = [];
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (const match of node.data.matchAll(/\\S+/g)) {
      const range = document.createRange();
      range.setStart(node, match.index);
      range.setEnd(node, match.index + match[0].length);
      const tops = [];
      for (const rect of range.getClientRects()) {
        if (rect.width > 0 && !tops.some(top => Math.abs(top - rect.top) < 4)) tops.push(rect.top);
      }
      if (tops.length > 1) broken.push(match[0]);
    }
  }
  return broken;
}"""


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_on_a_desktop_the_audit_tables_break_no_short_word(
    page: Page, live_server: Any, alice: Any, workspace: Workspace, settings: Any, tmp_path: Any
) -> None:
    # Who and Action once broke mid-word ("syste|m", "service.update_succeed|ed") at 1280 px: every cell of the
    # table could break anywhere, so the long Changes and Reason cells squeezed the short ones.
    settings.VAR_DIR = tmp_path
    service = ServiceFactory(workspace=workspace, name="customer-churn-prediction-eu-2")
    common = {"workspace": workspace, "target_type": "service", "target_id": service.pk, "target_repr": service.name}
    AuditEvent.objects.create(
        actor=None,
        actor_name="system",
        action=AuditEvent.Action.SERVICE_UPDATE_SUCCEEDED,
        changes={"update": [None, 1]},
        **common,
    )
    AuditEvent.objects.create(
        actor=alice,
        actor_name="alice",
        action=AuditEvent.Action.SERVICE_CREATED,
        changes={"entry_script": [None, "/srv/scripts/customer-churn/score.py"], "models": [None, ["churn:1"]]},
        # A reason may be one long URL: it still wraps inside its cell rather than widening the page.
        reason="https://tickets.example.org/browse/" + "ML-4242/" * 20,
        **common,
    )
    page.set_viewport_size({"width": 1280, "height": 900})
    log_in(page, f"{live_server.url}/", "alice")

    for path in (f"/w/{workspace.pk}/audit/", f"/services/{service.pk}/"):
        page.goto(f"{live_server.url}{path}")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280, path
        for row in page.locator("table.audit tbody tr").all():
            for column in (1, 2, 3):  # When, Who, Action
                cell = row.locator("td").nth(column - 1)
                assert cell.evaluate(BROKEN_WORDS) == [], path
