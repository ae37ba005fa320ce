"""Loaded by pytest as a plugin (`-p tests.environment` in pyproject.toml), before pytest-django reads settings.

Tests run on the development defaults (`make run`'s): DEBUG settings without HTTPS redirects and a throwaway key.
pytest-django still runs every test with DEBUG off, as Django's own test runner does.
"""

import os

os.environ.setdefault("DEBUG", "true")
# Playwright's sync API runs an event loop in the test's thread; the ORM calls in browser tests are still safe.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
