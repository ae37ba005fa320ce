"""HTTP transport for the SDK: JSON over urllib, errors raised as WebserviceException with the server's message."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class WebserviceException(Exception):
    """Raised for every failure, as the legacy SDK did; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Client:
    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        if not url or not token:
            raise WebserviceException("Set the portal URL and an API token (or TRIBUTARY_URL and TRIBUTARY_TOKEN).")
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:  # never shows the token
        return f"Client({self.url!r})"

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/api/v1/{path.lstrip('/')}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                message = json.load(exc).get("error") or exc.reason
            except ValueError:
                message = exc.reason
            raise WebserviceException(str(message), status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise WebserviceException(f"Cannot reach the portal at {self.url}: {exc}") from None
