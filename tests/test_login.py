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


def test_wrong_passwords_for_one_username_are_limited_and_the_right_one_waits_too(
    client: Client, alice: Any, bob: Any, settings: Any
) -> None:
    from deployments.models import FailedLogin

    settings.LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        assert client.post(reverse("login"), {"username": "alice", "password": "guess"}).status_code == 200

    refused = client.post(reverse("login"), {"username": "Alice", "password": "password"})

    assert refused.status_code == 429
    assert "Too many wrong passwords for this username: try again in 15 minutes" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    assert FailedLogin.objects.filter(username="alice").count() == 3  # a refused try is not counted again
    # Another username is not affected, and the admin's log-in page is no way around the limit.
    assert client.post(reverse("admin-login"), {"username": "alice", "password": "password"}).status_code == 429
    assert client.post(reverse("login"), {"username": "bob", "password": "password"}).status_code == 302


def test_the_limit_is_over_once_the_failures_are_out_of_the_window(client: Client, alice: Any, settings: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from deployments.models import FailedLogin

    settings.LOGIN_MAX_FAILURES = 2
    for _ in range(2):
        client.post(reverse("login"), {"username": "alice", "password": "guess"})
    assert client.post(reverse("login"), {"username": "alice", "password": "password"}).status_code == 429

    FailedLogin.objects.update(created=timezone.now() - timedelta(seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS + 1))

    assert client.post(reverse("login"), {"username": "alice", "password": "password"}).status_code == 302
    assert not FailedLogin.objects.filter(username="alice").exists()  # a success clears the count


def test_staff_let_a_refused_username_in_again_from_the_admin(
    client: Client, alice: Any, admin_user: Any, settings: Any
) -> None:
    from deployments.models import FailedLogin

    settings.LOGIN_MAX_FAILURES = 1
    client.post(reverse("login"), {"username": "alice", "password": "guess"})
    staff = Client()
    staff.force_login(admin_user)
    rows = list(FailedLogin.objects.values_list("pk", flat=True))

    staff.post(
        reverse("admin:deployments_failedlogin_changelist"),
        {"action": "delete_selected", "_selected_action": rows, "post": "yes"},
    )

    assert not FailedLogin.objects.exists()
    assert client.post(reverse("login"), {"username": "alice", "password": "password"}).status_code == 302


def test_wrong_passwords_from_elsewhere_do_not_lock_the_user_out(client: Client, alice: Any, settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES = 3
    guesser = Client(REMOTE_ADDR="198.51.100.7")
    for _ in range(3):
        guesser.post(reverse("login"), {"username": "alice", "password": "guess"})

    assert guesser.post(reverse("login"), {"username": "alice", "password": "password"}).status_code == 429
    # Alice, at her own address, is let in: typing her name with wrong passwords is no way to lock her out.
    assert client.post(reverse("login"), {"username": "alice", "password": "password"}).status_code == 302
    # Her success clears her own count, not the guesser's.
    assert guesser.post(reverse("login"), {"username": "alice", "password": "password"}).status_code == 429


def test_wrong_passwords_for_many_usernames_from_one_address_refuse_the_address(
    client: Client, alice: Any, settings: Any
) -> None:
    settings.LOGIN_MAX_FAILURES_PER_ADDRESS = 4
    sprayer = Client(REMOTE_ADDR="198.51.100.7")
    for name in ("root", "admin", "bob", "carol"):
        assert sprayer.post(reverse("login"), {"username": name, "password": "Winter2026"}).status_code == 200

    refused = sprayer.post(reverse("login"), {"username": "alice", "password": "password"})

    assert refused.status_code == 429
    assert "Too many wrong passwords from your address: try again in 15 minutes." in refused.content.decode()
    assert client.post(reverse("login"), {"username": "alice", "password": "password"}).status_code == 302


@pytest.mark.parametrize(
    ("proxies", "remote", "forwarded", "counted_as"),
    [
        ([], "10.0.0.2", "203.0.113.9", "10.0.0.2"),  # no proxy is trusted: the header is the client's to write
        (["10.0.0.0/8"], "10.0.0.2", "192.0.2.66, 203.0.113.9", "203.0.113.9"),  # not what the client claimed
        (["10.0.0.0/8"], "10.0.0.2", "192.0.2.66, 203.0.113.9, 10.0.0.3", "203.0.113.9"),  # two proxies
        (["10.0.0.0/8"], "198.51.100.4", "203.0.113.9", "198.51.100.4"),  # not through the proxy: not believed
        (["10.0.0.2"], "10.0.0.2", "203.0.113.9:51234", "203.0.113.9"),  # with a port, as some gateways write
        (["10.0.0.2"], "10.0.0.2", "[2001:db8:1:2:aaaa::1]:443", "2001:db8:1:2::"),  # an IPv6 host: its /64
        ([], "::ffff:198.51.100.4", "", "198.51.100.4"),  # IPv4 in IPv6 is IPv4
        (["10.0.0.2"], "10.0.0.2", "not an address", None),
    ],
)
def test_the_address_counted_is_the_clients_as_the_trusted_proxies_saw_it(
    client: Client,
    alice: Any,
    settings: Any,
    proxies: list[str],
    remote: str,
    forwarded: str,
    counted_as: str | None,
) -> None:
    from deployments.models import FailedLogin

    settings.TRUSTED_PROXIES = proxies
    client.post(
        reverse("login"),
        {"username": "alice", "password": "guess"},
        REMOTE_ADDR=remote,
        headers={"X-Forwarded-For": forwarded},
    )

    assert list(FailedLogin.objects.values_list("ip", flat=True)) == [counted_as]


# Padded past the 150 characters a username has, in full-width letters (NFKC makes them ALICE), in another case.
@pytest.mark.parametrize("spelling", [" " * 150 + "alice", "\uff21\uff2c\uff29\uff23\uff25", "Alice "])
def test_every_spelling_that_logs_in_as_the_user_is_counted_as_the_user(
    client: Client, alice: Any, settings: Any, spelling: str
) -> None:
    settings.LOGIN_MAX_FAILURES = 2
    for _ in range(2):
        assert client.post(reverse("login"), {"username": spelling, "password": "guess"}).status_code == 200

    assert client.post(reverse("login"), {"username": "alice", "password": "password"}).status_code == 429
    assert client.post(reverse("login"), {"username": spelling, "password": "password"}).status_code == 429


def test_requests_without_a_readable_address_are_limited_together(client: Client, alice: Any, settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES_PER_ADDRESS = 2
    for name in ("root", "admin"):
        client.post(reverse("login"), {"username": name, "password": "guess"}, REMOTE_ADDR="unix-socket")

    refused = client.post(reverse("login"), {"username": "alice", "password": "password"}, REMOTE_ADDR="")

    assert refused.status_code == 429
