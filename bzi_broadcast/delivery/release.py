"""Release: one conditional status change and one set-based INSERT … SELECT per channel.

Idempotent by construction: only the transaction that moves the announcement from ``scheduled``
to ``sending`` writes delivery rows, and the unique key (announcement, channel, recipient) makes a
second write impossible anyway. Two firings, or two processes on one PostgreSQL database, release
once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from sqlalchemy import ColumnElement, Insert, and_, exists, insert, literal, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus, DeliveryStatus
from bzi_broadcast.store.announcements import transition, utcnow
from bzi_broadcast.store.schema import (
    announcement_topics,
    announcements,
    deliveries,
    subscriber_topics,
    subscribers,
)

FanOut = Callable[[int, datetime], Insert]
"""Builds the INSERT … SELECT that writes one channel's delivery rows for an announcement."""


def _topic_match(announcement_id: int) -> ColumnElement[bool]:
    """Announcement without topics → everyone; subscriber without topics → every topic."""
    wanted = exists().where(announcement_topics.c.announcement_id == announcement_id)
    chosen = exists().where(subscriber_topics.c.subscriber_id == subscribers.c.id)
    shared = exists().where(
        subscriber_topics.c.subscriber_id == subscribers.c.id,
        announcement_topics.c.announcement_id == announcement_id,
        announcement_topics.c.topic == subscriber_topics.c.topic,
    )
    return or_(not_(wanted), not_(chosen), shared)


def email_fan_out(announcement_id: int, now: datetime) -> Insert:
    rows = select(
        literal(announcement_id),
        literal("email"),
        subscribers.c.email,
        subscribers.c.id,
        literal(str(DeliveryStatus.QUEUED)),
        literal(0),
        literal(now, type_=deliveries.c.next_attempt_at.type),
    ).where(and_(subscribers.c.status == "active", _topic_match(announcement_id)))
    columns = [
        "announcement_id",
        "channel",
        "recipient",
        "subscriber_id",
        "status",
        "attempts",
        "next_attempt_at",
    ]
    return insert(deliveries).from_select(columns, rows)


DEFAULT_FAN_OUTS: Mapping[str, FanOut] = {"email": email_fan_out}


async def release(
    engine: AsyncEngine,
    announcement_id: int,
    *,
    fan_outs: Mapping[str, FanOut] = DEFAULT_FAN_OUTS,
    actor: str = "scheduler",
    now: datetime | None = None,
) -> dict[str, int] | None:
    """Release a due announcement; the rows written per channel, or None if not released here."""
    now = now or utcnow()
    not_expired = or_(announcements.c.expires_at.is_(None), announcements.c.expires_at > now)
    async with engine.begin() as conn:
        released = await transition(
            conn,
            announcement_id,
            AnnouncementStatus.SENDING,
            actor=actor,
            released_at=now,
            extra_condition=and_(
                announcements.c.status == str(AnnouncementStatus.SCHEDULED),
                announcements.c.publish_at <= now,
                not_expired,
            ),
        )
        if not released:
            return None
        return {
            channel: (await conn.execute(build(announcement_id, now))).rowcount
            for channel, build in fan_outs.items()
        }
