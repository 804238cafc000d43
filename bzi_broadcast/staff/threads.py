"""Incomplete Mastodon threads: a thread that stopped for good after some parts were posted.

A publisher either sends the rest (its delivery is queued again and the channel continues after
the last posted part) or deletes the posted parts, newest first, each deletion recorded. Both are
steps of the staff workflow: checked against the permission table and written to the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus, DeliveryStatus
from bzi_broadcast.errors import DeliveryError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff.accounts import User
from bzi_broadcast.staff.permissions import Action, actor_label, check
from bzi_broadcast.staff.workflow import audit, current_status
from bzi_broadcast.store.announcements import TransitionError, transition, utcnow
from bzi_broadcast.store.parts import Parts, Thread
from bzi_broadcast.store.schema import deliveries

S = AnnouncementStatus


class StatusRemover(Protocol):
    """The channel's part in deleting a thread: one status, gone (already gone is fine)."""

    async def delete_status(self, remote_id: str) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Removal:
    """What deleting an incomplete thread did: the parts deleted and those that were not."""

    deleted: tuple[int, ...]  # part numbers as staff count them (from 1)
    failed: tuple[tuple[int, str], ...]  # part number, reason


async def publish_rest(
    engine: AsyncEngine,
    announcement_id: int,
    delivery_id: int,
    user: User,
    *,
    ip: str | None = None,
) -> None:
    """Queue an incomplete thread's delivery again; the channel continues after its last part."""
    check(user, Action.MANAGE_SENDING)
    thread = await _incomplete_thread(engine, announcement_id, delivery_id)
    async with engine.begin() as conn:
        status = await current_status(conn, announcement_id)
        if status == S.PARTIALLY_FAILED:
            await transition(
                conn, announcement_id, S.SENDING, actor=actor_label(user), detail="thread resumed"
            )
        requeued = await conn.execute(
            update(deliveries)
            .where(
                deliveries.c.id == delivery_id,
                deliveries.c.status == str(DeliveryStatus.FAILED),
            )
            .values(
                status=str(DeliveryStatus.QUEUED),
                next_attempt_at=utcnow(),
                attempts=0,
                last_error=None,
            )
        )
        if status not in (S.PARTIALLY_FAILED, S.SENDING) or requeued.rowcount != 1:
            raise TransitionError(_("Dieser Thread kann nicht fortgesetzt werden."))
        detail = {"id": announcement_id, "delivery": delivery_id, "posted": len(thread.posted)}
        await audit(conn, user, "mastodon.thread_resumed", detail, ip)


async def delete_published(
    engine: AsyncEngine,
    announcement_id: int,
    delivery_id: int,
    user: User,
    remover: StatusRemover,
    *,
    ip: str | None = None,
) -> Removal:
    """Delete the posted parts of an incomplete thread, newest first; each deletion recorded."""
    check(user, Action.MANAGE_SENDING)
    thread = await _incomplete_thread(engine, announcement_id, delivery_id)
    parts = Parts(engine)
    deleted: list[dict[str, Any]] = []
    failed: list[tuple[int, str]] = []
    for part in reversed(thread.posted):
        try:
            await remover.delete_status(str(part.remote_id))
        except DeliveryError as exc:  # the others are still deleted; this one can be tried again
            failed.append((part.part + 1, exc.message))
            continue
        await parts.deleted(delivery_id, part.part, utcnow())
        deleted.append({"part": part.part + 1, "remote_id": part.remote_id, "url": part.url})
    async with engine.begin() as conn:
        detail = {"id": announcement_id, "delivery": delivery_id, "deleted": deleted}
        await audit(conn, user, "mastodon.thread_deleted", detail | {"failed": failed}, ip)
    return Removal(deleted=tuple(d["part"] for d in deleted), failed=tuple(failed))


async def _incomplete_thread(engine: AsyncEngine, announcement_id: int, delivery_id: int) -> Thread:
    for thread in await Parts(engine).threads(announcement_id):
        if thread.delivery_id == delivery_id and thread.incomplete:
            return thread
    raise TransitionError(_("Dieser Mastodon-Thread ist nicht (mehr) unvollständig."))
