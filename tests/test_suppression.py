"""Issue 13, item 8: the suppression list holds at release and on every way back in; a bounced
address comes back only through a fresh double opt-in."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.delivery import control
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.delivery.release import release
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.schema import consent_events, deliveries, subscribers, suppressions
from bzi_broadcast.subscribers import gdpr
from bzi_broadcast.subscribers.store import (
    ImportLine,
    ImportOptions,
    ImportReport,
    import_lines,
    suppress,
)

from .test_delivery import example_announcement, wait_until
from .test_public_pages import CSRF, Site, mails_to, path_of, sign_up, site, status_of

__all__ = ["site"]  # the fixture
from .test_store import add_subscribers, announcement

KEY = b"k" * 32


def newsletters_to(site: Site, address: str) -> list[object]:
    return [
        r for r in site.smtp.received if r.recipient == address and r.message()["List-Unsubscribe"]
    ]


async def confirmed_with_preferences(site: Site, address: str) -> str:
    async with site.client() as http:
        await sign_up(http, email=address)
        link = path_of((await mails_to(site.smtp, address))[0], "bestaetigen")
        async with http.post(link) as answer:
            found = re.search(r'href="https?://[^/"]+(/einstellungen/[^"]+)"', await answer.text())
    assert found
    return found.group(1)


async def test_a_bounced_address_resubscribed_by_an_old_link_gets_a_confirmation_not_mail(
    engine: AsyncEngine,
    site: Site,  # the wipe first, then the service
) -> None:
    key = site.settings.security.secret_key.get_secret_value().encode()
    preferences = await confirmed_with_preferences(site, "dora@example.org")
    await confirmed_with_preferences(site, "eva@example.org")
    await suppress(engine, "dora@example.org", reason="hard_bounce", detail="550", key=key)
    async with site.client() as http:
        async with http.get(preferences) as answer:
            token = CSRF.search(await answer.text())
        assert token
        form = {"csrf": token.group(1), "language": "de", "resubscribe": "ja"}
        async with http.post(preferences, data=form) as answer:
            assert answer.status == 200
            assert "Bestätigungslink" in await answer.text()
    assert await status_of(engine, "dora@example.org") == "pending"
    assert await gdpr.purge_unconfirmed(engine, days=0) == 0  # confirmed once: the row stays
    await Announcements(engine).create(
        example_announcement(), actor="t", status=S.SCHEDULED, publish_at=datetime.now(UTC)
    )
    await wait_until(lambda: _async(newsletters_to(site, "eva@example.org")), timeout=20)
    assert newsletters_to(site, "dora@example.org") == []
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(deliveries.c.id).where(deliveries.c.recipient == "dora@example.org")
        )
        assert rows.first() is None
    mails = await mails_to(site.smtp, "dora@example.org", count=2)  # sign-up, then this one
    confirm = path_of(mails[-1], "bestaetigen")
    async with site.client() as http, http.post(confirm) as answer:
        assert "Anmeldung bestätigt" in await answer.text()
    assert await status_of(engine, "dora@example.org") == "active"
    async with engine.connect() as conn:
        assert (await conn.execute(select(suppressions))).first() is None
        events = await conn.execute(
            select(consent_events.c.event)
            .join(subscribers, subscribers.c.id == consent_events.c.subscriber_id)
            .where(subscribers.c.email == "dora@example.org")
            .order_by(consent_events.c.id)
        )
        assert list(events.scalars())[-1] == "confirmed"
    assert key


async def _async(value: list[object]) -> list[object]:
    return value


async def test_a_bounced_address_signing_up_again_must_confirm_first(
    engine: AsyncEngine,
    site: Site,  # the wipe first, then the service
) -> None:
    key = site.settings.security.secret_key.get_secret_value().encode()
    await confirmed_with_preferences(site, "fynn@example.org")
    await suppress(engine, "fynn@example.org", reason="hard_bounce", detail="550", key=key)
    async with site.client() as http:
        await sign_up(http, email="fynn@example.org")
    await mails_to(site.smtp, "fynn@example.org", count=2)
    assert await status_of(engine, "fynn@example.org") == "pending"


async def test_release_skips_suppressed_addresses_even_when_their_status_says_active(
    engine: AsyncEngine,
) -> None:
    await add_subscribers(engine, 3)
    await suppress(engine, "person1@example.org", reason="hard_bounce", detail=None, key=KEY)
    async with engine.begin() as conn:  # what the old preferences page did
        await conn.execute(update(subscribers).values(status="active"))
    store = Announcements(engine)
    past = datetime.now(UTC) - timedelta(minutes=1)
    new_id = await control.queue(store, announcement(), at=past, actor="t", allow_past=True)
    assert await release(engine, new_id) == {"email": 2}
    async with engine.connect() as conn:
        recipients = set((await conn.execute(select(deliveries.c.recipient))).scalars())
    assert recipients == {"person0@example.org", "person2@example.org"}


async def test_an_address_let_back_in_before_the_mark_existed_is_marked_at_start(
    engine: AsyncEngine,
) -> None:
    """Before the mark, the old preferences page set a suppressed address back to active with
    only its hash on the list; the service marks such rows when it starts (gdpr.mark_suppressed),
    so release skips them."""
    await add_subscribers(engine, 3)
    await suppress(engine, "person1@example.org", reason="hard_bounce", detail=None, key=KEY)
    async with engine.begin() as conn:  # the state the old code left: active, unmarked
        await conn.execute(update(subscribers).values(status="active", suppressed_at=None))
    assert await gdpr.mark_suppressed(engine, KEY) == 1
    assert await gdpr.mark_suppressed(engine, KEY) == 0  # marked once
    store = Announcements(engine)
    past = datetime.now(UTC) - timedelta(minutes=1)
    new_id = await control.queue(store, announcement(), at=past, actor="t", allow_past=True)
    assert await release(engine, new_id) == {"email": 2}


async def test_import_of_a_suppressed_address_does_not_bring_it_back(engine: AsyncEngine) -> None:
    await add_subscribers(engine, 1)
    await suppress(engine, "person0@example.org", reason="complaint", detail=None, key=KEY)
    line = ImportLine(
        line=2,
        email="person0@example.org",
        name=None,
        language="de",
        topics=(),
        consent_source="Liste",
    )
    report = ImportReport()
    await import_lines(engine, [line], report, KEY, ImportOptions(consent_proven="Ordner 7"))
    assert report.imported == 0 and report.problems
    assert await status_of(engine, "person0@example.org") == "bounced"
