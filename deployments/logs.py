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
# Credentials in the shapes a log can quote them: connection-string keys (storage, Application Insights, Service
# Bus), a SAS token's signature in a URL, an Authorization header, a password or token passed as a parameter.
_SECRET_ASSIGNMENTS = re.compile(
    r"(?i)\b(AccountKey|SharedAccessSignature|SharedAccessKey|InstrumentationKey|sig|password|passwd|pwd|token|"
    r"api[_-]?key|client[_-]?secret)=([^;&\s'\"]+)"
)
_AUTHORIZATION = re.compile(r"(?i)\b(Authorization[\"']?\s*[:=]\s*[\"']?(?:Bearer|Basic|SharedKey)?\s*)([^\s'\",]+)")


@dataclass(frozen=True)
class ServiceLog:
    text: str
    lines: int  # how many were asked for
    error: str = ""  # why there is no log: the cluster did not answer, say (safe to show)


def read(service: Service, lines: int) -> ServiceLog:
    """The last `lines` lines of the service's log (of each of its pods on Kubernetes)."""
    lines = max(1, min(lines, MAX_LINES))
    try:
        # The names the driver needs (folder, labels) do not depend on an update: 0 stands for none.
        text = drivers.driver_for(service).logs(actions.desired_spec(service, 0), lines)
    except DriverError as exc:
        return ServiceLog("", lines, str(exc))
    return ServiceLog(without_secrets(text), lines)


def without_secrets(text: str) -> str:
    """The text with the portal's own secrets and anything shaped like a credential replaced by <hidden>."""
    for value in (settings.BLOB_CONNECTION_STRING, settings.APPLICATIONINSIGHTS_CONNECTION_STRING, settings.SECRET_KEY):
        if value:
            text = text.replace(value, HIDDEN)
    text = _SECRET_ASSIGNMENTS.sub(lambda m: f"{m.group(1)}={HIDDEN}", text)
    return _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{HIDDEN}", text)
