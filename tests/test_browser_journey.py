"""The whole journey of DESIGN.md step 3 in Chromium: a real portal, a real worker, the Kubernetes test server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from deployments.models import ComputeTarget, Workspace
from tests.factories import ComputeTargetFactory, ServiceFactory


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_it_unchecks_data_collection_and_follows_the_update_until_healthy(
    page: Page, live_server: Any, alice: Any, workspace: Workspace, kube: Any, kubeconfig: Path, celery_worker: Any
) -> None:
    cluster = ComputeTargetFactory(
        workspace=workspace,
        name="aks",
        kind=ComputeTarget.Kind.KUBERNETES,
        kubeconfig_path=str(kubeconfig),
        namespace="ml",
    )
    ServiceFactory(
        workspace=workspace,
        name="churn",
        compute_target=cluster,
        image="registry.example/churn:7",
        entry_script="",
        collect_model_data=True,
    )
    kube.rollout(name="churn", delay=2.5, outcome="available")

    page.goto(live_server.url)
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("password")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Deployments").click()
    page.get_by_role("link", name="churn").click()
    page.get_by_role("link", name="Edit").click()
    page.get_by_text("Advanced settings").click()
    checkbox = page.get_by_label("Enable model data collection")
    expect(checkbox).to_be_checked()
    checkbox.uncheck()
    page.get_by_label("Reason").fill("stop collecting for the audit")
    page.get_by_role("button", name="Update").click()

    state = page.get_by_test_id("service-state")
    expect(state).to_have_text("Transitioning")
    expect(page.locator("#status")).to_contain_text("Running")
    # htmx polling follows the rollout: no reload.
    expect(state).to_have_text("Healthy", timeout=30_000)
    expect(page.locator("#status")).to_contain_text("Succeeded")
    expect(page.locator("#status")).not_to_have_attribute("hx-trigger", "every 1s")

    page.get_by_role("link", name="Full audit log of churn").click()
    row = page.locator("table.audit tbody tr").filter(has_text="service.settings_changed")
    expect(row).to_contain_text("alice")
    expect(row).to_contain_text("collect_model_data: True → False")
    expect(row).to_contain_text("stop collecting for the audit")
    expect(page.locator("table.audit")).to_contain_text("service.update_succeeded")
