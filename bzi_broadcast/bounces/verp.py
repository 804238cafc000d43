"""The signed token that names one delivery in its envelope sender (VERP) and Message-ID.

``bounces+<token>@<email.bounce_domain>`` is the envelope sender (MAIL FROM) of each message, so a
report sent back to it names the delivery; the token also stands in the Message-ID
(``<token>@<sender's domain>``), which reports that quote the returned message carry even when no
bounce domain is configured, and which feedback loops (ARF) quote.

Token: ``<delivery id>-<subscriber id>-<MAC>``, the ids in base 36 (0: no subscriber), the MAC
the first 80 bits of HMAC-SHA256 over ``"verp|<delivery>-<subscriber>"`` with the service key, in
lower-case base32. Only lower-case letters and digits: some MTAs lower-case local parts, and the
longest token (two 64-bit ids) keeps the local part at 8 + 13 + 1 + 13 + 1 + 16 = 52 ≤ 64 octets
(RFC 5321 4.5.3.1.1). Without the key no one can make a token for another delivery, so a report
that names no valid token has no effect (``effects``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

LOCAL_PREFIX = "bounces+"
MAC_BYTES = 10  # 80 bits: 16 base32 characters, no padding
_TOKEN = re.compile(r"(?<![0-9a-z])([0-9a-z]{1,13})-([0-9a-z]{1,13})-([a-z2-7]{16})(?![0-9a-z])")
_MAX_ID = 2**63 - 1


@dataclass(frozen=True, kw_only=True)
class DeliveryRef:
    """The delivery a report is about, as its token names it."""

    delivery_id: int
    subscriber_id: int | None


class Verp:
    def __init__(self, key: bytes) -> None:
        # A key of its own, derived: a VERP token can never pass for a link token or the reverse.
        self._key = hmac.new(key, b"bzi-broadcast verp", hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "Verp(key=***)"

    def token(self, delivery_id: int, subscriber_id: int | None) -> str:
        ids = f"{_base36(delivery_id)}-{_base36(subscriber_id or 0)}"
        return f"{ids}-{self._mac(ids)}"

    def address(self, token: str, domain: str) -> str:
        return f"{LOCAL_PREFIX}{token}@{domain}"

    def find(self, texts: Iterable[str]) -> DeliveryRef | None:
        """The first well-signed token in ``texts`` (header values, quoted headers), in order."""
        for text in texts:
            for match in _TOKEN.finditer(text.lower()):
                ref = self._verified(*match.groups())
                if ref is not None:
                    return ref
        return None

    def _verified(self, delivery: str, subscriber: str, mac: str) -> DeliveryRef | None:
        ids = f"{delivery}-{subscriber}"
        if not hmac.compare_digest(mac, self._mac(ids)):
            return None
        delivery_id, subscriber_id = int(delivery, 36), int(subscriber, 36)
        if not 0 < delivery_id <= _MAX_ID or subscriber_id > _MAX_ID:
            return None
        return DeliveryRef(delivery_id=delivery_id, subscriber_id=subscriber_id or None)

    def _mac(self, ids: str) -> str:
        digest = hmac.new(self._key, f"verp|{ids}".encode(), hashlib.sha256).digest()
        return base64.b32encode(digest[:MAC_BYTES]).decode().lower()


def _base36(number: int) -> str:
    if not 0 <= number <= _MAX_ID:
        raise ValueError(f"id out of range: {number}")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if not number:
            return text
