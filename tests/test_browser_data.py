"""In Chromium: from a service, open its data, preview today's inputs file and see the rows just collected."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import collect_rows
from tests.factories import ServiceFactory
from tests.test_data_browser import DAY


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_it_previews_todays_inputs_from_the_service_page(
    page: Page, live_server: Any, alice: Any, workspace: Any, collecting: None
) -> None:
    service = ServiceFactory(workspace=workspace, name="churn", collect_model_data=True)
    collect_rows([[33, "basic"], [61, "<script>alert(1)</script>"]])
    page.on("dialog", lambda dialog: pytest.fail(f"a script ran: {dialog.message}"))
    page.goto(f"{live_server.url}/services/{service.pk}/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("password")
    page.get_by_role("button", name="Log in").click()

    page.get_by_role("link", name="Data", exact=True).click()
    for folder in ["best_model/", "1/", "inputs/", *[f"{part}/" for part in DAY.split("/")]]:
        page.get_by_role("link", name=folder, exact=True).click()
    page.get_by_role("link", name="data.csv").click()

    table = page.locator("table.csv").first
    expect(table.locator("thead")).to_contain_text("$aml_dc_correlation_id")
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table.locator("tbody tr").nth(0)).to_contain_text("basic")
    expect(table.locator("tbody tr").nth(1)).to_contain_text("<script>alert(1)</script>")
