import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


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
