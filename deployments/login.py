"""Log-in with limits on password guessing, counted per username and client address together, and per address.

- After LOGIN_MAX_FAILURES wrong passwords for one username from one address within LOGIN_FAILURE_WINDOW, that
  username is refused (429) from that address, whatever the password, until the oldest of them leaves the window.
  From any other address it may still log in: someone who types a user's name with wrong passwords cannot lock
  that user out (counting per username alone let anyone do that).
- After LOGIN_MAX_FAILURES_PER_ADDRESS wrong passwords from one address within the window, whatever the usernames,
  that address is refused: a guesser cannot go round the first limit by trying many usernames.

An "address" is an IPv4 address or an IPv6 /64 (one host commonly has a whole /64 to itself). What limits a guesser
with many addresses is the per-address limit on each and the password validators: there is deliberately no limit
per username across addresses, since that is the lock-out that anyone could set off.

Staff let a username or an address in at once by deleting its rows in the admin (Failed logins). Behind a reverse
proxy every request comes from the proxy's address: TRUSTED_PROXIES lists the proxies' networks, and the client's
address is then read from X-Forwarded-For as the nearest proxy outside them saw it.
"""

from __future__ import annotations

import ipaddress
import logging
import unicodedata
from datetime import timedelta
from functools import cache

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from deployments.models import FailedLogin

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _window() -> timedelta:
    return timedelta(seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS)


@cache
def _trusted(networks: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as proxies write it: `203.0.113.9`, `2001:db8::1`, and with a port `203.0.113.9:51234` or
    `[2001:db8::1]:51234` (Azure's Application Gateway writes one). None if it is none of those."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def client_address(request: HttpRequest) -> str | None:
    """The client's address as the limits count it: REMOTE_ADDR, or when that is one of the TRUSTED_PROXIES, the
    nearest address in X-Forwarded-For that is not (each proxy adds the address it got the request from; what
    lies beyond the nearest untrusted one is the client's own to write). An IPv6 address counts as its /64. None
    when there is no readable address: those requests share one count, and are limited together."""
    address = _parse(request.META.get("REMOTE_ADDR") or "")
    proxies = _trusted(tuple(settings.TRUSTED_PROXIES))
    if address is not None and proxies and any(address in net for net in proxies):
        for hop in reversed(request.headers.get("X-Forwarded-For", "").split(",")):
            address = _parse(hop)
            if address is None or not any(address in net for net in proxies):
                break
    if address is None:
        log.warning("log-in from an unreadable address: counted with the others that have none")
        return None
    if isinstance(address, ipaddress.IPv6Address):  # the first address of its /64 stands for all of them
        return str(ipaddress.ip_network(f"{address}/64", strict=False).network_address)
    return str(address)


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
    minutes = _minutes_to_wait(FailedLogin.objects.filter(ip=address), settings.LOGIN_MAX_FAILURES_PER_ADDRESS)
    if minutes:
        log.warning("log-in refused from %s: too many wrong passwords from this address", address)
        return f"Too many wrong passwords from your address: try again in {_minutes(minutes)}."
    if not username:
        return ""
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
    """The username as the log-in form reads it (stripped, NFKC: alice in full-width letters is alice), in one case: the limits count
    every spelling that logs in as one user together."""
    typed = unicodedata.normalize("NFKC", request.POST.get("username", "").strip())
    return typed.casefold()[:150]


class ThrottledLoginView(LoginView):
    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        throttled = _refusal(_username(request), client_address(request))
        if throttled:
            # Refused before the password is even checked: a guess right now tells the guesser nothing.
            form = self.get_form_class()(request, initial={"username": request.POST.get("username", "")[:150]})
            response = self.render_to_response(self.get_context_data(form=form, throttled=throttled))
            response.status_code = 429
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):  # type: ignore[no-untyped-def]
        if form.has_error("__all__", "invalid_login"):
            _record_failure(_username(self.request), client_address(self.request))
        return super().form_invalid(form)

    def form_valid(self, form):  # type: ignore[no-untyped-def]
        # Its own count from here, and no one else's: a guesser's failures from other addresses still count there.
        FailedLogin.objects.filter(username=_username(self.request), ip=client_address(self.request)).delete()
        return super().form_valid(form)
