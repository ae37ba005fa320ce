"""What Django's error reports (the DEBUG page, error mails) may show of the settings."""

import re

from django.views.debug import SafeExceptionReporterFilter


class SecretsFilter(SafeExceptionReporterFilter):
    """Django's filter hides settings named like keys and passwords; the storage connection string (it holds the
    account key) and the service URLs (redis://:password@...) are named otherwise, so it hides those too."""

    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|CONNECTION_STRING|_URL$|BROKER|BACKEND", flags=re.I
    )
