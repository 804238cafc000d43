"""Storage on SQLite and PostgreSQL: migrations give the declared schema; lifecycle; release."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.content import Announcement, parse_announcement
from bzi_broadcast.delivery import control
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.delivery.release import release
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.staff import workflow
from bzi_broadcast.staff.permissions import Operator
from bzi_broadcast.store.announcements import Announcements, TransitionError
from bzi_broadcast.store.engine import StoreError, create_engine, is_current, migrate
from bzi_broadcast.store.schema import deliveries, metadata, subscriber_topics, subscribers


def announcement(**fields: object) -> Announcement:
    data = {"title": "T", "blocks": [{"type": "text", "text": "x"}], **fields}
    return parse_announcement(json.dumps(data), fmt="json")


async def add_subscribers(
    engine: AsyncEngine,
    count: int,
    topics: dict[int, list[str]] | None = None,
    status: str = "active",
) -> None:
    now = datetime.now(UTC)
    rows = [
        {
            "email": f"person{i}@example.org",
            "language": "de",
            "status": status,
            "source": "test",
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(subscribers), rows)
        ids = dict((await conn.execute(select(subscribers.c.email, subscribers.c.id))).all())
        for index, names in (topics or {}).items():
            await conn.execute(
                insert(subscriber_topics),
                [{"subscriber_id": ids[f"person{index}@example.org"], "topic": t} for t in names],
            )


async def count_rows(engine: AsyncEngine, announcement_id: int) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count()).where(deliveries.c.announcement_id == announcement_id)
                )
            ).scalar_one()
        )


async def test_migrations_produce_the_declared_schema(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert diff == []
    assert await is_current(engine)


async def test_migrate_twice_is_harmless(engine: AsyncEngine) -> None:
    await migrate(engine)
    assert await is_current(engine)


async def test_unreachable_database_is_a_clear_error() -> None:
    engine = create_engine("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="Datenbank nicht erreichbar"):
        await migrate(engine)
    await engine.dispose()


def test_unsupported_database_url() -> None:
    with pytest.raises(StoreError, match="nicht unterstützte Datenbank"):
        create_engine("mysql://x@localhost/db")


async def test_lifecycle_records_every_transition(engine: AsyncEngine) -> None:
    store = Announcements(engine)
    new_id = await store.create(announcement(), actor="anna")
    assert await store.transition(new_id, S.SCHEDULED, actor="anna")
    assert not await store.transition(new_id, S.SENT, actor="bert")  # not allowed from scheduled
    assert await store.transition(new_id, S.CANCELLED, actor="bert", detail="Termin fällt aus")
    events = await store.events(new_id)
    assert [(e.from_status, e.to_status, e.actor) for e in events] == [
        (None, S.DRAFT, "anna"),
        (S.DRAFT, S.SCHEDULED, "anna"),
        (S.SCHEDULED, S.CANCELLED, "bert"),
    ]
    assert events[-1].detail == "Termin fällt aus"
    assert all(e.at.tzinfo is not None for e in events)


async def test_release_writes_one_row_per_subscriber_and_only_once(engine: AsyncEngine) -> None:
    await add_subscribers(engine, 50)
    await add_subscribers_inactive(engine)
    store = Announcements(engine)
    past = datetime.now(UTC) - timedelta(minutes=1)
    new_id = await control.queue(store, announcement(), at=past, actor="t", allow_past=True)
    first = await release(engine, new_id)
    second = await release(engine, new_id)
    assert first == {"email": 50}
    assert second is None
    assert await count_rows(engine, new_id) == 50
    assert (await store.get(new_id)).status == S.SENDING


async def add_subscribers_inactive(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(subscribers),
            [
                {
                    "email": "gone@example.org",
                    "language": "de",
                    "status": "unsubscribed",
                    "source": "test",
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )


async def test_concurrent_releases_release_once(engine: AsyncEngine) -> None:
    await add_subscribers(engine, 200)
    store = Announcements(engine)
    new_id = await store.create(
        announcement(),
        actor="t",
        status=S.SCHEDULED,
        publish_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    results = await asyncio.gather(
        *(release(engine, new_id) for _ in range(5)), return_exceptions=True
    )
    released = [r for r in results if isinstance(r, dict)]
    assert len(released) == 1, results
    assert await count_rows(engine, new_id) == 200


async def test_release_waits_for_publish_time(engine: AsyncEngine) -> None:
    store = Announcements(engine)
    future = datetime.now(UTC) + timedelta(hours=1)
    new_id = await store.create(announcement(), actor="t", status=S.SCHEDULED, publish_at=future)
    assert await release(engine, new_id) is None
    assert await release(engine, new_id, now=future + timedelta(seconds=1)) == {"email": 0}


async def test_release_respects_topics(engine: AsyncEngine) -> None:
    await add_subscribers(engine, 4, topics={0: ["kommunen"], 1: ["sport"], 2: ["kommunen", "x"]})
    store = Announcements(engine)
    new_id = await store.create(
        announcement(topics=["kommunen"]),
        actor="t",
        status=S.SCHEDULED,
        publish_at=datetime.now(UTC),
    )
    # person0 and person2 chose the topic; person3 chose none (gets everything); person1 not.
    assert await release(engine, new_id) == {"email": 3}
    async with engine.connect() as conn:
        recipients = set((await conn.execute(select(deliveries.c.recipient))).scalars())
    assert "person1@example.org" not in recipients


async def test_each_person_gets_the_version_in_their_language_else_the_german_one(
    engine: AsyncEngine,
) -> None:
    await add_subscribers(engine, 3)
    async with engine.begin() as conn:  # person1 reads English, person2 French
        for index, language in ((1, "en"), (2, "fr")):
            await conn.execute(
                update(subscribers)
                .where(subscribers.c.email == f"person{index}@example.org")
                .values(language=language)
            )
    store = Announcements(engine)
    now = datetime.now(UTC)
    group = "weltoffene-kommunen"
    german = await store.create(
        announcement(translation_group=group), actor="t", status=S.SCHEDULED, publish_at=now
    )
    english = await store.create(
        announcement(translation_group=group, language="en"),
        actor="t",
        status=S.SCHEDULED,
        publish_at=now,
    )
    alone = await store.create(announcement(), actor="t", status=S.SCHEDULED, publish_at=now)
    # The German version goes to German readers and to everyone without a version of their own.
    assert await release(engine, german) == {"email": 2}
    assert await release(engine, english) == {"email": 1}
    assert await release(engine, alone) == {"email": 3}
    async with engine.connect() as conn:
        rows = set(
            (await conn.execute(select(deliveries.c.announcement_id, deliveries.c.recipient))).all()
        )
    assert (german, "person0@example.org") in rows
    assert (german, "person2@example.org") in rows
    assert (english, "person1@example.org") in rows
    assert (german, "person1@example.org") not in rows


async def test_nothing_is_released_after_expiry(engine: AsyncEngine) -> None:
    await add_subscribers(engine, 3)
    store = Announcements(engine)
    now = datetime.now(UTC)
    a = announcement(expires_at=(now + timedelta(minutes=5)).isoformat())
    new_id = await store.create(a, actor="t", status=S.SCHEDULED, publish_at=now)
    later = now + timedelta(minutes=10)
    assert await release(engine, new_id, now=later) is None
    assert await control.expire_due(engine, later) == [new_id]
    assert (await store.get(new_id)).status == S.EXPIRED


async def test_queue_refuses_a_time_in_the_past(engine: AsyncEngine) -> None:
    store = Announcements(engine)
    with pytest.raises(BroadcastError, match="Vergangenheit"):
        await control.queue(store, announcement(), at=datetime(2020, 1, 1, tzinfo=UTC), actor="t")


async def test_cancel_stops_undelivered_rows(engine: AsyncEngine) -> None:
    await add_subscribers(engine, 10)
    store = Announcements(engine)
    new_id = await store.create(
        announcement(), actor="t", status=S.SCHEDULED, publish_at=datetime.now(UTC)
    )
    await release(engine, new_id)
    operator = Operator(name="t")
    cancelled = await workflow.cancel(engine, new_id, operator, settle=5)
    assert (cancelled.stopped, cancelled.sent, cancelled.in_flight) == (10, 0, 0)
    assert (await store.get(new_id)).status == S.CANCELLED
    with pytest.raises(TransitionError):
        await workflow.cancel(engine, new_id, operator, settle=5)


async def test_fan_out_in_chunks_writes_every_row_once(engine: AsyncEngine) -> None:
    from bzi_broadcast.delivery.outbox import Outbox
    from bzi_broadcast.delivery.release import continue_fan_out, fan_out_completely

    await add_subscribers(engine, 50)
    store = Announcements(engine)
    new_id = await store.create(
        announcement(), actor="t", status=S.SCHEDULED, publish_at=datetime.now(UTC)
    )
    assert await release(engine, new_id, chunk=7) == {"email": 7}
    assert await count_rows(engine, new_id) == 7
    outbox = Outbox(engine, worker_id="w", lease=timedelta(minutes=1))
    assert await outbox.finish_announcements() == []  # not finished while fanning out
    # Replicas on PostgreSQL may continue the same fan-out at once (the row lock makes them take
    # turns); SQLite has one process per file, which continues each fan-out once.
    parallel = 4 if engine.dialect.name == "postgresql" else 1
    results = await asyncio.gather(
        *(fan_out_completely(engine, new_id, chunk=7) for _ in range(parallel))
    )
    assert sum(results) == 43
    assert await count_rows(engine, new_id) == 50
    assert await continue_fan_out(engine, new_id, chunk=7) is None
