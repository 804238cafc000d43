"""The consent proof log: what each person agreed to, when, from where, and every change after.

Append-only: this module only inserts. German law (§ 7 UWG, Art. 7(1) GDPR) asks the sender to
prove each person's consent individually; these rows are that proof, printed by
``bzi-broadcast subscribers proof EMAIL`` and part of the GDPR export.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import consent_events

IpLogging = Literal["full", "truncated", "none"]


class ConsentEvent(StrEnum):
    SIGNED_UP = "signed_up"  # the form, the bot's /start, or an import
    CONFIRMATION_SENT = "confirmation_sent"
    CONFIRMED = "confirmed"
    PREFERENCES_CHANGED = "preferences_changed"
    UNSUBSCRIBED = "unsubscribed"


@dataclass(frozen=True, kw_only=True)
class ConsentRecord:
    at: datetime
    event: str
    channel: str | None
    source: str | None
    ip: str | None
    consent_version: str | None
    detail: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "event": self.event,
            "channel": self.channel,
            "source": self.source,
            "ip": self.ip,
            "consent_version": self.consent_version,
            "detail": self.detail,
        }


def stored_ip(ip: str | None, mode: IpLogging) -> str | None:
    """The address as configured: in full, truncated (IPv4 /24, IPv6 /48), or not at all."""
    if ip is None or mode == "none":
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if mode == "full":
        return str(address)
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


async def record(
    conn: AsyncConnection,
    subscriber_id: int,
    event: ConsentEvent,
    *,
    channel: str | None = None,
    source: str | None = None,
    ip: str | None = None,
    consent_version: str | None = None,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Append one event (inside the caller's transaction). ``ip`` must already be ``stored_ip``."""
    await conn.execute(
        insert(consent_events).values(
            subscriber_id=subscriber_id,
            at=at or utcnow(),
            event=str(event),
            channel=channel,
            source=source,
            ip=ip,
            consent_version=consent_version,
            detail=json.dumps(detail, ensure_ascii=False, sort_keys=True) if detail else None,
        )
    )


async def history(conn: AsyncConnection, subscriber_id: int) -> list[ConsentRecord]:
    rows = await conn.execute(
        select(consent_events)
        .where(consent_events.c.subscriber_id == subscriber_id)
        .order_by(consent_events.c.id)
    )
    return [
        ConsentRecord(
            at=row.at,
            event=row.event,
            channel=row.channel,
            source=row.source,
            ip=row.ip,
            consent_version=row.consent_version,
            detail=json.loads(row.detail) if row.detail else None,
        )
        for row in rows
    ]
