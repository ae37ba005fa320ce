from __future__ import annotations

from typing import Any

from django.test import Client
from django.urls import reverse

from tests.factories import WorkspaceFactory


def test_it_lists_only_my_workspaces_with_my_role(client: Client, alice: Any, charlie: Any) -> None:
    client.force_login(alice)

    response = client.get(reverse("deployments:home"))

    assert response.status_code == 200
    assert b"alices-team" in response.content
    assert b"Owner" in response.content
    assert charlie.workspaces.get().name.encode() not in response.content


def test_it_shows_the_top_navigation(client: Client, alice: Any) -> None:
    client.force_login(alice)

    response = client.get(reverse("deployments:home"))

    assert b">Workspaces</a>" in response.content
    assert b">Deployments</a>" in response.content
    # CSRF goes once on <body> for htmx, and htmx comes from django-htmx, not a CDN.
    assert b'<body hx-headers=\'{"X-CSRFToken": "' in response.content
    assert b'<script src="/static/django_htmx/htmx-2.min.js"' in response.content
    assert b"https://" not in response.content


def test_staff_find_the_admin_in_the_navigation_and_others_do_not(client: Client, alice: Any) -> None:
    client.force_login(alice)
    assert b">Admin</a>" not in client.get(reverse("deployments:home")).content

    alice.is_staff = True
    alice.save()

    response = client.get(reverse("deployments:home"))
    assert b'href="/admin/"' in response.content
    assert b'<link rel="icon" href="/static/img/favicon.svg"' in response.content


def test_it_explains_when_i_have_no_workspace(client: Client, django_user_model: Any) -> None:
    user = django_user_model.objects.create_user("dora", password="password")
    client.force_login(user)

    response = client.get(reverse("deployments:home"))

    assert b"not a member of any workspace" in response.content


def test_it_escapes_workspace_names(client: Client, alice: Any) -> None:
    alice.memberships.update(workspace=WorkspaceFactory(name="x<script>"))
    client.force_login(alice)

    response = client.get(reverse("deployments:home"))

    assert b"x&lt;script&gt;" in response.content
    assert b"x<script>" not in response.content


def test_it_sends_deployments_to_my_first_workspace(client: Client, alice: Any) -> None:
    client.force_login(alice)

    response = client.get(reverse("deployments:deployments"))

    workspace = alice.workspaces.get()
    assert response["Location"] == reverse("deployments:service-list", args=[workspace.pk])


def test_it_hides_other_workspaces_with_404(client: Client, alice: Any, charlie: Any) -> None:
    client.force_login(charlie)

    response = client.get(reverse("deployments:service-list", args=[alice.workspaces.get().pk]))

    assert response.status_code == 404
