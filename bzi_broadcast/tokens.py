"""Signed, expiring tokens for the links in every message (unsubscribe, preferences, confirm).

Format (URL-safe, no padding)::

    v1.<key id>.<base64url(payload)>.<base64url(HMAC-SHA256(key, "v1.<key id>.<payload>")[:16])>

with ``payload = "<purpose>|<expiry, unix seconds>|<subject>"`` (the subject last, so it may hold
any character). A subscriber's links carry ``<id>.<link key>`` as subject (``link_subject``):
the random per-person key makes the link of an erased person fit no one else. Keys rotate: a
signer signs with its current key and verifies with any key it still knows. Comparison is
constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import N_

VERSION = "v1"
SIGNATURE_BYTES = 16


class TokenError(BroadcastError):
    """Der Link ist ungültig."""


class TokenExpiredError(TokenError):
    """Der Link ist abgelaufen."""


N_("Der Link ist ungültig.")
N_("Der Link ist abgelaufen.")


@dataclass(frozen=True, kw_only=True)
class TokenPayload:
    purpose: str
    subject: str
    expires_at: int


class TokenSigner:
    def __init__(
        self, secret: bytes, *, key_id: str = "1", old_secrets: Mapping[str, bytes] | None = None
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the token secret must be at least 16 bytes")
        if "." in key_id:
            raise ValueError("a key id must not contain '.'")
        self._key_id = key_id
        self._keys = {**(old_secrets or {}), key_id: secret}

    def __repr__(self) -> str:
        return f"TokenSigner(key_id={self._key_id!r}, keys={len(self._keys)}, secret=***)"

    def sign(
        self, *, purpose: str, subject: str, ttl: timedelta, now: datetime | None = None
    ) -> str:
        if "|" in purpose:
            raise ValueError("a purpose must not contain '|'")
        expires = int(((now or datetime.now(UTC)) + ttl).timestamp())
        payload = _encode(f"{purpose}|{expires}|{subject}".encode())
        signed = f"{VERSION}.{self._key_id}.{payload}"
        return f"{signed}.{_encode(self._mac(self._keys[self._key_id], signed))}"

    def verify(self, token: str, *, purpose: str, now: datetime | None = None) -> TokenPayload:
        try:
            version, key_id, payload, signature = token.split(".")
        except ValueError:
            raise TokenError from None
        key = self._keys.get(key_id)
        signed = f"{version}.{key_id}.{payload}"
        if version != VERSION or key is None:
            raise TokenError
        if not hmac.compare_digest(_decode(signature), self._mac(key, signed)):
            raise TokenError
        found = _payload(payload)
        if found.purpose != purpose:
            raise TokenError
        if found.expires_at < int((now or datetime.now(UTC)).timestamp()):
            raise TokenExpiredError
        return found

    @staticmethod
    def _mac(key: bytes, signed: str) -> bytes:
        return hmac.new(key, signed.encode(), hashlib.sha256).digest()[:SIGNATURE_BYTES]


def _payload(encoded: str) -> TokenPayload:
    try:
        purpose, expires, subject = _decode(encoded).decode().split("|", 2)
        return TokenPayload(purpose=purpose, subject=subject, expires_at=int(expires))
    except (ValueError, UnicodeDecodeError):
        raise TokenError from None


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError from None


def link_subject(subscriber_id: int, link_key: str | None) -> str:
    """The subject of a subscriber's link: the id and the person's random key."""
    return f"{subscriber_id}.{link_key}" if link_key else str(subscriber_id)


def parse_link_subject(subject: str) -> tuple[int, str | None]:
    """``(id, key)``; key None for a link made before the keys (migration 0012)."""
    number, _dot, key = subject.partition(".")
    try:
        return int(number), key or None
    except ValueError:
        raise TokenError from None
