"""Issue 15, item 3: what a report does, on SQLite and PostgreSQL — the soft-bounce window, a
report read twice, a delivery that is gone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.bounces.effects import Effects, SoftBounceRule
from bzi_broadcast.bounces.parse import Kind, Report
from bzi_broadcast.bounces.verp import DeliveryRef
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.schema import (
    announcements,
    bounces,
    consent_events,
    deliveries,
    subscribers,
)

from .test_store import add_subscribers, announcement

KEY = b"k" * 32
RULE = SoftBounceRule(limit=3, days=14)


def report(kind: Kind, status: str | None = None) -> Report:
    detail = "abuse" if kind is Kind.COMPLAINT else "452 4.2.2 Mailbox full"
    return Report(
        kind=kind, recipient="person0@example.org", status=status, detail=detail, references=()
    )


async def deliveries_to_person0(engine: AsyncEngine, count: int) -> tuple[int, list[int]]:
    """The subscriber's id and ``count`` sent email deliveries to them, one per announcement."""
    await add_subscribers(engine, 1)
    store = Announcements(engine)
    now = datetime.now(UTC)
    async with engine.connect() as conn:
        person = int(await conn.scalar(select(subscribers.c.id)) or 0)
    made = []
    for _ in range(count):
        announcement_id = await store.create(announcement(), actor="t")
        async with engine.begin() as conn:
            result = await conn.execute(
                insert(deliveries).values(
                    announcement_id=announcement_id,
                    channel="email",
                    recipient="person0@example.org",
                    subscriber_id=person,
                    status="sent",
                    attempts=1,
                    next_attempt_at=now,
                    sent_at=now,
                )
            )
            made.append(int(result.inserted_primary_key[0]))  # type: ignore[index]
    return person, made


async def state(engine: AsyncEngine) -> tuple[str, bool]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(subscribers.c.status, subscribers.c.suppressed_at))).one()
    return row.status, row.suppressed_at is not None


async def test_soft_bounces_older_than_the_window_do_not_count(engine: AsyncEngine) -> None:
    person, made = await deliveries_to_person0(engine, 5)
    effects = Effects(engine, key=KEY, soft=RULE)
    old = datetime.now(UTC) - timedelta(days=RULE.days + 1)
    async with engine.begin() as conn:  # two soft bounces of three weeks ago
        for delivery_id in made[:2]:
            announcement_id = await conn.scalar(
                select(deliveries.c.announcement_id).where(deliveries.c.id == delivery_id)
            )
            await conn.execute(
                insert(bounces).values(
                    delivery_id=delivery_id,
                    announcement_id=announcement_id,
                    subscriber_id=person,
                    kind="soft",
                    status="4.2.2",
                    at=old,
                )
            )
    for delivery_id in made[2:4]:
        applied = await effects.apply(
            report(Kind.SOFT, "4.2.2"), DeliveryRef(delivery_id=delivery_id, subscriber_id=person)
        )
        assert not applied.suppressed
    assert await state(engine) == ("active", False)  # 2 within the window, 4 in all
    applied = await effects.apply(
        report(Kind.SOFT, "4.2.2"), DeliveryRef(delivery_id=made[4], subscriber_id=person)
    )
    assert applied.suppressed
    assert await state(engine) == ("bounced", True)


async def test_a_complaint_read_twice_unsubscribes_and_logs_once(engine: AsyncEngine) -> None:
    person, made = await deliveries_to_person0(engine, 1)
    effects = Effects(engine, key=KEY, soft=RULE)
    ref = DeliveryRef(delivery_id=made[0], subscriber_id=person)
    first = await effects.apply(report(Kind.COMPLAINT), ref)
    second = await effects.apply(report(Kind.COMPLAINT), ref)
    assert first.unsubscribed and not first.duplicate
    assert second.duplicate and not second.unsubscribed
    async with engine.connect() as conn:
        events = (
            (
                await conn.execute(
                    select(consent_events.c.detail).where(consent_events.c.event == "unsubscribed")
                )
            )
            .scalars()
            .all()
        )
        rows = await conn.scalar(select(func.count()).select_from(bounces))
    assert [json.loads(e) for e in events] == [
        {"method": "complaint", "feedback_type": "abuse", "announcement_id": first.announcement_id}
    ]
    assert rows == 1
    assert await state(engine) == ("unsubscribed", False)


async def test_a_hard_bounce_of_a_deleted_announcement_still_suppresses(
    engine: AsyncEngine,
) -> None:
    person, made = await deliveries_to_person0(engine, 1)
    async with engine.begin() as conn:  # the announcement and its deliveries are gone
        await conn.execute(delete(deliveries))
        await conn.execute(delete(announcements))
    applied = await Effects(engine, key=KEY, soft=RULE).apply(
        report(Kind.HARD, "5.1.1"), DeliveryRef(delivery_id=made[0], subscriber_id=person)
    )
    assert applied.delivery_id is None and applied.suppressed
    assert await state(engine) == ("bounced", True)


async def test_a_token_whose_delivery_now_belongs_to_someone_else_names_no_delivery(
    engine: AsyncEngine,
) -> None:
    """SQLite may give a deleted row's id to a new one: the token's subscriber id must fit."""
    person, made = await deliveries_to_person0(engine, 1)
    applied = await Effects(engine, key=KEY, soft=RULE).apply(
        report(Kind.SOFT, "4.2.2"), DeliveryRef(delivery_id=made[0], subscriber_id=person + 1)
    )
    assert applied.delivery_id is None and applied.subscriber_id is None
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(bounces)) == 0
    assert await state(engine) == ("active", False)


def test_status_prints_the_reports_only_where_there_are_some(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bzi_broadcast.status import _print_status

    row = {"id": 3, "title": "T", "status": "sent", "publish_at": None, "channels": {}}
    _print_status({**row, "reports": {"hard": 0, "soft": 0, "complaint": 0}})
    _print_status({**row, "reports": {"hard": 2, "soft": 1, "complaint": 1}})
    assert capsys.readouterr().out.splitlines() == [
        "#3 T — sent",
        "#3 T — sent",
        "  Rückmeldungen: 2 unzustellbar, 1 vorübergehend unzustellbar, 1 Beschwerden",
    ]
