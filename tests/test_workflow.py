"""The staff workflow shared by the workspace and the API: four eyes, stale edits, scheduling in
Europe/Berlin, cancel, duplicate, and an audit row for every step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.content import Announcement
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.staff import workflow
from bzi_broadcast.staff.accounts import Role, User, add_user
from bzi_broadcast.store.announcements import TransitionError
from bzi_broadcast.store.schema import audit_log

PASSWORD = "korrekt-pferd-batterie"


async def _user(engine: AsyncEngine, name: str, role: Role) -> User:
    email = f"{name.lower()}@bzi.example.org"
    user_id = await add_user(engine, email=email, name=name, role=role, password=PASSWORD)
    return User(id=user_id, email=email, name=name, role=role, language="de")


@pytest.fixture
async def people(engine: AsyncEngine) -> dict[str, User]:
    return {
        "editor": await _user(engine, "Eva", Role.EDITOR),
        "publisher": await _user(engine, "Paul", Role.PUBLISHER),
        "other": await _user(engine, "Pia", Role.PUBLISHER),
    }


def _undated(example: Announcement) -> Announcement:
    return example.model_copy(update={"publish_at": None, "expires_at": None})


async def test_four_eyes_from_draft_to_scheduled(
    engine: AsyncEngine, people: dict[str, User], example: Announcement
) -> None:
    editor, publisher = people["editor"], people["publisher"]
    draft_id = await workflow.create(engine, _undated(example), editor)
    with pytest.raises(workflow.NotAllowed):
        await workflow.approve(engine, draft_id, editor, version=1)
    await workflow.submit(engine, draft_id, editor, version=1)
    assert (await workflow.load(engine, draft_id)).status == S.IN_REVIEW
    with pytest.raises(workflow.NotAllowed):
        await workflow.schedule(engine, draft_id, editor, datetime.now(UTC), version=1)
    await workflow.approve(engine, draft_id, publisher, version=1)
    at = datetime(2030, 5, 4, 10, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    await workflow.schedule(engine, draft_id, publisher, at, version=1)
    scheduled = await workflow.load(engine, draft_id)
    assert scheduled.status == S.SCHEDULED
    assert scheduled.approved_by == publisher.id
    assert scheduled.publish_at == datetime(2030, 5, 4, 8, 30, tzinfo=UTC)
    later = at + timedelta(days=1)
    await workflow.schedule(engine, draft_id, publisher, later, version=1)  # reschedule
    assert (await workflow.load(engine, draft_id)).publish_at == later


async def test_nobody_approves_their_own_announcement(
    engine: AsyncEngine, people: dict[str, User], example: Announcement
) -> None:
    publisher, other = people["publisher"], people["other"]
    draft_id = await workflow.create(engine, _undated(example), publisher)
    await workflow.submit(engine, draft_id, publisher, version=1)
    with pytest.raises(workflow.NotAllowed, match="Vier-Augen"):
        await workflow.approve(engine, draft_id, publisher, version=1)
    await workflow.approve(engine, draft_id, other, version=1)
    assert (await workflow.load(engine, draft_id)).status == S.APPROVED


async def test_an_edit_on_an_old_version_is_refused_and_an_edit_revokes_approval(
    engine: AsyncEngine, people: dict[str, User], example: Announcement
) -> None:
    editor, publisher = people["editor"], people["publisher"]
    draft_id = await workflow.create(engine, _undated(example), editor)
    first = _undated(example).model_copy(update={"title": "Erste Fassung"})
    assert await workflow.save(engine, draft_id, first, editor, version=1) == 2
    second = _undated(example).model_copy(update={"title": "Zweite Fassung"})
    with pytest.raises(workflow.StaleEdit):
        await workflow.save(engine, draft_id, second, publisher, version=1)
    assert (await workflow.load(engine, draft_id)).announcement.title == "Erste Fassung"

    await workflow.submit(engine, draft_id, editor, version=2)
    await workflow.approve(engine, draft_id, publisher, version=2)
    await workflow.save(engine, draft_id, second, editor, version=2)
    edited = await workflow.load(engine, draft_id)
    assert (edited.status, edited.approved_by, edited.version) == (S.DRAFT, None, 3)
    with pytest.raises(workflow.StaleEdit):
        await workflow.submit(engine, draft_id, editor, version=2)


async def test_schedule_refuses_unapproved_past_and_expired(
    engine: AsyncEngine, people: dict[str, User], example: Announcement
) -> None:
    editor, publisher = people["editor"], people["publisher"]
    draft_id = await workflow.create(engine, _undated(example), editor)
    soon = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(TransitionError):
        await workflow.schedule(engine, draft_id, publisher, soon, version=1)
    await workflow.submit(engine, draft_id, editor, version=1)
    await workflow.approve(engine, draft_id, publisher, version=1)
    with pytest.raises(BroadcastError, match="Vergangenheit"):
        await workflow.schedule(engine, draft_id, publisher, soon - timedelta(hours=2), version=1)
    with pytest.raises(BroadcastError, match="Zeitzone"):
        await workflow.schedule(engine, draft_id, publisher, soon.replace(tzinfo=None), version=1)
    assert (await workflow.load(engine, draft_id)).status == S.APPROVED


async def test_cancel_duplicate_and_the_audit_trail(
    engine: AsyncEngine, people: dict[str, User], example: Announcement
) -> None:
    editor, publisher = people["editor"], people["publisher"]
    draft_id = await workflow.create(engine, _undated(example), editor)
    await workflow.submit(engine, draft_id, editor, version=1)
    await workflow.approve(engine, draft_id, publisher, version=1)
    with pytest.raises(workflow.NotAllowed):
        await workflow.cancel(engine, draft_id, editor)
    await workflow.cancel(engine, draft_id, publisher)
    assert (await workflow.load(engine, draft_id)).status == S.CANCELLED
    with pytest.raises(TransitionError):
        await workflow.save(engine, draft_id, _undated(example), editor, version=1)

    copy_id = await workflow.duplicate(engine, draft_id, editor)
    copy = await workflow.load(engine, copy_id)
    assert (copy.status, copy.version, copy.author_id) == (S.DRAFT, 1, editor.id)
    assert copy.announcement.blocks == example.blocks

    async with engine.connect() as conn:
        actions = (await conn.execute(select(audit_log.c.action, audit_log.c.user_id))).all()
    assert ("announcement.approved", publisher.id) in actions
    assert ("announcement.cancelled", publisher.id) in actions
    assert ("announcement.duplicated", editor.id) in actions
    assert [a for a, _ in actions].count("announcement.created") == 2
