"""Parts of a multi-part delivery (a Mastodon thread).

Every part of a thread gets its row, with its Idempotency-Key, before the first part is posted:
the number of rows is the length of the thread, so an incomplete thread can say „2 von 5“. The
time of a part's first attempt is stored before that attempt (Mastodon forgets a key after an
hour) and its remote id as soon as the server answers, so a retry continues, never repeats.
Staff may delete the posted parts of an incomplete thread; those rows keep their ids and URLs
with the time of deletion, and get a fresh key should the thread be posted again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.store.schema import deliveries, delivery_parts


@dataclass(frozen=True, kw_only=True)
class Part:
    part: int  # 0-based position in the thread
    idempotency_key: str
    remote_id: str | None = None
    url: str | None = None
    first_attempt_at: datetime | None = None
    deleted_at: datetime | None = None

    @property
    def posted(self) -> bool:
        """Public on the server (posted and not deleted since)."""
        return self.remote_id is not None and self.deleted_at is None


@dataclass(frozen=True, kw_only=True)
class Thread:
    """One delivery's thread as far as it went: which parts are public, out of how many."""

    delivery_id: int
    status: str  # the delivery row's
    parts: tuple[Part, ...]

    @property
    def posted(self) -> tuple[Part, ...]:
        return tuple(part for part in self.parts if part.posted)

    @property
    def total(self) -> int:
        return len(self.parts)

    @property
    def incomplete(self) -> bool:
        """Failed for good after some, not all, parts went out."""
        return self.status == "failed" and 0 < len(self.posted) < self.total


def _part(row: object) -> Part:
    return Part(**{name: getattr(row, name) for name in Part.__dataclass_fields__})


def _where(delivery_id: int, part: int) -> ColumnElement[bool]:
    return and_(delivery_parts.c.delivery_id == delivery_id, delivery_parts.c.part == part)


class Parts:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def of(self, delivery_id: int) -> dict[int, Part]:
        async with self._engine.connect() as conn:
            return await _of(conn, delivery_id)

    async def plan(self, delivery_id: int, count: int) -> dict[int, Part]:
        """Rows for parts 0 … count−1, each with a key; deleted parts start afresh (their key is
        spent), and unposted rows beyond ``count`` go (the limits, and so the split, changed)."""
        async with self._engine.begin() as conn:
            existing = await _of(conn, delivery_id)
            surplus = [n for n, p in existing.items() if n >= count and not p.posted]
            if surplus:
                await conn.execute(
                    delete(delivery_parts).where(
                        delivery_parts.c.delivery_id == delivery_id,
                        delivery_parts.c.part.in_(surplus),
                    )
                )
            for number in range(count):
                if number not in existing:
                    await conn.execute(
                        insert(delivery_parts).values(
                            delivery_id=delivery_id, part=number, idempotency_key=_key()
                        )
                    )
                elif existing[number].deleted_at is not None:
                    await conn.execute(
                        update(delivery_parts)
                        .where(_where(delivery_id, number))
                        .values(
                            idempotency_key=_key(),
                            remote_id=None,
                            url=None,
                            first_attempt_at=None,
                            deleted_at=None,
                        )
                    )
            return await _of(conn, delivery_id)

    async def attempt(self, delivery_id: int, part: int, at: datetime) -> None:
        """Note the start of the part's first attempt (later attempts leave it)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(delivery_parts)
                .where(_where(delivery_id, part), delivery_parts.c.first_attempt_at.is_(None))
                .values(first_attempt_at=at)
            )

    async def done(self, delivery_id: int, part: int, remote_id: str, url: str | None) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(delivery_parts)
                .where(_where(delivery_id, part))
                .values(remote_id=remote_id, url=url)
            )

    async def deleted(self, delivery_id: int, part: int, at: datetime) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(delivery_parts).where(_where(delivery_id, part)).values(deleted_at=at)
            )

    async def threads(self, announcement_id: int, channel: str = "mastodon") -> list[Thread]:
        """The threads of an announcement's deliveries on ``channel`` (one per account)."""
        query = (
            select(deliveries.c.id, deliveries.c.status, delivery_parts)
            .join(delivery_parts, delivery_parts.c.delivery_id == deliveries.c.id)
            .where(deliveries.c.announcement_id == announcement_id, deliveries.c.channel == channel)
            .order_by(deliveries.c.id, delivery_parts.c.part)
        )
        threads: dict[int, tuple[str, list[Part]]] = {}
        async with self._engine.connect() as conn:
            for row in await conn.execute(query):
                threads.setdefault(row.id, (row.status, []))[1].append(_part(row))
        return [
            Thread(delivery_id=delivery_id, status=status, parts=tuple(parts))
            for delivery_id, (status, parts) in threads.items()
        ]

    async def thread(self, delivery_id: int) -> Thread | None:
        """One delivery's thread."""
        query = select(deliveries.c.status).where(deliveries.c.id == delivery_id)
        async with self._engine.connect() as conn:
            status = (await conn.execute(query)).scalar_one_or_none()
            parts = await _of(conn, delivery_id)
        if status is None:
            return None
        return Thread(delivery_id=delivery_id, status=status, parts=tuple(parts.values()))


async def _of(conn: AsyncConnection, delivery_id: int) -> dict[int, Part]:
    query = (
        select(delivery_parts)
        .where(delivery_parts.c.delivery_id == delivery_id)
        .order_by(delivery_parts.c.part)
    )
    return {row.part: _part(row) for row in await conn.execute(query)}


def _key() -> str:
    return uuid.uuid4().hex
