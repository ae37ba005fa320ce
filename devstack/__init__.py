"""Local services for development and tests: Redis, Azurite and (for tests) a Kubernetes API server.

`make run` and the pytest fixtures both start what they need through this package, so a fresh machine behaves the
same in both. Every service listens on a free loopback port and is stopped by whoever started it.
"""

from devstack.services import (
    AZURITE_ACCOUNT_KEY,
    AZURITE_ACCOUNT_NAME,
    ManagedProcess,
    ServiceError,
    azurite_connection_string,
    free_port,
    redis_answers,
    start_azurite,
    start_redis,
    wait_for_port,
)

__all__ = [
    "AZURITE_ACCOUNT_KEY",
    "AZURITE_ACCOUNT_NAME",
    "ManagedProcess",
    "ServiceError",
    "azurite_connection_string",
    "free_port",
    "redis_answers",
    "start_azurite",
    "start_redis",
    "wait_for_port",
]
