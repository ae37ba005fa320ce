"""Log-in with a limit on password guessing: after LOGIN_MAX_FAILURES wrong passwords for one username within
LOGIN_FAILURE_WINDOW, that username is refused (429) until the oldest of them is out of the window, whatever the
password; staff let it in at once by deleting its rows in the admin (Failed logins). Counted per username, not
per address: behind a proxy every user has the proxy's address.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from deployments.models import FailedLogin

log = logging.getLogger(__name__)


def _window() -> timedelta:
    return timedelta(seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS)


def _minutes_until_allowed(username: str) -> int:
    """0 when the username may try; else how many minutes until it may (rounded up)."""
    since = timezone.now() - _window()
    recent = FailedLogin.objects.filter(username=username, created__gte=since).order_by("-created")
    failures = list(recent.values_list("created", flat=True)[: settings.LOGIN_MAX_FAILURES])
    if len(failures) < settings.LOGIN_MAX_FAILURES:
        return 0
    # Allowed again once the oldest of the last LOGIN_MAX_FAILURES failures leaves the window.
    wait = failures[-1] + _window() - timezone.now()
    return max(1, -(-int(wait.total_seconds()) // 60))


def _record_failure(username: str, ip: str | None) -> None:
    FailedLogin.objects.create(username=username, ip=ip)
    # Keeps the table small: only the window counts.
    FailedLogin.objects.filter(created__lt=timezone.now() - 2 * _window()).delete()


class ThrottledLoginView(LoginView):
    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        username = request.POST.get("username", "")[:150].strip().lower()
        minutes = _minutes_until_allowed(username) if username else 0
        if minutes:
            # Refused before the password is even checked: a guess right now tells the guesser nothing.
            log.warning("log-in refused for %r: too many wrong passwords", username)
            throttled = (
                f"Too many wrong passwords for this username: try again in {minutes} minute"
                f"{'s' if minutes > 1 else ''}, or ask an administrator to let you in again."
            )
            form = self.get_form_class()(request, initial={"username": request.POST.get("username", "")[:150]})
            response = self.render_to_response(self.get_context_data(form=form, throttled=throttled))
            response.status_code = 429
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):  # type: ignore[no-untyped-def]
        username = self.request.POST.get("username", "")[:150].strip().lower()
        if username and form.has_error("__all__", "invalid_login"):
            _record_failure(username, self.request.META.get("REMOTE_ADDR") or None)
        return super().form_invalid(form)

    def form_valid(self, form):  # type: ignore[no-untyped-def]
        FailedLogin.objects.filter(username=form.get_user().get_username().lower()).delete()
        return super().form_valid(form)
