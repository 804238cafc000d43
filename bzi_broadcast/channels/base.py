"""The port every channel implements. Owned by the core; adapters stay small.

An adapter turns one rendered message into one remote call and returns a ``Receipt``, or raises
one of the delivery errors from ``bzi_broadcast.errors`` (transient, unknown outcome, permanent,
auth). The worker owns states, attempts, timing, logs and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from bzi_broadcast.delivery.outbox import Claimed
from bzi_broadcast.store.announcements import AnnouncementRecord


@dataclass(frozen=True, kw_only=True, slots=True)
class Receipt:
    remote_id: str | None = None
    new_recipient: str | None = None  # the address moved (a Telegram group became a supergroup)


class Channel(Protocol):
    name: str
    concurrency: int  # how many sends may be in flight at once (e.g. SMTP pool size)

    def prepare(self, record: AnnouncementRecord) -> Any:
        """Build what all recipients share (rendition, MIME template), once per announcement."""

    async def send(self, prepared: Any, delivery: Claimed) -> Receipt:
        """Deliver one row; raise a ``DeliveryError`` subclass on failure."""

    async def aclose(self) -> None:
        """Close connections; called once at shutdown."""
