"""Log-in with limits on password guessing, counted per username and client address together, and per address.

- After LOGIN_MAX_FAILURES wrong passwords for one username from one address within LOGIN_FAILURE_WINDOW, that
  username is refused (429) from that address, whatever the password, until the oldest of them leaves the window.
  From any other address it may still log in: someone who types a user's name with wrong passwords cannot lock
  that user out (counting per username alone let anyone do that).
- After LOGIN_MAX_FAILURES_PER_ADDRESS wrong passwords from one address within the window, whatever the usernames,
  that address is refused: a guesser cannot go round the first limit by trying many usernames.

Staff let a username or an address in at once by deleting its rows in the admin (Failed logins). Behind a reverse
proxy every request comes from the proxy's address: set TRUSTED_PROXIES to the number of proxies in front of the
portal, and the client's address is read from X-Forwarded-For as the nearest of them saw it.
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from deployments.models import FailedLogin

log = logging.getLogger(__name__)


def _window() -> timedelta:
    return timedelta(seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS)


def client_address(request: HttpRequest) -> str | None:
    """The client's address: REMOTE_ADDR, or with TRUSTED_PROXIES = N, the N-th address of X-Forwarded-For from the
    right, which the farthest of the trusted proxies wrote: the one it received the request from. The entries before
    it are the client's own to write, so they are not believed. None when there is no valid address."""
    address = request.META.get("REMOTE_ADDR") or ""
    if settings.TRUSTED_PROXIES:
        forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
        if len(forwarded) >= settings.TRUSTED_PROXIES:
            address = forwarded[-settings.TRUSTED_PROXIES]
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def _minutes_to_wait(failures: QuerySet[FailedLogin], limit: int) -> int:
    """0 when fewer than `limit` of these failures are in the window; else the minutes (rounded up) until the oldest
    of the last `limit` of them leaves it."""
    recent = failures.filter(created__gte=timezone.now() - _window()).order_by("-created")
    times = list(recent.values_list("created", flat=True)[:limit])
    if len(times) < limit:
        return 0
    wait = times[-1] + _window() - timezone.now()
    return max(1, -(-int(wait.total_seconds()) // 60))


def _refusal(username: str, address: str | None) -> str:
    """Why this log-in is refused before its password is checked ("" when it is not)."""
    if address is not None:
        minutes = _minutes_to_wait(FailedLogin.objects.filter(ip=address), settings.LOGIN_MAX_FAILURES_PER_ADDRESS)
        if minutes:
            log.warning("log-in refused from %s: too many wrong passwords from this address", address)
            return f"Too many wrong passwords from your address: try again in {_minutes(minutes)}."
    minutes = _minutes_to_wait(FailedLogin.objects.filter(username=username, ip=address), settings.LOGIN_MAX_FAILURES)
    if minutes:
        log.warning("log-in refused for %r from %s: too many wrong passwords", username, address)
        return (
            f"Too many wrong passwords for this username: try again in {_minutes(minutes)}, or ask an "
            "administrator to let you in again."
        )
    return ""


def _minutes(count: int) -> str:
    return f"{count} minute{'s' if count > 1 else ''}"


def _record_failure(username: str, address: str | None) -> None:
    FailedLogin.objects.create(username=username, ip=address)
    # Keeps the table small: only the window counts.
    FailedLogin.objects.filter(created__lt=timezone.now() - 2 * _window()).delete()


def _username(request: HttpRequest) -> str:
    return request.POST.get("username", "")[:150].strip().lower()


class ThrottledLoginView(LoginView):
    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        username = _username(request)
        throttled = _refusal(username, client_address(request)) if username else ""
        if throttled:
            # Refused before the password is even checked: a guess right now tells the guesser nothing.
            form = self.get_form_class()(request, initial={"username": request.POST.get("username", "")[:150]})
            response = self.render_to_response(self.get_context_data(form=form, throttled=throttled))
            response.status_code = 429
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):  # type: ignore[no-untyped-def]
        username = _username(self.request)
        if username and form.has_error("__all__", "invalid_login"):
            _record_failure(username, client_address(self.request))
        return super().form_invalid(form)

    def form_valid(self, form):  # type: ignore[no-untyped-def]
        # Its own count from here, and no one else's: a guesser's failures from other addresses still count there.
        username = form.get_user().get_username().lower()
        FailedLogin.objects.filter(username=username, ip=client_address(self.request)).delete()
        return super().form_valid(form)
