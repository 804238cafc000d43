"""What ``bzi-broadcast status`` shows: each announcement with its deliveries counted per channel
and state, and which channels are paused.

Four plain SQL statements that SQLite and PostgreSQL read alike, run through an ``Execute``: the
standard library's ``sqlite3`` for a SQLite file at the newest migration (``store.quick``: the
command then imports no SQLAlchemy at all), or a SQLAlchemy connection for everything else
(PostgreSQL, the live view). Read only; this module imports nothing beyond the status names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus, DeliveryStatus
from bzi_broadcast.errors import NotFoundError
from bzi_broadcast.i18n import gettext as _

if TYPE_CHECKING:
    from sqlalchemy import Connection

Row = dict[str, Any]
# One statement with its named parameters (":id", as sqlite3 and SQLAlchemy's text() both take
# them) → its rows as tuples.
Execute = Callable[[str, Mapping[str, Any]], Iterable[Sequence[Any]]]

_ANNOUNCEMENTS = "SELECT id, title, status, publish_at FROM announcements {where} ORDER BY id"
_COUNTS = (
    "SELECT announcement_id, channel, status, count(*) FROM deliveries {where} "
    "GROUP BY announcement_id, channel, status ORDER BY announcement_id, channel"
)
_PAUSED = "SELECT channel, reason FROM channel_state WHERE paused"
# bounces and complaints read back from the bounce mailbox, per announcement (bzi_broadcast/bounces)
_REPORTS = (
    "SELECT announcement_id, kind, count(*) FROM bounces {where} GROUP BY announcement_id, kind"
)
REPORT_KINDS = ("hard", "soft", "complaint")


def on_connection(connection: Connection) -> Execute:
    """An ``Execute`` over a SQLAlchemy connection (PostgreSQL, or SQLite through aiosqlite)."""
    from sqlalchemy import text

    return lambda sql, parameters: connection.execute(text(sql), parameters).all()


def overview(execute: Execute, announcement_id: int | None = None) -> list[Row]:
    """Every announcement (by id), or the one asked for (``NotFoundError`` if there is none):
    id, title, status, publish_at (ISO 8601), per channel the counts, the total and the pause, and
    the bounces and complaints reported back (``reports``: hard, soft, complaint)."""
    one = {"id": announcement_id} if announcement_id is not None else {}
    rows = list(execute(_ANNOUNCEMENTS.format(where="WHERE id = :id" if one else ""), one))
    if one and not rows:
        raise NotFoundError(_("Ankündigung {id} gibt es nicht").format(id=announcement_id))
    where = "WHERE announcement_id = :id" if one else ""
    counts = _counts(execute(_COUNTS.format(where=where), one))
    paused = {row[0]: row[1] for row in execute(_PAUSED, {})}
    reports: dict[int, dict[str, int]] = {}
    for announcement, kind, count in execute(_REPORTS.format(where=where), one):
        reports.setdefault(announcement, dict.fromkeys(REPORT_KINDS, 0))[kind] = count
    return [
        {
            "id": id_,
            "title": title,
            "status": str(AnnouncementStatus(status)),
            "publish_at": _utc(publish_at).isoformat() if publish_at else None,
            "channels": {
                channel: {**tally, "paused": channel in paused, "pause_reason": paused.get(channel)}
                for channel, tally in counts.get(id_, {}).items()
            },
            "reports": reports.get(id_, dict.fromkeys(REPORT_KINDS, 0)),
        }
        for id_, title, status, publish_at in rows
    ]


def _counts(rows: Iterable[Sequence[Any]]) -> dict[int, dict[str, Row]]:
    """Per announcement and channel: how many deliveries are in each state, and the total."""
    result: dict[int, dict[str, Row]] = {}
    for announcement, channel, status, count in rows:
        channels = result.setdefault(announcement, {})
        tally = channels.setdefault(channel, {str(state): 0 for state in DeliveryStatus})
        tally[str(DeliveryStatus(status))] = count
    for channels in result.values():
        for tally in channels.values():
            tally["total"] = sum(tally.values())
    return result


def _utc(moment: datetime | str) -> datetime:
    """A stored moment as an aware UTC datetime: the SQLite driver gives the text SQLAlchemy wrote
    (UTC without an offset, ``store.schema.UTCDateTime``), PostgreSQL an aware datetime."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
