"""A service's log as the portal and the SDK's `get_logs()` show it: what its scoring processes wrote (the script's
prints, the runtime's and the collector's messages), newest lines last, with secrets cut out, because every member
of the workspace may read it, readers included."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings

from deployments import actions, drivers
from deployments.compute import DriverError
from deployments.models import Service

# The legacy SDK's get_logs() asked for 5,000 lines by default; more than that is a download, not a page.
MAX_LINES = 5000
PAGE_LINES = (100, 500, 2000, MAX_LINES)
DEFAULT_PAGE_LINES = 500

HIDDEN = "<hidden>"
# Credentials in the shapes logs quote them: `name=value`, `name: value`, `"name": "value"`, where the name ends in
# one of these words (AccountKey, DB_PASSWORD, client_secret, x-api-key, access_token, sig in a SAS URL). Every
# quantifier that could backtrack is possessive: a log is user-script output, up to 2 MB, read every 5 s.
_CREDENTIAL_NAMES = (
    r"account_?key|shared_?access_?(?:signature|key)|instrumentation_?key|sig|password|passwd|pwd|secret|token|"
    r"api[_-]?key|access[_-]?key|authorization"
)
_ASSIGNMENT = re.compile(
    rf"(?i)(?<![A-Za-z0-9])((?:{_CREDENTIAL_NAMES})[\"']?[ \t]*+[:=][ \t]*+[\"']?(?:(?:bearer|basic|sharedkey)[ \t]++)?)"
    r"[^\s;&,'\"]++"
)
_SCHEME_TOKEN = re.compile(r"(?i)(?<![A-Za-z0-9])((?:bearer|basic|sharedkey)[ \t]++)[A-Za-z0-9._~+/=:-]{8,}+")
_URL_PASSWORD = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*+://[^\s/:@]++:)[^\s/@]++(?=@)")


@dataclass(frozen=True)
class ServiceLog:
    text: str
    lines: int  # how many were asked for (within 1 to MAX_LINES)
    error: str = ""  # why there is no log: the cluster did not answer, say (safe to show)


def read(service: Service, lines: int) -> ServiceLog:
    """The last `lines` lines of the service's log (of each of its pods on Kubernetes)."""
    lines = max(1, min(lines, MAX_LINES))
    try:
        # The names the driver needs (folder, labels) do not depend on an update: 0 stands for none.
        text = drivers.driver_for(service).logs(actions.desired_spec(service, 0), lines)
    except DriverError as exc:
        return ServiceLog("", lines, without_secrets(str(exc)))
    return ServiceLog(without_secrets(text), lines)


def without_secrets(text: str) -> str:
    """The text with the portal's own secrets and anything shaped like a credential replaced by <hidden>."""
    for value in (
        settings.BLOB_CONNECTION_STRING,
        settings.APPLICATIONINSIGHTS_CONNECTION_STRING,
        settings.OTEL_EXPORTER_OTLP_ENDPOINT,  # it may carry a token
        settings.SECRET_KEY,
    ):
        if value:
            text = text.replace(value, HIDDEN)
    for pattern in (_ASSIGNMENT, _SCHEME_TOKEN, _URL_PASSWORD):
        text = pattern.sub(lambda m: m.group(1) + HIDDEN, text)
    return text
