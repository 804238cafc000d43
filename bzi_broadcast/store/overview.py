"""What ``bzi-broadcast status`` shows: each announcement with its deliveries counted per channel
and state, and which channels are paused — one synchronous read over a SQLAlchemy ``Connection``.

Synchronous so that the command line can read a SQLite file without aiosqlite, greenlet or
SQLAlchemy's ORM (``store.engine.sqlite_at_head``); an ``AsyncConnection`` runs the same function
through ``run_sync`` (PostgreSQL, a database to migrate first, the live view). Read only; this
module imports no content model and nothing of delivery beyond the status names.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus, DeliveryStatus
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.store.announcements import NotFoundError
from bzi_broadcast.store.schema import announcements, channel_state, deliveries

Row = dict[str, Any]


def overview(connection: Connection, announcement_id: int | None = None) -> list[Row]:
    """Every announcement (by id), or the one asked for (``NotFoundError`` if there is none):
    id, title, status, publish_at (ISO 8601) and per channel the counts, the total and the pause."""
    query = select(
        announcements.c.id,
        announcements.c.title,
        announcements.c.status,
        announcements.c.publish_at,
    ).order_by(announcements.c.id)
    if announcement_id is not None:
        query = query.where(announcements.c.id == announcement_id)
    rows = connection.execute(query).all()
    if announcement_id is not None and not rows:
        raise NotFoundError(_("Ankündigung {id} gibt es nicht").format(id=announcement_id))
    counts = _counts(connection, announcement_id)
    paused = _paused(connection)
    return [
        {
            "id": row.id,
            "title": row.title,
            "status": str(AnnouncementStatus(row.status)),
            "publish_at": row.publish_at.isoformat() if row.publish_at else None,
            "channels": {
                channel: {**tally, "paused": channel in paused, "pause_reason": paused.get(channel)}
                for channel, tally in counts.get(row.id, {}).items()
            },
        }
        for row in rows
    ]


def _counts(connection: Connection, announcement_id: int | None) -> dict[int, dict[str, Row]]:
    """Per announcement and channel: how many deliveries are in each state, and the total."""
    query = (
        select(
            deliveries.c.announcement_id, deliveries.c.channel, deliveries.c.status, func.count()
        )
        .group_by(deliveries.c.announcement_id, deliveries.c.channel, deliveries.c.status)
        .order_by(deliveries.c.announcement_id, deliveries.c.channel)
    )
    if announcement_id is not None:
        query = query.where(deliveries.c.announcement_id == announcement_id)
    result: dict[int, dict[str, Row]] = {}
    for announcement, channel, status, count in connection.execute(query):
        channels = result.setdefault(announcement, {})
        tally = channels.setdefault(channel, {str(state): 0 for state in DeliveryStatus})
        tally[str(DeliveryStatus(status))] = count
    for channels in result.values():
        for tally in channels.values():
            tally["total"] = sum(tally.values())
    return result


def _paused(connection: Connection) -> dict[str, str | None]:
    """The paused channels and why."""
    query = select(channel_state.c.channel, channel_state.c.reason).where(channel_state.c.paused)
    return {row.channel: row.reason for row in connection.execute(query)}
