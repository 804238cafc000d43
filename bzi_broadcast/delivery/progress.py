"""How far an announcement's delivery is, read from the deliveries table: counts per channel and
state, the rate over the last minute and an estimate of the rest, sends over time, the failures
grouped by reason, each channel's pause state, and the links to the posted Mastodon thread.

Everything is counted in SQL that runs alike on SQLite and PostgreSQL (no date functions): the
buckets of the timeline are ``CASE`` sums over fixed time windows.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bzi_broadcast.delivery.lifecycle import DeliveryStatus
from bzi_broadcast.delivery.outbox import Counts
from bzi_broadcast.store.schema import channel_state, deliveries, delivery_parts

D = DeliveryStatus
CHANNELS = ("email", "mastodon", "telegram")
RATE_WINDOW = timedelta(minutes=1)
MAX_BUCKETS = 90
_ADDRESS = re.compile(r"[^\s<>()\"',;:]+@[^\s<>()\"',;:]+")


@dataclass(frozen=True, kw_only=True)
class ChannelProgress:
    channel: str
    counts: Counts
    per_minute: int  # sent in the last minute
    eta_seconds: float | None  # None: nothing left, paused, or no sends in the last minute
    paused: bool = False
    pause_reason: str | None = None
    paused_since: datetime | None = None
    last_error: str | None = None

    @property
    def done(self) -> int:
        return self.counts.sent + self.counts.failed + self.counts.cancelled

    @property
    def remaining(self) -> int:
        return self.counts.queued + self.counts.sending


@dataclass(frozen=True, kw_only=True)
class FailureReason:
    channel: str
    reason: str
    count: int


@dataclass(frozen=True, kw_only=True)
class Failure:
    channel: str
    recipient: str  # as stored: mask it before showing it
    reason: str
    attempts: int


@dataclass(frozen=True, kw_only=True)
class Timeline:
    """Sends per time window: ``counts[channel][i]`` rows were sent in ``[starts[i], +width)``."""

    starts: tuple[datetime, ...]
    width: timedelta
    counts: dict[str, tuple[int, ...]]


@dataclass(frozen=True, kw_only=True)
class ThreadPart:
    part: int
    remote_id: str | None
    url: str | None


async def channels(
    conn: AsyncConnection,
    announcement_id: int,
    *,
    enabled: tuple[str, ...],
    sending: bool,
    now: datetime,
) -> list[ChannelProgress]:
    """Every enabled channel and every channel with rows, in the order of ``CHANNELS``."""
    counts = await _counts(conn, announcement_id)
    recent = await _sent_since(conn, announcement_id, now - RATE_WINDOW)
    states = await _states(conn)
    errors = await _last_errors(conn, announcement_id)
    shown = [c for c in CHANNELS if c in enabled or c in counts]
    shown += sorted(set(counts) - set(shown))
    result = []
    for name in shown:
        count = counts.get(name, Counts())
        paused, reason, since = states.get(name, (False, None, None))
        per_minute = recent.get(name, 0)
        remaining = count.queued + count.sending
        eta = (
            remaining / per_minute * 60.0
            if sending and not paused and remaining and per_minute
            else None
        )
        result.append(
            ChannelProgress(
                channel=name,
                counts=count,
                per_minute=per_minute,
                eta_seconds=eta,
                paused=paused,
                pause_reason=reason,
                paused_since=since,
                last_error=scrub(errors[name]) if name in errors else None,
            )
        )
    return result


async def failures(
    conn: AsyncConnection, announcement_id: int, *, latest: int = 10, reasons: int = 10
) -> tuple[list[FailureReason], list[Failure]]:
    """The failed rows grouped by reason (most frequent first), and the latest few of them."""
    failed = and_(
        deliveries.c.announcement_id == announcement_id, deliveries.c.status == str(D.FAILED)
    )
    grouped: Counter[tuple[str, str]] = Counter()
    rows = await conn.execute(
        select(deliveries.c.channel, deliveries.c.last_error, func.count())
        .where(failed)
        .group_by(deliveries.c.channel, deliveries.c.last_error)
    )
    for channel, error, count in rows:
        grouped[(channel, scrub(error or ""))] += count  # addresses removed: alike reasons merge
    recent = await conn.execute(
        select(
            deliveries.c.channel,
            deliveries.c.recipient,
            deliveries.c.last_error,
            deliveries.c.attempts,
        )
        .where(failed)
        .order_by(deliveries.c.id.desc())
        .limit(latest)
    )
    return (
        [
            FailureReason(channel=channel, reason=reason, count=count)
            for (channel, reason), count in grouped.most_common(reasons)
        ],
        [
            Failure(
                channel=r.channel,
                recipient=r.recipient,
                reason=scrub(r.last_error or ""),
                attempts=r.attempts,
            )
            for r in recent
        ],
    )


async def timeline(
    conn: AsyncConnection, announcement_id: int, *, max_buckets: int = MAX_BUCKETS
) -> Timeline | None:
    """Sends per minute (wider windows for long sends); None before the first send."""
    sent = and_(deliveries.c.announcement_id == announcement_id, deliveries.c.sent_at.is_not(None))
    first, last = (
        await conn.execute(
            select(func.min(deliveries.c.sent_at), func.max(deliveries.c.sent_at)).where(sent)
        )
    ).one()
    if first is None or last is None:
        return None
    start = first.replace(second=0, microsecond=0)
    minutes = math.floor((last - start).total_seconds() / 60) + 1
    step = math.ceil(minutes / max_buckets)  # minutes per bucket
    width = timedelta(minutes=step)
    starts = tuple(start + width * i for i in range(math.ceil(minutes / step)))
    columns = [
        func.sum(
            case(
                (
                    and_(deliveries.c.sent_at >= moment, deliveries.c.sent_at < moment + width),
                    1,
                ),
                else_=0,
            )
        )
        for moment in starts
    ]
    rows = await conn.execute(
        select(deliveries.c.channel, *columns).where(sent).group_by(deliveries.c.channel)
    )
    counts = {row[0]: tuple(int(value or 0) for value in row[1:]) for row in rows}
    return Timeline(starts=starts, width=width, counts=counts)


async def thread(conn: AsyncConnection, announcement_id: int) -> list[ThreadPart]:
    """The posted parts of the Mastodon thread, in order (ids and URLs the server returned)."""
    rows = await conn.execute(
        select(delivery_parts.c.part, delivery_parts.c.remote_id, delivery_parts.c.url)
        .join(deliveries, deliveries.c.id == delivery_parts.c.delivery_id)
        .where(
            deliveries.c.announcement_id == announcement_id,
            deliveries.c.channel == "mastodon",
            delivery_parts.c.remote_id.is_not(None),
        )
        .order_by(delivery_parts.c.part)
    )
    return [ThreadPart(part=r.part, remote_id=r.remote_id, url=r.url) for r in rows]


def scrub(reason: str) -> str:
    """A server's reason without addresses in it (some repeat the recipient in their reply)."""
    return _ADDRESS.sub("<…>", reason)


async def _counts(conn: AsyncConnection, announcement_id: int) -> dict[str, Counts]:
    per_channel: dict[str, dict[str, int]] = {}
    rows = await conn.execute(
        select(deliveries.c.channel, deliveries.c.status, func.count())
        .where(deliveries.c.announcement_id == announcement_id)
        .group_by(deliveries.c.channel, deliveries.c.status)
    )
    for channel, status, count in rows:
        per_channel.setdefault(channel, {})[status] = count
    return {channel: Counts(**values) for channel, values in per_channel.items()}


async def _sent_since(
    conn: AsyncConnection, announcement_id: int, since: datetime
) -> dict[str, int]:
    rows = await conn.execute(
        select(deliveries.c.channel, func.count())
        .where(
            deliveries.c.announcement_id == announcement_id,
            deliveries.c.status == str(D.SENT),
            deliveries.c.sent_at >= since,
        )
        .group_by(deliveries.c.channel)
    )
    return {channel: int(count) for channel, count in rows}


async def _states(conn: AsyncConnection) -> dict[str, tuple[bool, str | None, datetime | None]]:
    rows = await conn.execute(
        select(
            channel_state.c.channel,
            channel_state.c.paused,
            channel_state.c.reason,
            channel_state.c.changed_at,
        )
    )
    return {r.channel: (bool(r.paused), r.reason, r.changed_at) for r in rows}


async def _last_errors(conn: AsyncConnection, announcement_id: int) -> dict[str, str]:
    """Per channel, the error of the row that failed or was put back most recently."""
    errors: dict[str, str] = {}
    for channel in CHANNELS:
        error = (
            await conn.execute(
                select(deliveries.c.last_error)
                .where(
                    deliveries.c.announcement_id == announcement_id,
                    deliveries.c.channel == channel,
                    deliveries.c.last_error.is_not(None),
                )
                .order_by(deliveries.c.next_attempt_at.desc(), deliveries.c.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        if error is not None:
            errors[channel] = error
    return errors
