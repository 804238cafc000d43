"""Release: one conditional status change, then set-based INSERT … SELECT per channel, in chunks.

Idempotent by construction: only the transaction that moves the announcement from ``scheduled``
to ``sending`` starts the fan-out, and the unique key (announcement, channel, recipient) makes a
second write impossible anyway. Two firings, or two processes on one PostgreSQL database, release
once.

The fan-out walks the subscriber ids in chunks (``fanout_cursor`` on the announcement, NULL when
done), each chunk one transaction that also moves the cursor, so the first messages go out while
a large list is still being written, and a crash mid-fan-out resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    String,
    and_,
    cast,
    exists,
    insert,
    literal,
    not_,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus, DeliveryStatus
from bzi_broadcast.i18n import DEFAULT_LOCALE
from bzi_broadcast.store.announcements import transition, utcnow
from bzi_broadcast.store.schema import (
    announcement_topics,
    announcements,
    deliveries,
    subscriber_topics,
    subscribers,
)

FanOut = Callable[[int, datetime, int, int | None], Insert]
"""Builds the INSERT … SELECT of one channel's delivery rows for the subscribers with
``lower < id <= upper`` (``upper`` None: no upper bound)."""
FANOUT_CHUNK = 5000
_COLUMNS = [
    "announcement_id",
    "channel",
    "recipient",
    "subscriber_id",
    "status",
    "attempts",
    "next_attempt_at",
]


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


def _language_match(announcement_id: int) -> ColumnElement[bool]:
    """Each person gets the version in their language; the German one when there is none.

    An announcement outside a translation group goes to everyone."""
    this = announcements.alias("this")
    other = announcements.alias("other")
    language = select(this.c.language).where(this.c.id == announcement_id).scalar_subquery()
    group = select(this.c.translation_group).where(this.c.id == announcement_id).scalar_subquery()
    own_version = exists().where(
        other.c.translation_group == group,
        other.c.language == subscribers.c.language,
        other.c.status.not_in([str(AnnouncementStatus.DRAFT), str(AnnouncementStatus.CANCELLED)]),
    )
    return or_(
        group.is_(None),
        subscribers.c.language == language,
        and_(language == DEFAULT_LOCALE, not_(own_version)),
    )


def _receiving(now: datetime) -> ColumnElement[bool]:
    """Confirmed, not unsubscribed, and not pausing."""
    return and_(
        subscribers.c.status == "active",
        or_(subscribers.c.paused_until.is_(None), subscribers.c.paused_until <= now),
    )


def _in_chunk(lower: int, upper: int | None) -> ColumnElement[bool]:
    above = subscribers.c.id > lower
    return above if upper is None else and_(above, subscribers.c.id <= upper)


def email_fan_out(announcement_id: int, now: datetime, lower: int, upper: int | None) -> Insert:
    rows = select(
        literal(announcement_id),
        literal("email"),
        subscribers.c.email,
        subscribers.c.id,
        literal(str(DeliveryStatus.QUEUED)),
        literal(0),
        literal(now, type_=deliveries.c.next_attempt_at.type),
    ).where(
        _receiving(now),
        subscribers.c.email.is_not(None),
        # on the suppression list (bounce, complaint): not even if the status says active
        subscribers.c.suppressed_at.is_(None),
        _in_chunk(lower, upper),
        _topic_match(announcement_id),
        _language_match(announcement_id),
    )
    return insert(deliveries).from_select(_COLUMNS, rows)


def telegram_fan_out(chats: Sequence[int]) -> FanOut:
    """Every subscriber who started the bot, and (with the first chunk) the configured chats."""

    def build(announcement_id: int, now: datetime, lower: int, upper: int | None) -> Insert:
        rows = select(
            literal(announcement_id),
            literal("telegram"),
            cast(subscribers.c.telegram_chat_id, String),
            subscribers.c.id,
            literal(str(DeliveryStatus.QUEUED)),
            literal(0),
            literal(now, type_=deliveries.c.next_attempt_at.type),
        ).where(
            _receiving(now),
            subscribers.c.telegram_chat_id.is_not(None),
            _in_chunk(lower, upper),
            _topic_match(announcement_id),
            _language_match(announcement_id),
        )
        configured = [
            select(
                literal(announcement_id),
                literal("telegram"),
                literal(str(chat)),
                literal(None, type_=deliveries.c.subscriber_id.type),
                literal(str(DeliveryStatus.QUEUED)),
                literal(0),
                literal(now, type_=deliveries.c.next_attempt_at.type),
            )
            for chat in (chats if lower == 0 else ())
        ]
        source = union_all(rows, *configured) if configured else rows
        return insert(deliveries).from_select(_COLUMNS, source)

    return build


def mastodon_fan_out(account: str) -> FanOut:
    """One row per announcement: the thread on the council's account (with the first chunk)."""

    def build(announcement_id: int, now: datetime, lower: int, upper: int | None) -> Insert:
        row = select(
            literal(announcement_id),
            literal("mastodon"),
            literal(account),
            literal(None, type_=deliveries.c.subscriber_id.type),
            literal(str(DeliveryStatus.QUEUED)),
            literal(0),
            literal(now, type_=deliveries.c.next_attempt_at.type),
        ).where(literal(lower) == 0)
        return insert(deliveries).from_select(_COLUMNS, row)

    return build


DEFAULT_FAN_OUTS: Mapping[str, FanOut] = {"email": email_fan_out}


async def release(
    engine: AsyncEngine,
    announcement_id: int,
    *,
    fan_outs: Mapping[str, FanOut] = DEFAULT_FAN_OUTS,
    actor: str = "scheduler",
    now: datetime | None = None,
    chunk: int = FANOUT_CHUNK,
) -> dict[str, int] | None:
    """Release a due announcement and write its first chunk; None if not released here."""
    now = now or utcnow()
    not_expired = or_(announcements.c.expires_at.is_(None), announcements.c.expires_at > now)
    async with engine.begin() as conn:
        released = await transition(
            conn,
            announcement_id,
            AnnouncementStatus.SENDING,
            actor=actor,
            released_at=now,
            fanout_cursor=0,
            extra_condition=and_(
                announcements.c.status == str(AnnouncementStatus.SCHEDULED),
                announcements.c.publish_at <= now,
                not_expired,
            ),
        )
        if not released:
            return None
        return await _chunk(conn, announcement_id, 0, fan_outs, chunk, now)


async def continue_fan_out(
    engine: AsyncEngine,
    announcement_id: int,
    *,
    fan_outs: Mapping[str, FanOut] = DEFAULT_FAN_OUTS,
    chunk: int = FANOUT_CHUNK,
) -> dict[str, int] | None:
    """Write the next chunk; None when the fan-out is complete (or not this announcement's)."""
    async with engine.begin() as conn:
        cursor = (
            await conn.execute(
                select(announcements.c.fanout_cursor)
                .where(
                    announcements.c.id == announcement_id,
                    announcements.c.status == str(AnnouncementStatus.SENDING),
                )
                .with_for_update()  # replicas continuing the same fan-out take turns
            )
        ).scalar_one_or_none()
        if cursor is None:
            return None
        return await _chunk(conn, announcement_id, cursor, fan_outs, chunk, utcnow())


async def fan_out_completely(engine: AsyncEngine, announcement_id: int, **options: Any) -> int:
    """Continue until done; the number of rows written."""
    written = 0
    while (counts := await continue_fan_out(engine, announcement_id, **options)) is not None:
        written += sum(counts.values())
    return written


async def incomplete_fan_outs(engine: AsyncEngine) -> list[int]:
    query = select(announcements.c.id).where(
        announcements.c.status == str(AnnouncementStatus.SENDING),
        announcements.c.fanout_cursor.is_not(None),
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).scalars())


async def _chunk(
    conn: AsyncConnection,
    announcement_id: int,
    lower: int,
    fan_outs: Mapping[str, FanOut],
    chunk: int,
    now: datetime,
) -> dict[str, int]:
    upper = (
        await conn.execute(
            select(subscribers.c.id)
            .where(subscribers.c.id > lower)
            .order_by(subscribers.c.id)
            .offset(chunk - 1)
            .limit(1)
        )
    ).scalar_one_or_none()
    counts = {
        channel: (await conn.execute(build(announcement_id, now, lower, upper))).rowcount
        for channel, build in fan_outs.items()
    }
    await conn.execute(
        update(announcements)
        .where(announcements.c.id == announcement_id)
        .values(fanout_cursor=upper)  # NULL: the last chunk is written
    )
    return counts
