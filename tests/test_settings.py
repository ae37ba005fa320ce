"""Settings come from the environment; production-like settings pass Django's deployment checks."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DEBUG", "SECRET_KEY", "DATABASE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


def test_it_passes_the_deployment_checks_with_production_settings(tmp_path: Path) -> None:
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="portal.example.org",
        VAR_DIR=str(tmp_path),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_it_requires_a_secret_key_when_debug_is_off(tmp_path: Path) -> None:
    result = _manage("check", DEBUG="false", VAR_DIR=str(tmp_path))

    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_it_reads_a_secret_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "secret"
    key_file.write_text(secrets.token_urlsafe(50) + "\n")

    result = _manage("check", DEBUG="false", SECRET_KEY_FILE=str(key_file), VAR_DIR=str(tmp_path))

    assert result.returncode == 0, result.stderr


def test_it_rejects_a_malformed_boolean(tmp_path: Path) -> None:
    result = _manage("check", DEBUG="maybe", VAR_DIR=str(tmp_path))

    assert result.returncode != 0
    assert "DEBUG must be true or false" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LOGIN_MAX_FAILURES", "0", "LOGIN_MAX_FAILURES must be at least 1"),
        ("LOGIN_MAX_FAILURES_PER_ADDRESS", "0", "LOGIN_MAX_FAILURES_PER_ADDRESS must be at least 1"),
        ("TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal", "TRUSTED_PROXIES: 'proxy.internal' does not appear to be"),
    ],
)
def test_log_in_limits_and_proxies_that_cannot_work_stop_it_at_start(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = _manage("check", DEBUG="true", VAR_DIR=str(tmp_path), **{variable: value})

    assert result.returncode != 0
    assert message in result.stderr


def test_it_lists_every_setting_in_env_example() -> None:
    settings_source = (REPO / "portal" / "settings.py").read_text()
    example = (REPO / ".env.example").read_text()
    import re

    read = set(re.findall(r'env(?:str|bool|int|list)\("([A-Z_]+)"', settings_source))
    listed = set(re.findall(r"^#?\s*([A-Z_]+)=", example, re.MULTILINE))
    assert read - listed == set(), "settings read variables that .env.example does not list"


def test_it_has_a_docker_compose_file_that_parses() -> None:
    # Compose v2 (`docker compose`) where the plugin is installed, else Debian's docker-compose.
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        compose = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        compose = ["docker-compose"]
    else:
        pytest.fail(
            "parsing docker-compose.yml needs `docker compose` or docker-compose (apt-get install docker-compose)"
        )
    result = subprocess.run(
        [*compose, "-f", str(REPO / "docker-compose.yml"), "config", "--services"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SECRET_KEY": "parse-only"},
    )

    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"postgres", "redis", "azurite", "web", "worker", "beat"}


# Module constants, so that the error page's source context and frame locals do not show them in the test itself.
STORAGE_KEY = "s3cr3tKey=="
BROKER_PASSWORD = "hunter2"


def test_the_debug_error_page_hides_the_storage_key_and_service_passwords(rf: Any, settings: Any) -> None:
    import sys

    from django.views.debug import technical_500_response

    settings.DEBUG = True
    settings.BLOB_CONNECTION_STRING = f"DefaultEndpointsProtocol=http;AccountName=a;AccountKey={STORAGE_KEY};"
    settings.CELERY_BROKER_URL = settings.REDIS_URL = f"redis://:{BROKER_PASSWORD}@redis:6379/0"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        html = technical_500_response(rf.get("/"), *sys.exc_info()).content.decode()

    assert "BLOB_CONNECTION_STRING" in html
    assert STORAGE_KEY not in html
    assert BROKER_PASSWORD not in html
