from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse


def test_it_shows_the_login_page(client: Client, db: None) -> None:
    response = client.get(reverse("login"))

    assert response.status_code == 200
    assert b"Log in" in response.content


def test_it_redirects_anonymous_users_to_login(client: Client, db: None) -> None:
    response = client.get(reverse("deployments:home"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_it_logs_in_and_lands_on_workspaces(client: Client, alice: Any) -> None:
    response = client.post(reverse("login"), {"username": "alice", "password": "password"}, follow=True)

    assert response.redirect_chain[-1][0] == reverse("deployments:home")
    assert b"alices-team" in response.content


def test_it_refuses_a_wrong_password(client: Client, alice: Any) -> None:
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})

    assert response.status_code == 200
    assert b"enter a correct username and password" in response.content
    assert "_auth_user_id" not in client.session


def test_it_requires_csrf_on_login(alice: Any) -> None:
    client = Client(enforce_csrf_checks=True)

    response = client.post(reverse("login"), {"username": "alice", "password": "password"})

    assert response.status_code == 403


@pytest.mark.django_db
def test_it_logs_out_with_post_only(client: Client, alice: Any) -> None:
    client.force_login(alice)

    assert client.get(reverse("logout")).status_code == 405
    client.post(reverse("logout"))
    assert "_auth_user_id" not in client.session
