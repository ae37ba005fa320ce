"""The API tokens page: a user issues a token for the SDK and the REST API, sees it once, and revokes it."""

from __future__ import annotations

import re
from typing import Any

from django.test import Client
from django.urls import reverse

from deployments.models import ApiToken, Workspace

TOKENS = reverse("deployments:api-tokens")


def _api_status(key: str) -> int:
    response = Client().get(reverse("deployments:api-workspaces"), headers={"Authorization": f"Bearer {key}"})
    return response.status_code


def _issue(client: Client, name: str) -> tuple[Any, str]:
    response = client.post(TOKENS, {"name": name})
    match = re.search(r'data-testid="new-token">(trib_[^<]+)<', response.content.decode())
    return response, match.group(1) if match else ""


def test_a_new_token_is_shown_once_and_works_for_the_api(client: Client, alice: Any, workspace: Workspace) -> None:
    client.force_login(alice)

    response, key = _issue(client, "notebook")

    assert response.status_code == 200
    assert key
    assert response["Cache-Control"] == "no-store"
    assert _api_status(key) == 200
    token = ApiToken.objects.get(user=alice)
    assert (token.name, token.prefix) == ("notebook", key[:12])
    assert key not in {token.key_hash, token.prefix}  # only a hash is kept
    later = client.get(TOKENS).content.decode()
    assert "notebook" in later
    assert token.prefix in later
    assert key not in later


def test_a_revoked_token_no_longer_works(client: Client, alice: Any) -> None:
    client.force_login(alice)
    _, key = _issue(client, "ci")
    token = ApiToken.objects.get(user=alice)

    response = client.post(reverse("deployments:api-token-revoke", args=[token.pk]), follow=True)

    assert "Revoked the token ci" in response.content.decode()
    assert not ApiToken.objects.filter(pk=token.pk).exists()
    assert _api_status(key) == 401


def test_nobody_sees_or_revokes_another_users_token(client: Client, alice: Any, bob: Any) -> None:
    token, _ = ApiToken.issue(alice, "alices-laptop")
    client.force_login(bob)

    page = client.get(TOKENS).content.decode()
    response = client.post(reverse("deployments:api-token-revoke", args=[token.pk]))

    assert "alices-laptop" not in page
    assert token.prefix not in page
    assert response.status_code == 404
    assert ApiToken.objects.filter(pk=token.pk).exists()


def test_bad_names_are_form_errors_and_change_nothing(client: Client, alice: Any) -> None:
    ApiToken.issue(alice, "ci")
    client.force_login(alice)

    for name, error in (("ci", "You have a token with this name already."), ("   ", "This field is required.")):
        response, key = _issue(client, name)

        assert response.status_code == 200
        assert error in response.content.decode()
        assert key == ""
    assert ApiToken.objects.filter(user=alice).count() == 1


def test_a_user_has_at_most_twenty_tokens(client: Client, alice: Any) -> None:
    for i in range(20):
        ApiToken.issue(alice, f"t{i}")
    client.force_login(alice)

    response, key = _issue(client, "one-more")

    assert "revoke one you no longer use first" in response.content.decode()
    assert key == ""
    assert ApiToken.objects.filter(user=alice).count() == 20


def test_names_are_escaped(client: Client, alice: Any) -> None:
    ApiToken.issue(alice, "<script>alert(1)</script>")
    client.force_login(alice)

    page = client.get(TOKENS).content.decode()

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_it_needs_a_login_and_csrf(alice: Any) -> None:
    anonymous = Client()
    assert anonymous.get(TOKENS).status_code == 302
    assert anonymous.post(TOKENS, {"name": "x"}).status_code == 302

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    token, _ = ApiToken.issue(alice, "kept")
    assert strict.post(TOKENS, {"name": "x"}).status_code == 403
    assert strict.post(reverse("deployments:api-token-revoke", args=[token.pk])).status_code == 403
    assert list(ApiToken.objects.filter(user=alice).values_list("name", flat=True)) == ["kept"]
    assert strict.get(reverse("deployments:api-token-revoke", args=[token.pk])).status_code == 405
