"""The outbox: delivery rows claimed under a lease, and every outcome written back in batches.

PostgreSQL workers claim with ``FOR UPDATE SKIP LOCKED``, so replicas never take the same row;
SQLite runs one claiming worker per file (its writes are serialised anyway). A row claimed but
not marked when its lease runs out goes back to the queue: a crash re-sends at most the rows that
were in flight.

Locks: every change of many rows takes their row locks in one order, by ascending id, a batch at a
time (``change_in_order``), and outcomes are locked by id before they are written. Two such
transactions can wait for each other but never in a circle, so PostgreSQL finds no deadlock to
break. Bulk changes that meet rows a worker may hold skip them (``SKIP LOCKED``) instead of
waiting: the worker hands them back itself. Each transaction runs under ``retrying``, the net for
locks taken in another order elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus, DeliveryStatus
from bzi_broadcast.store.announcements import transition, utcnow
from bzi_broadcast.store.retrying import retrying
from bzi_broadcast.store.schema import announcements, deliveries, subscribers

D = DeliveryStatus
BATCH = 1000  # rows locked and changed per statement


@dataclass(frozen=True, kw_only=True, slots=True)
class Claimed:
    id: int
    announcement_id: int
    channel: str
    recipient: str
    subscriber_id: int | None
    attempts: int
    link_key: str | None = None  # the subscriber's, for the links in the message


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What happened to one claimed row; written back by ``Outbox.record``."""

    id: int
    status: DeliveryStatus  # SENT, QUEUED (retry later) or FAILED
    attempts: int
    at: datetime
    remote_id: str | None = None
    new_recipient: str | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Counts:
    queued: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.sending + self.sent + self.failed + self.cancelled


class Outbox:
    def __init__(self, engine: AsyncEngine, *, worker_id: str, lease: timedelta) -> None:
        self._engine = engine
        self._worker_id = worker_id
        self._lease = lease
        self._skip_locked = engine.dialect.name == "postgresql"

    async def claim(self, channel: str, limit: int, now: datetime | None = None) -> list[Claimed]:
        """Take up to ``limit`` due rows of ``channel`` whose announcement is sending."""
        now = now or utcnow()
        candidates = (
            select(deliveries.c.id)
            .join(announcements, announcements.c.id == deliveries.c.announcement_id)
            .where(
                deliveries.c.channel == channel,
                deliveries.c.status == str(D.QUEUED),
                deliveries.c.next_attempt_at <= now,
                announcements.c.status == str(AnnouncementStatus.SENDING),
            )
            .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
            .limit(limit)
        )
        if self._skip_locked:
            candidates = candidates.with_for_update(skip_locked=True, of=deliveries)
        claim = (
            update(deliveries)
            .where(deliveries.c.id.in_(candidates.scalar_subquery()))
            .values(status=str(D.SENDING), lease_until=now + self._lease, worker=self._worker_id)
            .returning(
                deliveries.c.id,
                deliveries.c.announcement_id,
                deliveries.c.channel,
                deliveries.c.recipient,
                deliveries.c.subscriber_id,
                deliveries.c.attempts,
                select(subscribers.c.link_key)
                .where(subscribers.c.id == deliveries.c.subscriber_id)
                .scalar_subquery()
                .label("link_key"),
            )
        )
        async with self._engine.begin() as conn:
            rows = (await conn.execute(claim)).all()
        return sorted((Claimed(**row._mapping) for row in rows), key=lambda c: c.id)

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        """Write a batch of outcomes in one transaction (executemany per kind), sorted by id and,
        on PostgreSQL, locked by id first: the kinds are written one after another, and without
        the lock their rows would be taken out of order."""
        if not outcomes:
            return
        ordered = sorted(outcomes, key=lambda o: o.id)

        async def write(conn: AsyncConnection) -> None:
            if self._skip_locked:
                await lock_in_order(conn, [o.id for o in ordered])
            await _write_outcomes(conn, ordered)

        await retrying(self._engine, write)

    async def requeue_expired_leases(self, now: datetime | None = None) -> int:
        """Rows whose worker died mid-send go back to the queue (and will be sent again). A row
        being written right now (a slow worker's outcome) is skipped: its worker is alive."""
        expired = deliveries.c.lease_until < (now or utcnow())
        return await self._requeue(expired, skip_locked=True)

    async def unclaim(self, ids: Sequence[int]) -> int:
        """Return claimed rows that were not attempted to the queue at once."""
        return await self._requeue(deliveries.c.id.in_(list(ids)))

    async def release_mine(self, channel: str) -> int:
        """On shutdown: hand this worker's unsent claims of ``channel`` back at once instead of at
        lease end. Only that channel's: the process's other workers may still be sending theirs,
        and a row handed back mid-send is claimed and sent again by another replica."""
        return await self._requeue(
            and_(deliveries.c.worker == self._worker_id, deliveries.c.channel == channel)
        )

    async def still_sending(self, announcement_id: int) -> bool:
        """Whether the announcement is still to be sent (not cancelled or expired meanwhile)."""
        query = select(announcements.c.status).where(announcements.c.id == announcement_id)
        async with self._engine.connect() as conn:
            status = (await conn.execute(query)).scalar_one_or_none()
        return status == str(AnnouncementStatus.SENDING)

    async def drop(self, ids: Sequence[int]) -> int:
        """Claimed rows of a cancelled announcement, not attempted: cancelled, never sent."""
        which = and_(deliveries.c.status == str(D.SENDING), deliveries.c.id.in_(list(ids)))
        values = {"status": str(D.CANCELLED), "lease_until": None, "worker": None}
        return await change_in_batches(self._engine, which, values, skip_locked=False)

    async def _requeue(self, which: ColumnElement[bool], *, skip_locked: bool = False) -> int:
        return await requeue(self._engine, which, skip_locked=skip_locked)

    async def finish_announcements(self) -> list[tuple[int, AnnouncementStatus]]:
        """Close every sending announcement that has nothing left to send."""
        open_rows = select(deliveries.c.id).where(
            deliveries.c.announcement_id == announcements.c.id,
            deliveries.c.status.in_([str(D.QUEUED), str(D.SENDING)]),
        )
        done = (
            select(announcements.c.id)
            .where(
                announcements.c.status == str(AnnouncementStatus.SENDING),
                announcements.c.fanout_cursor.is_(None),
                ~open_rows.exists(),
            )
            .order_by(announcements.c.id)  # every worker of every replica locks them in one order
        )

        async def finish(conn: AsyncConnection) -> list[tuple[int, AnnouncementStatus]]:
            finished: list[tuple[int, AnnouncementStatus]] = []
            for announcement_id in (await conn.execute(done)).scalars().all():
                target = await _final_status(conn, announcement_id)
                if await transition(
                    conn, announcement_id, target, actor="worker", finished_at=utcnow()
                ):
                    finished.append((announcement_id, target))
            return finished

        return await retrying(self._engine, finish)

    async def counts(self, announcement_id: int) -> dict[str, Counts]:
        query = (
            select(deliveries.c.channel, deliveries.c.status, func.count())
            .where(deliveries.c.announcement_id == announcement_id)
            .group_by(deliveries.c.channel, deliveries.c.status)
        )
        per_channel: dict[str, dict[str, int]] = {}
        async with self._engine.connect() as conn:
            for channel, status, count in await conn.execute(query):
                per_channel.setdefault(channel, {})[status] = count
        return {channel: Counts(**values) for channel, values in per_channel.items()}


async def _final_status(conn: AsyncConnection, announcement_id: int) -> AnnouncementStatus:
    failed = (
        await conn.execute(
            select(func.count()).where(
                deliveries.c.announcement_id == announcement_id,
                deliveries.c.status == str(D.FAILED),
            )
        )
    ).scalar_one()
    return AnnouncementStatus.PARTIALLY_FAILED if failed else AnnouncementStatus.SENT


_SENT = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("b_id"))
    .values(
        status=str(D.SENT),
        attempts=bindparam("b_attempts"),
        sent_at=bindparam("b_at"),
        remote_id=bindparam("b_remote_id"),
        recipient=func.coalesce(bindparam("b_recipient"), deliveries.c.recipient),
        lease_until=None,
        last_error=None,
    )
)
_RETRY = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("b_id"), deliveries.c.status == str(D.SENDING))
    .values(
        status=str(D.QUEUED),
        attempts=bindparam("b_attempts"),
        next_attempt_at=bindparam("b_next"),
        last_error=bindparam("b_error"),
        lease_until=None,
        worker=None,
    )
)
_FAILED = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("b_id"))
    .values(
        status=str(D.FAILED),
        attempts=bindparam("b_attempts"),
        last_error=bindparam("b_error"),
        lease_until=None,
    )
)


async def _write_outcomes(conn: AsyncConnection, outcomes: Sequence[Outcome]) -> None:
    sent = [
        {
            "b_id": o.id,
            "b_attempts": o.attempts,
            "b_at": o.at,
            "b_remote_id": o.remote_id,
            "b_recipient": o.new_recipient,
        }
        for o in outcomes
        if o.status == D.SENT
    ]
    retry = [
        {"b_id": o.id, "b_attempts": o.attempts, "b_next": o.next_attempt_at, "b_error": o.error}
        for o in outcomes
        if o.status == D.QUEUED
    ]
    failed = [
        {"b_id": o.id, "b_attempts": o.attempts, "b_error": o.error}
        for o in outcomes
        if o.status == D.FAILED
    ]
    for statement, params in ((_SENT, sent), (_RETRY, retry), (_FAILED, failed)):
        if params:
            await conn.execute(statement, params)


async def requeue(
    engine: AsyncEngine, which: ColumnElement[bool], *, skip_locked: bool = False
) -> int:
    """Claimed rows matching ``which`` back to the queue. Without ``skip_locked`` it waits for a
    row being written (its outcome, say); those are few and nobody keeps them locked for long."""
    claimed = and_(deliveries.c.status == str(D.SENDING), which)
    values = {"status": str(D.QUEUED), "lease_until": None, "worker": None}
    return await change_in_batches(engine, claimed, values, skip_locked=skip_locked)


async def requeue_claims_of(engine: AsyncEngine, worker_id: str) -> int:
    """Every claim of a worker that is gone (its process died) back to the queue, at once."""
    return await requeue(engine, deliveries.c.worker == worker_id)


async def requeue_claims_not_of(engine: AsyncEngine, worker_id: str) -> int:
    """Every claim but ``worker_id``'s back to the queue: for SQLite, where one process serves a
    file, so at its start any other claim was left by an earlier process that died."""
    others = or_(deliveries.c.worker.is_(None), deliveries.c.worker != worker_id)
    return await requeue(engine, others)


async def requeue_failed(conn: AsyncConnection, announcement_id: int, now: datetime) -> int:
    """The failed rows of the announcement back to the queue, as if never attempted."""
    failed = and_(
        deliveries.c.announcement_id == announcement_id, deliveries.c.status == str(D.FAILED)
    )
    values = {"status": str(D.QUEUED), "next_attempt_at": now, "attempts": 0, "last_error": None}
    return await change_in_order(conn, failed, values, skip_locked=False)


# --- many rows at once, locked in one order ------------------------------------------------------


async def change_in_order(
    conn: AsyncConnection,
    which: ColumnElement[bool],
    values: dict[str, Any],
    *,
    skip_locked: bool,
    batch: int = BATCH,
) -> int:
    """Set ``values`` on every row matching ``which``, in this transaction: locked by ascending
    id, ``batch`` rows per statement, each batch after the last one's ids (so the order holds
    across batches too). With ``skip_locked``, rows another transaction holds are left alone."""
    changed, after = 0, 0
    while ids := await _change_batch(conn, which, values, skip_locked, after, batch):
        changed, after = changed + len(ids), max(ids)
    return changed


async def change_in_batches(
    engine: AsyncEngine,
    which: ColumnElement[bool],
    values: dict[str, Any],
    *,
    skip_locked: bool,
    batch: int = BATCH,
) -> int:
    """Like ``change_in_order``, one transaction per batch: no lock is held longer than one
    batch takes, and a deadlock (should one happen anyway) repeats only that batch."""
    changed, after = 0, 0
    while True:

        async def one(conn: AsyncConnection, after: int = after) -> list[int]:
            return await _change_batch(conn, which, values, skip_locked, after, batch)

        ids = await retrying(engine, one)
        if not ids:
            return changed
        changed, after = changed + len(ids), max(ids)


async def _change_batch(
    conn: AsyncConnection,
    which: ColumnElement[bool],
    values: dict[str, Any],
    skip_locked: bool,
    after: int,
    batch: int,
) -> list[int]:
    """One statement: ``UPDATE … WHERE id IN (SELECT id … ORDER BY id LIMIT n FOR UPDATE)``.
    PostgreSQL locks the rows as the ordered scan yields them and rechecks ``which`` on a row it
    had to wait for; SQLite has one writer at a time and no row locks (nor ``FOR UPDATE``)."""
    ids = (
        select(deliveries.c.id)
        .where(which, deliveries.c.id > after)
        .order_by(deliveries.c.id)
        .limit(batch)
    )
    if conn.dialect.name == "postgresql":
        ids = ids.with_for_update(skip_locked=skip_locked, of=deliveries)
    query = (
        update(deliveries)
        .where(deliveries.c.id.in_(ids.scalar_subquery()))
        .values(**values)
        .returning(deliveries.c.id)
    )
    return list((await conn.execute(query)).scalars())


async def lock_in_order(conn: AsyncConnection, ids: Sequence[int]) -> None:
    """Lock the rows ``ids`` by ascending id (PostgreSQL), waiting for each in turn."""
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), BATCH):
        chunk = ordered[start : start + BATCH]
        query = (
            select(deliveries.c.id)
            .where(deliveries.c.id.in_(chunk))
            .order_by(deliveries.c.id)
            .with_for_update()
        )
        await conn.execute(query)
