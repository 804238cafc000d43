"""What a bounce or complaint does, written in one transaction with its record.

- hard bounce (5.x.x): the subscriber is marked bounced and suppressed (as a refusal at RCPT is,
  ``subscribers.store.suppress``); only a fresh double opt-in lifts it.
- soft bounce (4.x.x, or delayed): counted; at ``soft_limit`` deliveries soft-bounced within
  ``soft_days`` the subscriber is suppressed as for a hard bounce.
- complaint (ARF): the subscriber is unsubscribed, the consent log says it was a complaint and
  of which type.

One row in ``bounces`` per delivery and kind: a report read twice (two replicas reading one
mailbox, a retry after a crash between the commit and the move) changes nothing the second time.
Only a report with a valid VERP token acts (``verp``): a forged report for someone else's
address cannot unsubscribe or suppress them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.bounces.parse import Kind, Report
from bzi_broadcast.bounces.verp import DeliveryRef
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import bounces, deliveries, subscribers
from bzi_broadcast.subscribers.consent import ConsentEvent, record
from bzi_broadcast.subscribers.store import SubscriberStatus, suppress_in

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SoftBounceRule:
    limit: int  # soft-bounced deliveries …
    days: int  # … within this many days suppress the address


@dataclass(frozen=True, kw_only=True)
class Applied:
    kind: Kind
    delivery_id: int | None  # None: the delivery is gone (its announcement was deleted)
    announcement_id: int | None
    subscriber_id: int | None
    duplicate: bool = False  # the same delivery's report of this kind was read before
    suppressed: bool = False
    unsubscribed: bool = False


class Effects:
    def __init__(self, engine: AsyncEngine, *, key: bytes, soft: SoftBounceRule) -> None:
        self._engine = engine
        self._key = key
        self._soft = soft

    def __repr__(self) -> str:
        return f"Effects(soft={self._soft!r}, key=***)"

    async def apply(self, report: Report, ref: DeliveryRef) -> Applied:
        try:
            async with self._engine.begin() as conn:
                return await self._apply(conn, report, ref)
        except IntegrityError:  # another process recorded it first: its effects are done
            return Applied(
                kind=report.kind,
                delivery_id=ref.delivery_id,
                announcement_id=None,
                subscriber_id=ref.subscriber_id,
                duplicate=True,
            )

    async def _apply(self, conn: AsyncConnection, report: Report, ref: DeliveryRef) -> Applied:
        delivery = await _delivery(conn, ref)
        subscriber_id = delivery.subscriber_id if delivery is not None else ref.subscriber_id
        person = await _subscriber(conn, subscriber_id)
        address = delivery.recipient if delivery is not None else None
        address = address if address and "@" in address else (person.email if person else None)
        applied = Applied(
            kind=report.kind,
            delivery_id=delivery.id if delivery is not None else None,
            announcement_id=delivery.announcement_id if delivery is not None else None,
            subscriber_id=person.id if person is not None else None,
        )
        if delivery is not None:
            await conn.execute(
                insert(bounces).values(
                    delivery_id=delivery.id,
                    announcement_id=delivery.announcement_id,
                    subscriber_id=applied.subscriber_id,
                    kind=str(report.kind),
                    status=report.status,
                    detail=report.detail,
                    at=utcnow(),
                )
            )
        if report.kind is Kind.COMPLAINT:
            done = await _unsubscribe(conn, person, report, applied.announcement_id)
            return replace(applied, unsubscribed=done)
        if address is None or person is None:
            return applied
        if report.kind is Kind.HARD or await self._soft_limit_reached(conn, person.id):
            reason = "hard_bounce" if report.kind is Kind.HARD else "soft_bounces"
            await suppress_in(conn, address, reason=reason, detail=report.detail, key=self._key)
            return replace(applied, suppressed=True)
        return applied

    async def _soft_limit_reached(self, conn: AsyncConnection, subscriber_id: int) -> bool:
        since = utcnow() - timedelta(days=self._soft.days)
        count = await conn.scalar(
            select(func.count(func.distinct(bounces.c.delivery_id))).where(
                bounces.c.subscriber_id == subscriber_id,
                bounces.c.kind == str(Kind.SOFT),
                bounces.c.at >= since,
            )
        )
        return int(count or 0) >= self._soft.limit


async def _delivery(conn: AsyncConnection, ref: DeliveryRef) -> Any:
    """The email delivery the token names; None if it is gone or (an id used again on SQLite
    after its row was deleted) now belongs to someone else."""
    row = (
        await conn.execute(
            select(
                deliveries.c.id,
                deliveries.c.announcement_id,
                deliveries.c.recipient,
                deliveries.c.subscriber_id,
            ).where(deliveries.c.id == ref.delivery_id, deliveries.c.channel == "email")
        )
    ).first()
    if row is None or row.subscriber_id != ref.subscriber_id:
        return None
    return row


async def _subscriber(conn: AsyncConnection, subscriber_id: int | None) -> Any:
    if subscriber_id is None:
        return None
    query = select(subscribers.c.id, subscribers.c.email).where(subscribers.c.id == subscriber_id)
    return (await conn.execute(query)).first()


async def _unsubscribe(
    conn: AsyncConnection, person: Any, report: Report, announcement_id: int | None
) -> bool:
    if person is None:
        return False
    now = utcnow()
    result = await conn.execute(
        update(subscribers)
        .where(
            subscribers.c.id == person.id,
            subscribers.c.status != str(SubscriberStatus.UNSUBSCRIBED),
        )
        .values(status=str(SubscriberStatus.UNSUBSCRIBED), updated_at=now)
    )
    if not result.rowcount:
        return False
    detail: dict[str, Any] = {"method": "complaint", "feedback_type": report.detail}
    if announcement_id is not None:
        detail["announcement_id"] = announcement_id
    await record(conn, person.id, ConsentEvent.UNSUBSCRIBED, channel="email", detail=detail, at=now)
    return True


async def tally(conn: AsyncConnection, announcement_id: int) -> dict[Kind, int]:
    """Per kind, how many of the announcement's deliveries were reported (0 for none)."""
    rows = await conn.execute(
        select(bounces.c.kind, func.count())
        .where(bounces.c.announcement_id == announcement_id)
        .group_by(bounces.c.kind)
    )
    found = {Kind(kind): int(count) for kind, count in rows}
    return {kind: found.get(kind, 0) for kind in Kind}
