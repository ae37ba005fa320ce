"""Scoring keys: what a client sends to a service's `POST /score` (`Authorization: Bearer <key>`) when the service
requires a key ("Require a key to score", Azure ML's `auth_enabled`).

Each service has two, primary and secondary, as Azure ML's had: clients move to a regenerated key while the other
one still works. Users read them again (the Keys page, the SDK's `get_keys()`), so the portal keeps them, sealed
with a key derived from SECRET_KEY (and SECRET_KEY_FALLBACKS, so that the secret key can be rotated): a copy of the
database alone does not give them away. The scoring runtime gets only their SHA-256 digests (`SCORING_KEY_HASHES`),
which are not secrets, so they travel in the desired spec like any other setting.
"""

from __future__ import annotations

import base64
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.utils.crypto import salted_hmac

from scoring.config import key_hash

# A key given by a user (`regen_key(..., set_key=...)`) must be as hard to guess as a generated one.
MIN_LENGTH = 32
MAX_LENGTH = 128


class UnreadableKey(Exception):
    def __init__(self) -> None:
        super().__init__(
            "The service's keys were sealed with another SECRET_KEY than this portal's (add the old one to "
            "SECRET_KEY_FALLBACKS, or regenerate both keys)."
        )


def generate() -> str:
    return secrets.token_urlsafe(32)  # 43 characters, 256 bits


def check(key: str) -> str:
    """A key a user chose, or ValueError saying why it cannot be one."""
    if not isinstance(key, str) or not MIN_LENGTH <= len(key) <= MAX_LENGTH:
        raise ValueError(f"A key must be {MIN_LENGTH} to {MAX_LENGTH} characters long.")
    if not key.isascii() or not key.isprintable() or " " in key:
        raise ValueError("A key must be printable ASCII without spaces (it travels in an HTTP header).")
    return key


def _fernet() -> MultiFernet:
    def derived(secret: str | bytes) -> Fernet:
        digest = salted_hmac("tributary.scoring-keys", "seal", secret=secret, algorithm="sha256").digest()
        return Fernet(base64.urlsafe_b64encode(digest))

    return MultiFernet([derived(s) for s in [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]])


def seal(key: str) -> str:
    return _fernet().encrypt(key.encode()).decode()


def unseal(sealed: str) -> str:
    try:
        return _fernet().decrypt(sealed.encode()).decode()
    except InvalidToken as exc:
        raise UnreadableKey() from exc


def reseal(sealed: str) -> str:
    """`sealed` sealed again with the current SECRET_KEY, whichever of it and its fallbacks sealed it (the key's
    creation time inside the token is kept)."""
    try:
        return _fernet().rotate(sealed.encode()).decode()
    except InvalidToken as exc:
        raise UnreadableKey() from exc


__all__ = ["MAX_LENGTH", "MIN_LENGTH", "UnreadableKey", "check", "generate", "key_hash", "reseal", "seal", "unseal"]
