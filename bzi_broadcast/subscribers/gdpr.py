"""What the GDPR gives every subscriber: a copy of their data (Art. 15, 20) and erasure (Art. 17).

Erasure removes the person's row, topics and consent log and replaces their address in past
delivery records by a placeholder; only a keyed hash stays in the suppression list, so a later
import cannot add the address again. Unconfirmed sign-ups are deleted after
``subscribers.unconfirmed_days``: without a confirmation there is no consent to keep them for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, delete, insert, literal, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import deliveries, subscriber_topics, subscribers, suppressions
from bzi_broadcast.subscribers.consent import history
from bzi_broadcast.subscribers.store import SubscriberStatus, normalize_email, suppression_hash

_HASHES_PER_QUERY = 1000  # bound parameters per statement stay well below every driver's limit

EXPORT_BATCH = 1000


async def find(conn: AsyncConnection, email: str) -> Row[Any] | None:
    address = normalize_email(email)
    if address is None:
        return None
    return (await conn.execute(select(subscribers).where(subscribers.c.email == address))).first()


async def export_subscriber(engine: AsyncEngine, email: str) -> dict[str, Any] | None:
    """Everything held about one person, as JSON-ready data (None: no such subscriber)."""
    async with engine.connect() as conn:
        row = await find(conn, email)
        if row is None:
            return None
        sent = await conn.execute(
            select(
                deliveries.c.announcement_id,
                deliveries.c.channel,
                deliveries.c.status,
                deliveries.c.sent_at,
            )
            .where(deliveries.c.subscriber_id == row.id)
            .order_by(deliveries.c.id)
        )
        return {
            **_profile(row),
            "topics": await _topics(conn, row.id),
            "consent": [event.as_json() for event in await history(conn, row.id)],
            "deliveries": [
                {
                    "announcement_id": d.announcement_id,
                    "channel": d.channel,
                    "status": d.status,
                    "sent_at": _iso(d.sent_at),
                }
                for d in sent
            ],
        }


async def export_all(engine: AsyncEngine) -> AsyncIterator[dict[str, Any]]:
    """Every subscriber with topics, in id order, a batch at a time (memory stays flat)."""
    last = 0
    while True:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(subscribers)
                    .where(subscribers.c.id > last)
                    .order_by(subscribers.c.id)
                    .limit(EXPORT_BATCH)
                )
            ).all()
            if not rows:
                return
            topics: dict[int, list[str]] = {}
            for subscriber_id, topic in await conn.execute(
                select(subscriber_topics.c.subscriber_id, subscriber_topics.c.topic)
                .where(subscriber_topics.c.subscriber_id.in_([r.id for r in rows]))
                .order_by(subscriber_topics.c.topic)
            ):
                topics.setdefault(subscriber_id, []).append(topic)
        for row in rows:
            yield {**_profile(row), "topics": topics.get(row.id, [])}
        last = rows[-1].id


async def erase(engine: AsyncEngine, email: str, key: bytes) -> bool:
    """Remove the person; keep only the keyed hash of the address. False: no such subscriber."""
    async with engine.begin() as conn:
        row = await find(conn, email)
        if row is None:
            return False
        await _erase(conn, row, key)
        return True


async def erase_subscriber(engine: AsyncEngine, subscriber_id: int, key: bytes) -> bool:
    """The same by id: also for someone who only uses the Telegram bot and has no address."""
    async with engine.begin() as conn:
        row = (
            await conn.execute(select(subscribers).where(subscribers.c.id == subscriber_id))
        ).first()
        if row is None:
            return False
        await _erase(conn, row, key)
        return True


async def _erase(conn: AsyncConnection, row: Row[Any], key: bytes) -> None:
    # past deliveries keep their state, not the address or chat they went to
    await conn.execute(
        update(deliveries)
        .where(
            deliveries.c.subscriber_id == row.id, deliveries.c.channel.in_(["email", "telegram"])
        )
        .values(recipient=literal("erased:").concat(cast(deliveries.c.id, String)))
    )
    await conn.execute(delete(subscribers).where(subscribers.c.id == row.id))
    if row.email is None:
        return
    digest = suppression_hash(row.email, key)
    known = (
        await conn.execute(
            select(suppressions.c.email_hash).where(suppressions.c.email_hash == digest)
        )
    ).first()
    if known is None:
        await conn.execute(
            insert(suppressions).values(
                email_hash=digest, reason="erased", detail=None, created_at=utcnow()
            )
        )


async def purge_unconfirmed(engine: AsyncEngine, days: int, now: datetime | None = None) -> int:
    """Delete sign-ups nobody ever confirmed within ``days``; returns how many."""
    cutoff = (now or utcnow()) - timedelta(days=days)
    async with engine.begin() as conn:
        result = await conn.execute(
            delete(subscribers).where(
                subscribers.c.status == str(SubscriberStatus.PENDING),
                subscribers.c.created_at < cutoff,
                # someone confirmed before and now re-confirming (a bounced address coming back)
                # keeps their row and its consent proof
                subscribers.c.confirmed_at.is_(None),
            )
        )
        return int(result.rowcount or 0)


async def _topics(conn: AsyncConnection, subscriber_id: int) -> list[str]:
    return list(
        (
            await conn.execute(
                select(subscriber_topics.c.topic)
                .where(subscriber_topics.c.subscriber_id == subscriber_id)
                .order_by(subscriber_topics.c.topic)
            )
        ).scalars()
    )


def _profile(row: Row[Any]) -> dict[str, Any]:
    return {
        "email": row.email,
        "name": row.name,
        "telegram_chat_id": row.telegram_chat_id,
        "language": row.language,
        "status": row.status,
        "source": row.source,
        "created_at": _iso(row.created_at),
        "confirmed_at": _iso(row.confirmed_at),
        "paused_until": _iso(row.paused_until),
        "consent_version": row.consent_version,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def mark_suppressed(engine: AsyncEngine, key: bytes) -> int:
    """Mark every subscriber whose address is on the suppression list but not yet marked; how
    many. Release reads only the mark (SQL cannot compute the keyed hash), so an address that an
    older version let back in unmarked would otherwise be sent to; run at every start, it costs
    one HMAC per unmarked address."""
    async with engine.begin() as conn:
        rows = await conn.execute(
            select(subscribers.c.id, subscribers.c.email).where(
                subscribers.c.email.is_not(None), subscribers.c.suppressed_at.is_(None)
            )
        )
        by_hash = {suppression_hash(row.email, key): row.id for row in rows}
        listed: set[int] = set()
        for start in range(0, len(by_hash), _HASHES_PER_QUERY):
            chunk = list(by_hash)[start : start + _HASHES_PER_QUERY]
            found = await conn.execute(
                select(suppressions.c.email_hash).where(suppressions.c.email_hash.in_(chunk))
            )
            listed.update(by_hash[digest] for digest in found.scalars())
        if listed:
            await conn.execute(
                update(subscribers)
                .where(subscribers.c.id.in_(sorted(listed)))
                .values(suppressed_at=utcnow())
            )
    return len(listed)
