import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import resolve_url
from django_htmx.http import HttpResponseClientRedirect


def request_id(request: HttpRequest) -> uuid.UUID | None:
    """The id RequestIdMiddleware gave this request, for the audit rows written while serving it."""
    return getattr(request, "id", None)


class RequestIdMiddleware:
    """Gives every request an id, so that audit rows written while serving it can be correlated."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.id = uuid.uuid4()  # type: ignore[attr-defined]
        response = self.get_response(request)
        response["X-Request-Id"] = str(request.id)  # type: ignore[attr-defined]
        return response


class HtmxLoginRedirectMiddleware:
    """A live region's request whose session has expired: the whole page goes to the log-in page, and back to the
    page afterwards. (htmx follows the plain redirect itself and would show the log-in form inside the region, then
    poll on: on the Logs page, for ever.)"""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        htmx = getattr(request, "htmx", None)
        if not htmx or response.status_code != 302:
            return response
        if urlsplit(response["Location"]).path != resolve_url(settings.LOGIN_URL):
            return response
        page = htmx.current_url_abs_path or "/"  # the page the user is on, not the region's URL
        return HttpResponseClientRedirect(redirect_to_login(page)["Location"])
