"""Staff operations on the lifecycle: queue, cancel, retry failed, expire, pause and resume.

Used alike by the CLI, the scheduler's sweep and (later) the web admin and API.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.content.model import Announcement
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.delivery.outbox import cancel_undelivered, requeue_failed
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.store.announcements import Announcements, TransitionError, transition, utcnow
from bzi_broadcast.store.schema import announcements, channel_state

S = AnnouncementStatus


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


async def cancel(engine: AsyncEngine, announcement_id: int, *, actor: str) -> int:
    """Cancel before or during sending; returns how many deliveries were stopped."""
    async with engine.begin() as conn:
        if not await transition(conn, announcement_id, S.CANCELLED, actor=actor):
            raise TransitionError(
                _("Ankündigung {id} kann nicht mehr abgebrochen werden").format(id=announcement_id)
            )
        return await cancel_undelivered(conn, announcement_id)


async def retry_failed(engine: AsyncEngine, announcement_id: int, *, actor: str) -> int:
    """Re-queue the failed rows of a finished or still-sending announcement."""
    now = utcnow()
    async with engine.begin() as conn:
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


async def expire_due(engine: AsyncEngine, now: datetime | None = None) -> list[int]:
    """Nothing is sent after ``expires_at``: expire scheduled and sending announcements."""
    now = now or utcnow()
    query = select(announcements.c.id).where(
        announcements.c.status.in_([str(S.SCHEDULED), str(S.SENDING)]),
        announcements.c.expires_at <= now,
    )
    expired = []
    async with engine.begin() as conn:
        for announcement_id in (await conn.execute(query)).scalars():
            if await transition(conn, announcement_id, S.EXPIRED, actor="scheduler"):
                await cancel_undelivered(conn, announcement_id)
                expired.append(announcement_id)
    return expired


async def set_paused(engine: AsyncEngine, channel: str, paused: bool, reason: str | None) -> None:
    now = utcnow()
    async with engine.begin() as conn:
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


async def paused_channels(engine: AsyncEngine) -> dict[str, str | None]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(channel_state.c.channel, channel_state.c.reason).where(channel_state.c.paused)
        )
        return {row.channel: row.reason for row in rows}
