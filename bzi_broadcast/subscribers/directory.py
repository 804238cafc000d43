"""Subscribers as staff look them up: search, counts by status, topic and channel, growth.

Read-only. Counting by week uses ``CASE`` sums over fixed windows, so the same SQL runs on SQLite
and PostgreSQL; weeks start on Monday, 00:00 in Europe/Berlin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import accumulate, pairwise

from sqlalchemy import ColumnElement, and_, case, exists, func, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bzi_broadcast.content.model import LOCAL_TZ
from bzi_broadcast.store.schema import subscriber_topics, subscribers
from bzi_broadcast.subscribers.store import SubscriberStatus

ACTIVE = str(SubscriberStatus.ACTIVE)
CHANNELS = ("email", "telegram")


@dataclass(frozen=True, kw_only=True)
class Filters:
    """What the search form asks for; empty fields do not filter."""

    text: str = ""  # part of the address or the name, any case
    status: str = ""
    topic: str = ""
    channel: str = ""  # "email": has an address; "telegram": started the bot

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if text := self.text.strip():
            found.append(_matches(text))
        if self.status:
            found.append(subscribers.c.status == self.status)
        if self.topic:
            found.append(
                exists().where(
                    subscriber_topics.c.subscriber_id == subscribers.c.id,
                    subscriber_topics.c.topic == self.topic,
                )
            )
        if self.channel == "email":
            found.append(subscribers.c.email.is_not(None))
        elif self.channel == "telegram":
            found.append(subscribers.c.telegram_chat_id.is_not(None))
        return found


@dataclass(frozen=True, kw_only=True)
class Counts:
    by_status: dict[str, int]
    by_topic: dict[str, int]  # active subscribers who chose the topic
    without_topic: int  # active subscribers who chose none (they get every topic)
    by_channel: dict[str, int]  # active subscribers reachable on the channel


@dataclass(frozen=True, kw_only=True)
class Growth:
    """New confirmations per week and the running total of confirmed subscribers."""

    weeks: tuple[date, ...]  # Mondays
    new: tuple[int, ...]
    total: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class Found:
    id: int
    email: str | None
    name: str | None
    telegram_chat_id: int | None
    status: str
    created_at: datetime


async def search(
    conn: AsyncConnection, filters: Filters, *, offset: int, limit: int
) -> list[Found]:
    """One page of the people matching ``filters``, newest first."""
    query = (
        select(
            subscribers.c.id,
            subscribers.c.email,
            subscribers.c.name,
            subscribers.c.telegram_chat_id,
            subscribers.c.status,
            subscribers.c.created_at,
        )
        .where(*filters.conditions())
        .order_by(subscribers.c.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [Found(**row._mapping) for row in await conn.execute(query)]


async def count_matching(conn: AsyncConnection, filters: Filters) -> int:
    query = select(func.count()).select_from(subscribers).where(*filters.conditions())
    return int((await conn.execute(query)).scalar() or 0)


async def counts(conn: AsyncConnection) -> Counts:
    by_status: dict[str, int] = dict(
        (
            await conn.execute(
                select(subscribers.c.status, func.count()).group_by(subscribers.c.status)
            )
        ).all()
    )
    active = subscribers.c.status == ACTIVE
    by_topic: dict[str, int] = dict(
        (
            await conn.execute(
                select(subscriber_topics.c.topic, func.count())
                .join(subscribers, subscribers.c.id == subscriber_topics.c.subscriber_id)
                .where(active)
                .group_by(subscriber_topics.c.topic)
            )
        ).all()
    )
    chose_none = not_(exists().where(subscriber_topics.c.subscriber_id == subscribers.c.id))
    row = (
        await conn.execute(
            select(
                func.count(subscribers.c.email),
                func.count(subscribers.c.telegram_chat_id),
                func.sum(case((chose_none, 1), else_=0)),
            ).where(active)
        )
    ).one()
    return Counts(
        by_status=by_status,
        by_topic=by_topic,
        without_topic=int(row[2] or 0),
        by_channel={"email": int(row[0]), "telegram": int(row[1])},
    )


async def growth(conn: AsyncConnection, *, today: date, weeks: int = 26) -> Growth:
    """The last ``weeks`` weeks up to and including the one of ``today``."""
    this_monday = today - timedelta(days=today.weekday())
    mondays = tuple(this_monday - timedelta(weeks=weeks - 1 - i) for i in range(weeks))
    bounds = [_midnight(day) for day in (*mondays, this_monday + timedelta(weeks=1))]
    confirmed = subscribers.c.confirmed_at
    columns = [func.sum(case((confirmed < bounds[0], 1), else_=0))] + [
        func.sum(case((and_(confirmed >= start, confirmed < end), 1), else_=0))
        for start, end in pairwise(bounds)
    ]
    row = (await conn.execute(select(*columns).where(confirmed.is_not(None)))).one()
    before, *new = (int(value or 0) for value in row)
    return Growth(
        weeks=mondays,
        new=tuple(new),
        total=tuple(before + running for running in accumulate(new)),
    )


async def topics_of(conn: AsyncConnection, subscriber_id: int) -> list[str]:
    query = (
        select(subscriber_topics.c.topic)
        .where(subscriber_topics.c.subscriber_id == subscriber_id)
        .order_by(subscriber_topics.c.topic)
    )
    return list((await conn.execute(query)).scalars())


def _matches(text: str) -> ColumnElement[bool]:
    """Substring of the address or the name, any case. SQLite's ``lower`` folds only ASCII
    letters, so there a name with umlauts is also matched by the text as typed."""
    folded = text.lower()
    return or_(
        func.lower(subscribers.c.email).contains(folded, autoescape=True),
        func.lower(subscribers.c.name).contains(folded, autoescape=True),
        subscribers.c.name.contains(text, autoescape=True),
    )


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=LOCAL_TZ)
