"""Operations on the lifecycle: queue, stop and settle a cancel, retry failed, expire, pause.

Staff reach these through ``staff.workflow`` (permissions, audit log), whichever door they use;
the scheduler's sweep calls ``expire_due`` itself.

A cancel is honest about the sends in flight: the queued deliveries stop at once, while the ones
a worker has claimed are its own until it either sends them (a server accepted them: they count
as sent) or, seeing the announcement cancelled, hands them back (they are stopped). ``settle``
waits for that, bounded, and reports what the database then holds.

Every change here that touches many deliveries goes through ``outbox.change_in_order`` (locks by
id, in batches; rows a worker holds are skipped, not waited for) and runs under ``retrying``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus, DeliveryStatus
from bzi_broadcast.delivery.outbox import change_in_batches, change_in_order, requeue_failed
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.i18n import ngettext
from bzi_broadcast.store.announcements import Announcements, TransitionError, transition, utcnow
from bzi_broadcast.store.retrying import retrying
from bzi_broadcast.store.schema import announcements, channel_state, deliveries

if TYPE_CHECKING:  # annotations only: `status` imports this module without the content model
    from bzi_broadcast.content.model import Announcement

S = AnnouncementStatus
D = DeliveryStatus
SETTLE_SECONDS = 30.0  # how long a cancel waits for the sends in flight (web and API requests)


async def queue(
    store: Announcements,
    announcement: Announcement,
    *,
    at: datetime | None,
    actor: str,
    allow_past: bool = False,
) -> int:
    """Store ``announcement`` as scheduled for ``at`` (or its own ``publish_at``)."""
    publish_at = at or announcement.publish_at
    now = utcnow()
    if publish_at is None:
        raise BroadcastError(_("Kein Zeitpunkt: publish_at in der Datei oder --at angeben"))
    if publish_at < now and not allow_past:
        message = _("{time} liegt in der Vergangenheit; mit --now sofort senden")
        raise BroadcastError(message.format(time=publish_at.isoformat(timespec="minutes")))
    if announcement.expires_at and announcement.expires_at <= max(publish_at, now):
        raise BroadcastError(_("Die Ankündigung ist zum Sendezeitpunkt schon abgelaufen"))
    return await store.create(
        announcement, actor=actor, status=S.SCHEDULED, publish_at=max(publish_at, now)
    )


@dataclass(frozen=True, kw_only=True)
class Cancellation:
    """What a cancel left behind, as the database holds it once the sends in flight settled."""

    stopped: int  # cancelled: never sent
    sent: int  # accepted by a server before the cancel reached them
    in_flight: int  # still claimed when the wait ran out: may yet be sent
    failed: int = 0

    def summary(self) -> str:
        """„N Zustellungen gestoppt, M bereits gesendet, K noch unterwegs“."""
        parts = [
            ngettext("{n} Zustellung gestoppt", "{n} Zustellungen gestoppt", self.stopped).format(
                n=self.stopped
            ),
            _("{n} bereits gesendet").format(n=self.sent),
            _("{n} noch unterwegs").format(n=self.in_flight),
        ]
        if self.failed:
            parts.append(_("{n} fehlgeschlagen").format(n=self.failed))
        return ", ".join(parts)


_STOPPED = {"status": str(D.CANCELLED), "lease_until": None, "worker": None}


async def stop_queued(conn: AsyncConnection, announcement_id: int) -> int:
    """Cancel the deliveries no worker holds: the queued ones, and those whose worker's lease ran
    out (it is gone: ``requeue_expired_leases`` would hand them to another). A claimed row is left
    to its worker, which sends it or, seeing the announcement cancelled, hands it back; a row
    locked right now (being claimed, or its outcome being written) is skipped, not waited for:
    ``settle`` comes back for it."""
    unclaimed = and_(
        deliveries.c.announcement_id == announcement_id,
        or_(
            deliveries.c.status == str(D.QUEUED),
            and_(deliveries.c.status == str(D.SENDING), deliveries.c.lease_until < utcnow()),
        ),
    )
    return await change_in_order(conn, unclaimed, _STOPPED, skip_locked=True)


async def stop_leftovers(engine: AsyncEngine) -> int:
    """Queued rows of announcements that are no longer sending (cancelled or expired): a worker
    whose send failed transiently after the cancel put its row back in the queue, where nothing
    will claim it. For the sweep; what a cancel's ``settle`` did not wait for ends here."""
    over = select(announcements.c.id).where(
        announcements.c.status.in_([str(S.CANCELLED), str(S.EXPIRED)])
    )
    leftover = and_(deliveries.c.status == str(D.QUEUED), deliveries.c.announcement_id.in_(over))
    return await change_in_batches(engine, leftover, _STOPPED, skip_locked=True)


async def settle(
    engine: AsyncEngine, announcement_id: int, *, timeout: float, interval: float = 0.05
) -> Cancellation:
    """Wait (at most ``timeout`` seconds) until no delivery of a cancelled announcement is in a
    worker's hands, stopping what is handed back; then the numbers as stored."""

    async def stop(conn: AsyncConnection) -> int:
        claimed = await _count(conn, announcement_id, D.SENDING)
        await stop_queued(conn, announcement_id)
        return claimed

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while await retrying(engine, stop):
                await asyncio.sleep(interval)  # polling the database: the workers are elsewhere
    async with engine.connect() as conn:
        counts = await _counts(conn, announcement_id)
    return Cancellation(
        stopped=counts.get(D.CANCELLED, 0),
        sent=counts.get(D.SENT, 0),
        in_flight=counts.get(D.SENDING, 0) + counts.get(D.QUEUED, 0),
        failed=counts.get(D.FAILED, 0),
    )


async def _count(conn: AsyncConnection, announcement_id: int, status: DeliveryStatus) -> int:
    query = select(func.count()).where(
        deliveries.c.announcement_id == announcement_id, deliveries.c.status == str(status)
    )
    return int((await conn.execute(query)).scalar_one())


async def _counts(conn: AsyncConnection, announcement_id: int) -> dict[DeliveryStatus, int]:
    query = (
        select(deliveries.c.status, func.count())
        .where(deliveries.c.announcement_id == announcement_id)
        .group_by(deliveries.c.status)
    )
    return {DeliveryStatus(status): int(n) for status, n in await conn.execute(query)}


async def retry_failed(engine: AsyncEngine, announcement_id: int, *, actor: str) -> int:
    """Re-queue the failed rows of a finished or still-sending announcement."""
    now = utcnow()

    async def requeue(conn: AsyncConnection) -> int:
        status = (
            await conn.execute(
                select(announcements.c.status).where(announcements.c.id == announcement_id)
            )
        ).scalar_one_or_none()
        if status == S.PARTIALLY_FAILED:
            await transition(conn, announcement_id, S.SENDING, actor=actor, detail="retry failed")
        elif status != S.SENDING:
            raise TransitionError(
                _(
                    "Ankündigung {id} hat keine fehlgeschlagenen Zustellungen zum Wiederholen"
                ).format(id=announcement_id)
            )
        return await requeue_failed(conn, announcement_id, now)

    return await retrying(engine, requeue)


async def expire_due(engine: AsyncEngine, now: datetime | None = None) -> list[int]:
    """Nothing is sent after ``expires_at``: expire scheduled and sending announcements, each in
    its own transaction. Like a cancel, the queued rows stop at once and the claimed ones are
    their worker's, which sees the announcement expired and hands them back unsent."""
    now = now or utcnow()
    query = (
        select(announcements.c.id)
        .where(
            announcements.c.status.in_([str(S.SCHEDULED), str(S.SENDING)]),
            announcements.c.expires_at <= now,
        )
        .order_by(announcements.c.id)
    )
    async with engine.connect() as conn:
        due = list((await conn.execute(query)).scalars())
    return [announcement_id for announcement_id in due if await _expire(engine, announcement_id)]


async def _expire(engine: AsyncEngine, announcement_id: int) -> bool:
    async def expire(conn: AsyncConnection) -> bool:
        if not await transition(conn, announcement_id, S.EXPIRED, actor="scheduler"):
            return False  # sent, cancelled or expired by another replica meanwhile
        await stop_queued(conn, announcement_id)
        return True

    return await retrying(engine, expire)


async def set_paused(engine: AsyncEngine, channel: str, paused: bool, reason: str | None) -> None:
    now = utcnow()

    async def store(conn: AsyncConnection) -> None:
        changed = await conn.execute(
            update(channel_state)
            .where(and_(channel_state.c.channel == channel))
            .values(paused=paused, reason=reason, changed_at=now)
        )
        if changed.rowcount == 0:
            await conn.execute(
                channel_state.insert().values(
                    channel=channel, paused=paused, reason=reason, changed_at=now
                )
            )

    await retrying(engine, store)


async def paused_channels(engine: AsyncEngine) -> dict[str, str | None]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(channel_state.c.channel, channel_state.c.reason).where(channel_state.c.paused)
        )
        return {row.channel: row.reason for row in rows}
