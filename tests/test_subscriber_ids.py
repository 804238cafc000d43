"""Issue 13, item 6: subscriber ids are never reused, and links bind to a random per-person key,
so the links of an erased person answer 410 (Gone) even when someone new gets the same id."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
from alembic import command
from sqlalchemy import Connection, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.service import signer
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.engine import alembic_config, create_engine, migrate
from bzi_broadcast.store.schema import consent_events, subscriber_topics, subscribers
from bzi_broadcast.subscribers import gdpr
from bzi_broadcast.subscribers.store import ImportLine, ImportReport, import_lines

from .conftest import PG_ADMIN_URL
from .test_delivery import example_announcement
from .test_public_pages import CSRF, Site, mails_to, path_of, sign_up, site, status_of

__all__ = ["site"]  # the fixture

KEY = b"k" * 32


def line(email: str) -> ImportLine:
    return ImportLine(
        line=2, email=email, name=None, language="de", topics=(), consent_source="Test"
    )


async def id_of(engine: AsyncEngine, email: str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(select(subscribers.c.id).where(subscribers.c.email == email))
        return int(found.scalar_one())


async def test_erasing_the_highest_id_does_not_hand_it_to_the_next_import(
    engine: AsyncEngine,
) -> None:
    await import_lines(
        engine, [line("anna@example.org"), line("bert@example.org")], ImportReport(), KEY
    )
    erased = await id_of(engine, "bert@example.org")
    assert await gdpr.erase(engine, "bert@example.org", KEY)
    await import_lines(engine, [line("cem@example.org")], ImportReport(), KEY)
    assert await id_of(engine, "cem@example.org") > erased


async def newsletter_unsubscribe_path(site: Site, engine: AsyncEngine, address: str) -> str:
    await Announcements(engine).create(
        example_announcement(), actor="t", status=S.SCHEDULED, publish_at=datetime.now(UTC)
    )
    await mails_to(site.smtp, address, count=2)
    newsletter = next(
        r.message()
        for r in site.smtp.received
        if r.recipient == address and r.message()["List-Unsubscribe"]
    )
    found = re.search(r"<https?://[^/>]+(/abmelden/[^>]+)>", newsletter["List-Unsubscribe"])
    assert found, newsletter["List-Unsubscribe"]
    return found.group(1)


async def events_of(engine: AsyncEngine, subscriber_id: int) -> list[str]:
    async with engine.connect() as conn:
        found = await conn.execute(
            select(consent_events.c.event)
            .where(consent_events.c.subscriber_id == subscriber_id)
            .order_by(consent_events.c.id)
        )
        return list(found.scalars())


async def test_links_of_an_erased_person_answer_gone_and_leave_the_next_person_alone(
    engine: AsyncEngine,
    site: Site,  # the wipe first, then the service
) -> None:
    async with site.client() as http:
        await sign_up(http, email="anna@example.org")
        confirm = path_of((await mails_to(site.smtp, "anna@example.org"))[0], "bestaetigen")
        async with http.post(confirm) as answer:
            found = re.search(r'href="https?://[^/"]+(/einstellungen/[^"]+)"', await answer.text())
        assert found
        preferences = found.group(1)
    unsubscribe = await newsletter_unsubscribe_path(site, engine, "anna@example.org")
    key = site.settings.security.secret_key.get_secret_value().encode()
    assert await gdpr.erase(engine, "anna@example.org", key)
    await import_lines(engine, [line("bert@example.org")], ImportReport(), key)
    bert = await id_of(engine, "bert@example.org")
    before = await events_of(engine, bert)
    async with site.client() as http:
        async with http.post(confirm) as answer:
            assert answer.status == 410, await answer.text()
            assert "Anmeldung bestätigt" not in await answer.text()
        async with http.get(preferences) as answer:
            assert answer.status == 410
            assert "bert@example.org" not in await answer.text()
        async with http.post(unsubscribe, data="List-Unsubscribe=One-Click") as answer:
            assert answer.status == 410
        async with http.get(unsubscribe) as answer:
            assert answer.status == 410
            assert "nicht mehr" in await answer.text()
    assert await status_of(engine, "bert@example.org") == "pending"
    assert await events_of(engine, bert) == before


async def test_links_from_before_the_keys_work_only_for_who_existed_when_they_were_made(
    engine: AsyncEngine,
    site: Site,  # the wipe first, then the service
) -> None:
    """Decision: a link without a key (issued before migration 0012) keeps working until it
    expires, but only for a person created before the link was issued."""
    key = site.settings.security.secret_key.get_secret_value().encode()
    await import_lines(engine, [line("cem@example.org")], ImportReport(), key)
    cem = await id_of(engine, "cem@example.org")
    sign = signer(site.settings)
    old = sign.sign(purpose="preferences", subject=str(cem), ttl=timedelta(days=400))
    made_before = sign.sign(
        purpose="preferences",
        subject=str(cem),
        ttl=timedelta(days=400),
        now=datetime.now(UTC) - timedelta(days=3),
    )
    async with site.client() as http:
        async with http.get(f"/einstellungen/{old}") as answer:
            assert answer.status == 200
            assert CSRF.search(await answer.text())
        async with http.get(f"/einstellungen/{made_before}") as answer:
            assert answer.status == 410


# --- the migration ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def empty_database(database_url: str, tmp_path_name: str) -> AsyncIterator[AsyncEngine]:
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url.replace("test.sqlite3", f"{tmp_path_name}.sqlite3"))
        yield engine
        await engine.dispose()
        return
    name = f"bzi_mig_{os.getpid()}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
        engine = create_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
        try:
            yield engine
        finally:
            await engine.dispose()
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _upgrade_to(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def test_migration_0012_keeps_every_subscriber_and_gives_each_a_key(
    database_url: str,
) -> None:
    async with empty_database(database_url, "migration") as engine:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0011")
            now = datetime.now(UTC).replace(tzinfo=None)
            for number in (1, 2, 3):
                await conn.execute(
                    text(
                        "INSERT INTO subscribers (id, email, language, status, source, "
                        "created_at, updated_at) VALUES (:id, :email, 'de', 'active', 'form', "
                        ":now, :now)"
                    ),
                    {"id": number, "email": f"p{number}@example.org", "now": now},
                )
            await conn.execute(insert(subscriber_topics).values(subscriber_id=2, topic="projekte"))
            await conn.execute(
                text(
                    "INSERT INTO consent_events (subscriber_id, at, event) "
                    "VALUES (2, :now, 'confirmed')"
                ),
                {"now": now},
            )
            await conn.execute(text("DELETE FROM subscribers WHERE id = 3"))
        await migrate(engine)
        async with engine.begin() as conn:
            rows = (await conn.execute(select(subscribers).order_by(subscribers.c.id))).all()
            assert [(r.id, r.email, r.status) for r in rows] == [
                (1, "p1@example.org", "active"),
                (2, "p2@example.org", "active"),
            ]
            keys = {r.link_key for r in rows}
            assert len(keys) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", k) for k in keys)
            topics = (await conn.execute(select(subscriber_topics.c.subscriber_id))).scalars()
            assert list(topics) == [2]
            events = (await conn.execute(select(consent_events.c.subscriber_id))).scalars()
            assert list(events) == [2]
            if engine.dialect.name == "sqlite":
                sql = (
                    await conn.execute(
                        text("SELECT sql FROM sqlite_master WHERE name = 'subscribers'")
                    )
                ).scalar_one()
                assert "AUTOINCREMENT" in sql
            await conn.execute(text("DELETE FROM subscribers WHERE id = 2"))
            added = await conn.execute(
                insert(subscribers).values(
                    email="new@example.org",
                    language="de",
                    status="pending",
                    source="form",
                    created_at=datetime.now(UTC),
                    updated_at=datetime.now(UTC),
                )
            )
            assert added.inserted_primary_key is not None
            assert added.inserted_primary_key[0] > 2
