"""Tributary's settings: one file, read from the environment, with defaults that run on one machine.

Every variable is listed with its default in `.env.example`. A secret can also be given as a file: `X_FILE`
names a file whose contents are the value of `X` (the Docker and Kubernetes secrets convention).
"""

import ipaddress
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envstr(name: str, default: str = "") -> str:
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        return Path(file_name).read_text().strip()
    return os.environ.get(name, default)


def envbool(name: str, default: str) -> bool:
    value = envstr(name, default).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def envint(name: str, default: str) -> int:
    try:
        return int(envstr(name, default))
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a whole number") from exc


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in envstr(name, default).split(",") if item.strip()]


DEBUG = envbool("DEBUG", "false")
# The DEBUG error page and error mails hide the storage connection string and service URLs, not only keys.
DEFAULT_EXCEPTION_REPORTER_FILTER = "portal.errors.SecretsFilter"

SECRET_KEY = envstr("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (or set DEBUG=true for development).")
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG"
# Earlier secret keys, newest first, while rotating: sessions and the services' sealed scoring keys still open.
SECRET_KEY_FALLBACKS = envlist("SECRET_KEY_FALLBACKS", "")

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "deployments",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "portal.middleware.HtmxLoginRedirectMiddleware",
    "portal.middleware.RequestIdMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            # {% partialdef %} in every template without a {% load %}.
            "builtins": ["template_partials.templatetags.partials"],
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite on one machine; PostgreSQL (or anything dj-database-url reads) when DATABASE_URL is set.
VAR_DIR = Path(envstr("VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)
DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL", f"sqlite:///{VAR_DIR / 'tributary.sqlite3'}"),
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", "0"),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory, so that a Celery worker process in the tests sees the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-tributary.sqlite3")}
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=20,
        # Writers take the write lock when their transaction begins, so that two processes (web, worker) that
        # read and then write never deadlock ("database is locked" at once); they wait their turn instead.
        transaction_mode="IMMEDIATE",
        # Readers do not block the writer, nor the writer the readers.
        init_command="PRAGMA journal_mode=WAL;",
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "deployments:home"
LOGOUT_REDIRECT_URL = "login"
# Password guessing (deployments.login): this many wrong passwords for one username from one address within the
# window refuse that username from that address, and this many from one address, whatever the usernames, refuse
# the address, until the oldest leaves the window.
LOGIN_MAX_FAILURES = envint("LOGIN_MAX_FAILURES", "10")
LOGIN_MAX_FAILURES_PER_ADDRESS = envint("LOGIN_MAX_FAILURES_PER_ADDRESS", "50")
LOGIN_FAILURE_WINDOW_SECONDS = envint("LOGIN_FAILURE_WINDOW_SECONDS", "900")
for _name in ("LOGIN_MAX_FAILURES", "LOGIN_MAX_FAILURES_PER_ADDRESS", "LOGIN_FAILURE_WINDOW_SECONDS"):
    if globals()[_name] < 1:
        raise ImproperlyConfigured(f"{_name} must be at least 1")
# The reverse proxies in front of the portal, as addresses or networks (10.0.0.0/8, ...): from them, the client's
# address is read from X-Forwarded-For. Empty: the address the request came from (behind a proxy, every client
# would have the proxy's, and the log-in limits would count them all as one).
TRUSTED_PROXIES = envlist("TRUSTED_PROXIES", "")
try:
    for _network in TRUSTED_PROXIES:
        ipaddress.ip_network(_network, strict=False)
except ValueError as exc:
    raise ImproperlyConfigured(f"TRUSTED_PROXIES: {exc}") from exc

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(VAR_DIR / "static")))
WHITENOISE_USE_FINDERS = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Production hardening; each can be relaxed from the environment behind a TLS-terminating proxy.
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", "false" if DEBUG else "true")
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", "false" if DEBUG else "true")
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", "false" if DEBUG else "true")
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", "0" if DEBUG else "31536000")
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", "false")
# Joining browsers' preload lists is a decision for the domain's owner, not a default; do not warn about it.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
if envbool("USE_X_FORWARDED_PROTO", "false"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Redis is both the Celery broker and its result backend.
REDIS_URL = envstr("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Above the longest task plus the longest retry countdown, so Redis never redelivers a task that is still running.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": envint("CELERY_VISIBILITY_TIMEOUT", "3600")}
CELERY_TASK_DEFAULT_QUEUE = envstr("CELERY_QUEUE", "tributary")

# Service updates: how long a rollout may take, how often it is polled, and how a crashed worker's update is
# taken over (its lease runs out) without ever running twice at once.
ROLLOUT_TIMEOUT_SECONDS = envint("ROLLOUT_TIMEOUT_SECONDS", "600")
ROLLOUT_POLL_SECONDS = float(envstr("ROLLOUT_POLL_SECONDS", "1"))
# A task applies, then waits for the rollout: its time limits leave room for both, and the lease outlasts them.
CELERY_TASK_SOFT_TIME_LIMIT = envint("CELERY_TASK_SOFT_TIME_LIMIT", str(ROLLOUT_TIMEOUT_SECONDS + 120))
CELERY_TASK_TIME_LIMIT = envint("CELERY_TASK_TIME_LIMIT", str(CELERY_TASK_SOFT_TIME_LIMIT + 60))
UPDATE_LEASE_SECONDS = envint("UPDATE_LEASE_SECONDS", str(CELERY_TASK_TIME_LIMIT + 60))
UPDATE_MAX_ATTEMPTS = envint("UPDATE_MAX_ATTEMPTS", "5")
# Celery beat re-enqueues updates whose worker died or whose task was lost (deployments.reconcile).
RECONCILE_INTERVAL_SECONDS = float(envstr("RECONCILE_INTERVAL_SECONDS", "60"))
CELERY_BEAT_SCHEDULE = {
    "reconcile-updates": {"task": "deployments.tasks.reconcile_updates", "schedule": RECONCILE_INTERVAL_SECONDS}
}

# The local compute target runs entry scripts on this machine, as the worker's user: only scripts inside these
# folders (comma-separated), so that a workspace member cannot have the portal run an arbitrary file.
LOCAL_SCRIPT_DIRS = [
    Path(p).resolve() for p in envlist("LOCAL_SCRIPT_DIRS", f"{BASE_DIR / 'examples'},{VAR_DIR / 'scripts'}")
]

# Collected model data lives here (Azurite in development). The connection string is a secret: settings only.
BLOB_CONNECTION_STRING = envstr("BLOB_CONNECTION_STRING")
BLOB_CONTAINER = envstr("BLOB_CONTAINER", "modeldata")
# Where "Enable AppInsights diagnostics" sends a service's request telemetry (either or both; scoring/README.md):
# Azure Monitor (a secret; on Kubernetes the pods read it from their workspace's Secret instead), or OTLP/HTTP.
APPLICATIONINSIGHTS_CONNECTION_STRING = envstr("APPLICATIONINSIGHTS_CONNECTION_STRING")
OTEL_EXPORTER_OTLP_ENDPOINT = envstr("OTEL_EXPORTER_OTLP_ENDPOINT")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}, "azure": {"level": "WARNING"}},
}
