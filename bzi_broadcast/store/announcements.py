"""Announcements in the database: create, read, and conditional status transitions with an audit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select, update

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus, sources_of
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.errors import (
    NotFoundError as NotFoundError,  # raised here: callers may catch it from here
)
from bzi_broadcast.i18n import N_
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.store.schema import announcement_events, announcement_topics, announcements

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from bzi_broadcast.content.model import Announcement


class TransitionError(BroadcastError):
    """Dieser Statuswechsel ist nicht möglich."""


_DEFAULT_MESSAGES = (N_("Nicht gefunden."), N_("Dieser Statuswechsel ist nicht möglich."))


@dataclass(frozen=True, kw_only=True)
class AnnouncementRecord:
    id: int
    title: str
    language: str
    status: AnnouncementStatus
    publish_at: datetime | None
    expires_at: datetime | None
    content: dict[str, Any]
    created_at: datetime

    def announcement(self) -> Announcement:
        # The content model (Markdown, YAML, pydantic) only when asked: `status` reads rows only.
        from bzi_broadcast.content.model import Announcement

        return Announcement.model_validate(self.content)


@dataclass(frozen=True, kw_only=True)
class Event:
    from_status: AnnouncementStatus | None
    to_status: AnnouncementStatus
    actor: str
    at: datetime
    detail: str | None


def utcnow() -> datetime:
    return datetime.now(UTC)


class Announcements:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self,
        announcement: Announcement,
        *,
        actor: str,
        status: AnnouncementStatus = AnnouncementStatus.DRAFT,
        publish_at: datetime | None = None,
    ) -> int:
        now = utcnow()
        values = {
            "title": announcement.title,
            "language": str(announcement.language),
            "translation_group": announcement.translation_group,
            "content": announcement.model_dump(mode="json"),
            "status": str(status),
            "publish_at": publish_at or announcement.publish_at,
            "expires_at": announcement.expires_at,
            "created_at": now,
            "updated_at": now,
        }
        async with self._engine.begin() as conn:
            result = await conn.execute(insert(announcements).values(values))
            new_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            topics = [{"announcement_id": new_id, "topic": t} for t in set(announcement.topics)]
            if topics:
                await conn.execute(insert(announcement_topics), topics)
            await record_event(conn, new_id, None, status, actor, None, now)
        return new_id

    async def get(self, announcement_id: int) -> AnnouncementRecord:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(announcements).where(announcements.c.id == announcement_id)
                )
            ).one_or_none()
        if row is None:
            raise NotFoundError(_("Ankündigung {id} gibt es nicht").format(id=announcement_id))
        return _record_of(row._mapping)

    async def find(self, statuses: Iterable[AnnouncementStatus] = ()) -> list[AnnouncementRecord]:
        query = select(announcements).order_by(announcements.c.id)
        wanted = [str(s) for s in statuses]
        if wanted:
            query = query.where(announcements.c.status.in_(wanted))
        async with self._engine.connect() as conn:
            return [_record_of(row._mapping) for row in await conn.execute(query)]

    async def events(self, announcement_id: int) -> list[Event]:
        query = (
            select(announcement_events)
            .where(announcement_events.c.announcement_id == announcement_id)
            .order_by(announcement_events.c.id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Event(
                from_status=AnnouncementStatus(r.from_status) if r.from_status else None,
                to_status=AnnouncementStatus(r.to_status),
                actor=r.actor,
                at=r.at,
                detail=r.detail,
            )
            for r in rows
        ]

    async def transition(
        self,
        announcement_id: int,
        target: AnnouncementStatus,
        *,
        actor: str,
        detail: str | None = None,
        **values: Any,
    ) -> bool:
        """Move to ``target`` if the current status allows it; False when it did not."""
        async with self._engine.begin() as conn:
            return await transition(
                conn, announcement_id, target, actor=actor, detail=detail, **values
            )

    async def due(self, until: datetime) -> list[tuple[int, datetime]]:
        """Scheduled announcements to be published by ``until``, with their times."""
        query = select(announcements.c.id, announcements.c.publish_at).where(
            announcements.c.status == str(AnnouncementStatus.SCHEDULED),
            announcements.c.publish_at <= until,
        )
        async with self._engine.connect() as conn:
            return [(row.id, row.publish_at) for row in await conn.execute(query)]

    async def count_by_status(self) -> dict[str, int]:
        query = select(announcements.c.status, func.count().label("count")).group_by(
            announcements.c.status
        )
        async with self._engine.connect() as conn:
            return {str(row[0]): int(row[1]) for row in await conn.execute(query)}


async def transition(
    conn: AsyncConnection,
    announcement_id: int,
    target: AnnouncementStatus,
    *,
    actor: str,
    detail: str | None = None,
    extra_condition: Any = None,
    **values: Any,
) -> bool:
    """The conditional UPDATE at the heart of every lifecycle step (and of idempotent release)."""
    now = utcnow()
    current = (
        await conn.execute(
            select(announcements.c.status).where(announcements.c.id == announcement_id)
        )
    ).scalar_one_or_none()
    if current is None:
        raise NotFoundError(_("Ankündigung {id} gibt es nicht").format(id=announcement_id))
    allowed = [str(s) for s in sources_of(target)]
    query = (
        update(announcements)
        .where(announcements.c.id == announcement_id, announcements.c.status.in_(allowed))
        .values(status=str(target), updated_at=now, **values)
    )
    if extra_condition is not None:
        query = query.where(extra_condition)
    if (await conn.execute(query)).rowcount != 1:
        return False
    await record_event(
        conn, announcement_id, AnnouncementStatus(current), target, actor, detail, now
    )
    return True


async def record_event(
    conn: AsyncConnection,
    announcement_id: int,
    source: AnnouncementStatus | None,
    target: AnnouncementStatus,
    actor: str,
    detail: str | None,
    at: datetime,
) -> None:
    await conn.execute(
        insert(announcement_events).values(
            announcement_id=announcement_id,
            from_status=str(source) if source else None,
            to_status=str(target),
            actor=actor,
            detail=detail,
            at=at,
        )
    )


def _record_of(row: Any) -> AnnouncementRecord:
    return AnnouncementRecord(
        id=row["id"],
        title=row["title"],
        language=row["language"],
        status=AnnouncementStatus(row["status"]),
        publish_at=row["publish_at"],
        expires_at=row["expires_at"],
        content=row["content"],
        created_at=row["created_at"],
    )
