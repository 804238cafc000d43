"""What staff do with an announcement, for the web workspace and the REST API alike.

Four eyes: an editor writes a draft and submits it; a publisher who is neither its author nor its
submitter approves it; a publisher schedules it (a time in Europe/Berlin, stored in UTC),
reschedules or cancels it (who may do which is ``staff.permissions``; the command line acts as
its ``Operator``). Every edit raises the announcement's version, and an edit based on an
older version is refused (``StaleEdit``) instead of overwriting someone else's change. Any edit of
a submitted or approved announcement sends it back to draft, so approval always covers what is
sent. Every step is written to the audit log in the same transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.content.model import Announcement
from bzi_broadcast.delivery import control
from bzi_broadcast.delivery.control import Cancellation
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff.accounts import User
from bzi_broadcast.staff.permissions import (
    Action,
    Actor,
    Operator,
    actor_id,
    actor_label,
    check,
)
from bzi_broadcast.staff.permissions import (
    NotAllowed as NotAllowed,  # raised by the steps: callers catch it from here
)
from bzi_broadcast.store.announcements import (
    NotFoundError,
    TransitionError,
    record_event,
    transition,
    utcnow,
)
from bzi_broadcast.store.schema import (
    announcement_topics,
    announcements,
    audit_log,
)

S = AnnouncementStatus
EDITABLE = frozenset({S.DRAFT, S.IN_REVIEW, S.APPROVED, S.SCHEDULED})


class StaleEdit(BroadcastError):
    """Die Ankündigung wurde inzwischen von jemand anderem geändert."""


@dataclass(frozen=True, kw_only=True)
class Draft:
    """One announcement as the workspace shows it."""

    id: int
    version: int
    status: AnnouncementStatus
    announcement: Announcement
    publish_at: datetime | None
    author_id: int | None
    submitted_by: int | None
    approved_by: int | None
    approved_at: datetime | None
    updated_at: datetime

    @property
    def editable(self) -> bool:
        return self.status in EDITABLE


async def load(engine: AsyncEngine, announcement_id: int) -> Draft:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(announcements).where(announcements.c.id == announcement_id))
        ).one_or_none()
    if row is None:
        raise NotFoundError(_("Ankündigung {id} gibt es nicht").format(id=announcement_id))
    return Draft(
        id=row.id,
        version=row.version,
        status=AnnouncementStatus(row.status),
        announcement=Announcement.model_validate(row.content),
        publish_at=row.publish_at,
        author_id=row.author_id,
        submitted_by=row.submitted_by,
        approved_by=row.approved_by,
        approved_at=row.approved_at,
        updated_at=row.updated_at,
    )


async def create(
    engine: AsyncEngine, announcement: Announcement, user: User, *, ip: str | None = None
) -> int:
    """A new draft written by ``user``."""
    now = utcnow()
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(announcements).values(
                _content_values(announcement)
                | {
                    "status": str(S.DRAFT),
                    "publish_at": announcement.publish_at,
                    "created_at": now,
                    "updated_at": now,
                    "version": 1,
                    "author_id": user.id,
                }
            )
        )
        new_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        await _set_topics(conn, new_id, announcement)
        await record_event(conn, new_id, None, S.DRAFT, _actor(user), None, now)
        await audit(conn, user, "announcement.created", {"id": new_id}, ip)
    return new_id


async def save(
    engine: AsyncEngine,
    announcement_id: int,
    announcement: Announcement,
    user: User,
    *,
    version: int,
    ip: str | None = None,
) -> int:
    """Store an edit based on ``version``; the new version. A submitted, approved or scheduled
    announcement goes back to draft: its approval covered the old text."""
    now = utcnow()
    async with engine.begin() as conn:
        facts = await _facts(conn, announcement_id)
        current = facts.status
        check(user, Action.EDIT_ANNOUNCEMENT, facts)
        if current not in EDITABLE:
            raise TransitionError(_("Eine versandte Ankündigung kann nicht mehr geändert werden."))
        changed = await conn.execute(
            update(announcements)
            .where(
                announcements.c.id == announcement_id,
                announcements.c.version == version,
                announcements.c.status.in_([str(s) for s in EDITABLE]),
            )
            .values(
                _content_values(announcement)
                | {
                    "status": str(S.DRAFT),
                    "publish_at": announcement.publish_at,
                    "updated_at": now,
                    "version": version + 1,
                    "submitted_by": None,
                    "approved_by": None,
                    "approved_at": None,
                }
            )
        )
        if changed.rowcount != 1:
            raise StaleEdit(
                _(
                    "Die Ankündigung wurde inzwischen von jemand anderem geändert. Ihre Fassung "
                    "wurde nicht gespeichert; laden Sie die Seite neu und übertragen Sie Ihre "
                    "Änderungen."
                )
            )
        await conn.execute(
            announcement_topics.delete().where(
                announcement_topics.c.announcement_id == announcement_id
            )
        )
        await _set_topics(conn, announcement_id, announcement)
        if current != S.DRAFT:
            await record_event(conn, announcement_id, current, S.DRAFT, _actor(user), "edited", now)
        await audit(conn, user, "announcement.edited", {"id": announcement_id}, ip)
    return version + 1


async def submit(
    engine: AsyncEngine, announcement_id: int, user: User, *, version: int, ip: str | None = None
) -> None:
    check(user, Action.SUBMIT)
    await _step(engine, announcement_id, user, S.IN_REVIEW, version, ip, submitted_by=user.id)


async def approve(
    engine: AsyncEngine, announcement_id: int, user: User, *, version: int, ip: str | None = None
) -> None:
    """A publisher approves what they did not write or submit themselves."""
    check(user, Action.APPROVE, await load(engine, announcement_id))
    await _step(
        engine,
        announcement_id,
        user,
        S.APPROVED,
        version,
        ip,
        approved_by=user.id,
        approved_at=utcnow(),
    )


async def return_to_draft(
    engine: AsyncEngine, announcement_id: int, user: User, *, version: int, ip: str | None = None
) -> None:
    """Withdraw a submission, or send it back (as an edit would: see ``may_edit``)."""
    check(user, Action.EDIT_ANNOUNCEMENT, await load(engine, announcement_id))
    await _step(
        engine,
        announcement_id,
        user,
        S.DRAFT,
        version,
        ip,
        submitted_by=None,
        approved_by=None,
        approved_at=None,
    )


async def schedule(
    engine: AsyncEngine,
    announcement_id: int,
    user: User,
    at: datetime,
    *,
    version: int,
    ip: str | None = None,
) -> None:
    """Schedule an approved announcement, or move a scheduled one to another time."""
    check(user, Action.SCHEDULE)
    if at.tzinfo is None:
        raise BroadcastError(_("Der Zeitpunkt braucht eine Zeitzone."))
    now = utcnow()
    if at < now:
        raise BroadcastError(_("Der Zeitpunkt liegt in der Vergangenheit."))
    draft = await load(engine, announcement_id)
    expires_at = draft.announcement.expires_at
    if expires_at is not None and expires_at <= at:
        raise BroadcastError(_("Die Ankündigung ist zum Sendezeitpunkt schon abgelaufen."))
    if draft.status not in (S.APPROVED, S.SCHEDULED):
        raise TransitionError(_("Nur eine freigegebene Ankündigung kann geplant werden."))
    await _step(engine, announcement_id, user, S.SCHEDULED, version, ip, publish_at=at)


async def cancel(
    engine: AsyncEngine,
    announcement_id: int,
    actor: Actor,
    *,
    ip: str | None = None,
    settle: float = control.SETTLE_SECONDS,
) -> Cancellation:
    """Cancel before or while sending. Queued deliveries stop at once; the answer comes when the
    ones in flight have settled (at most ``settle`` seconds), with the numbers as stored then."""
    check(actor, Action.CANCEL, await load(engine, announcement_id))
    async with engine.begin() as conn:
        if not await transition(conn, announcement_id, S.CANCELLED, actor=actor_label(actor)):
            raise TransitionError(
                _("Ankündigung {id} kann nicht mehr abgebrochen werden.").format(id=announcement_id)
            )
        await control.stop_queued(conn, announcement_id)
        await audit(conn, actor, "announcement.cancelled", {"id": announcement_id}, ip)
    return await control.settle(engine, announcement_id, timeout=settle)


async def retry_failed(
    engine: AsyncEngine, announcement_id: int, actor: Actor, *, ip: str | None = None
) -> int:
    """Queue the failed deliveries again; how many."""
    check(actor, Action.MANAGE_SENDING)
    requeued = await control.retry_failed(engine, announcement_id, actor=actor_label(actor))
    async with engine.begin() as conn:
        detail = {"id": announcement_id, "requeued": requeued}
        await audit(conn, actor, "announcement.retry_failed", detail, ip)
    return requeued


async def duplicate(
    engine: AsyncEngine, announcement_id: int, user: User, *, ip: str | None = None
) -> int:
    """A new draft with the content of any earlier announcement, without its times."""
    source = await load(engine, announcement_id)
    copy = source.announcement.model_copy(update={"publish_at": None, "expires_at": None})
    new_id = await create(engine, copy, user, ip=ip)
    async with engine.begin() as conn:
        await audit(
            conn, user, "announcement.duplicated", {"from": announcement_id, "id": new_id}, ip
        )
    return new_id


async def audit(
    conn: AsyncConnection,
    user: Actor | None,
    action: str,
    detail: dict[str, Any] | None,
    ip: str | None,
) -> None:
    """One row of the audit log; the operator (command line) is named in the detail."""
    if isinstance(user, Operator):
        detail = (detail or {}) | {"operator": user.name}
    await conn.execute(
        insert(audit_log).values(
            at=utcnow(),
            user_id=actor_id(user) if user else None,
            action=action,
            detail=json.dumps(detail, ensure_ascii=False) if detail else None,
            ip=ip,
        )
    )


async def _step(
    engine: AsyncEngine,
    announcement_id: int,
    user: User,
    target: AnnouncementStatus,
    version: int,
    ip: str | None,
    **values: Any,
) -> None:
    async with engine.begin() as conn:
        current = await current_status(conn, announcement_id)
        moved = await transition(
            conn,
            announcement_id,
            target,
            actor=_actor(user),
            extra_condition=announcements.c.version == version,
            **values,
        )
        if not moved:
            row = (
                await conn.execute(
                    select(announcements.c.version).where(announcements.c.id == announcement_id)
                )
            ).scalar_one()
            if row != version:
                raise StaleEdit()
            raise TransitionError(
                _("Von „{source}“ aus ist dieser Schritt nicht möglich.").format(
                    source=status_label(current)
                )
            )
        await audit(conn, user, f"announcement.{target}", {"id": announcement_id}, ip)


def _actor(user: User) -> str:
    return actor_label(user)


@dataclass(frozen=True, kw_only=True)
class _Facts:
    """What the permission rules look at, read in the step's own transaction."""

    status: AnnouncementStatus
    author_id: int | None
    submitted_by: int | None


async def _facts(conn: AsyncConnection, announcement_id: int) -> _Facts:
    row = (
        await conn.execute(
            select(
                announcements.c.status, announcements.c.author_id, announcements.c.submitted_by
            ).where(announcements.c.id == announcement_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFoundError(_("Ankündigung {id} gibt es nicht").format(id=announcement_id))
    return _Facts(
        status=AnnouncementStatus(row.status),
        author_id=row.author_id,
        submitted_by=row.submitted_by,
    )


async def current_status(conn: AsyncConnection, announcement_id: int) -> AnnouncementStatus:
    status = (
        await conn.execute(
            select(announcements.c.status).where(announcements.c.id == announcement_id)
        )
    ).scalar_one_or_none()
    if status is None:
        raise NotFoundError(_("Ankündigung {id} gibt es nicht").format(id=announcement_id))
    return AnnouncementStatus(status)


async def _set_topics(
    conn: AsyncConnection, announcement_id: int, announcement: Announcement
) -> None:
    topics = [{"announcement_id": announcement_id, "topic": t} for t in set(announcement.topics)]
    if topics:
        await conn.execute(insert(announcement_topics), topics)


def _content_values(announcement: Announcement) -> dict[str, Any]:
    return {
        "title": announcement.title,
        "language": str(announcement.language),
        "translation_group": announcement.translation_group,
        "content": announcement.model_dump(mode="json"),
        "expires_at": announcement.expires_at,
    }


def status_label(status: AnnouncementStatus) -> str:
    """The status as staff read it."""
    labels = {
        S.DRAFT: _("Entwurf"),
        S.IN_REVIEW: _("Zur Freigabe"),
        S.APPROVED: _("Freigegeben"),
        S.SCHEDULED: _("Geplant"),
        S.SENDING: _("Wird gesendet"),
        S.SENT: _("Gesendet"),
        S.PARTIALLY_FAILED: _("Teilweise fehlgeschlagen"),
        S.CANCELLED: _("Abgebrochen"),
        S.EXPIRED: _("Abgelaufen"),
    }
    return labels[status]
