"""Subscribers and the audit log in the staff workspace, against a running service: search and
filters, counts and growth, export, the consent proof, erasure with its audit row, roles, CSRF,
and hostile names shown escaped."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from babel.dates import format_date
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.content.model import LOCAL_TZ
from bzi_broadcast.service import Service
from bzi_broadcast.staff.accounts import Role, add_user, create_api_token, user_by_email
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.schema import (
    audit_log,
    consent_events,
    deliveries,
    subscriber_topics,
    subscribers,
    suppressions,
)
from bzi_broadcast.subscribers.consent import ConsentEvent, record
from bzi_broadcast.testing.smtp import SmtpCapture

from .test_admin import CSRF, PASSWORD, client, login
from .test_dashboard import ESCAPED, XSS
from .test_delivery import example_announcement, serving, settings_for

NOW = datetime.now(UTC)
HOSTILE_STAFF = '<img src=x onerror="alert(1)">'


def _person(email: str | None, **values: Any) -> dict[str, Any]:
    return {
        "email": email,
        "name": None,
        "telegram_chat_id": None,
        "language": "de",
        "status": "active",
        "source": "test",
        "created_at": NOW - timedelta(days=400),
        "updated_at": NOW,
        "confirmed_at": None,
        **values,
    }


PEOPLE = [
    _person(
        "anna.schmidt@example.org",
        name="Anna Schmidt",
        telegram_chat_id=4242,
        confirmed_at=NOW - timedelta(weeks=3),
    ),
    _person("evil@example.org", name=XSS, status="pending", created_at=NOW),  # not purged yet
    _person(None, name="Nur Telegram", telegram_chat_id=777, confirmed_at=NOW),
    _person("weg@example.org", status="unsubscribed", confirmed_at=NOW - timedelta(weeks=40)),
    _person("kaputt@example.org", status="bounced", confirmed_at=NOW - timedelta(weeks=40)),
    _person("=HYPERLINK(1)@example.org", name="=cmd|' /C calc'!A0", confirmed_at=NOW),
    *(
        _person(
            f"person{i}@example.org",
            name=f"Person {i}",
            confirmed_at=NOW - timedelta(weeks=i % 5, hours=i),
        )
        for i in range(55)
    ),
]


@pytest.fixture
async def base(database_url: str, engine: AsyncEngine) -> AsyncIterator[str]:
    for name, role in (("Eva", Role.EDITOR), ("Paul", Role.PUBLISHER), ("Ada", Role.ADMIN)):
        await add_user(
            engine,
            email=f"{name.lower()}@bzi.example.org",
            name=name,
            role=role,
            password=PASSWORD,
        )
    await add_user(
        engine,
        email="hostile@bzi.example.org",
        name=HOSTILE_STAFF,
        role=Role.EDITOR,
        password=PASSWORD,
    )
    async with engine.begin() as conn:
        await conn.execute(insert(subscribers), PEOPLE)
        ids = dict((await conn.execute(select(subscribers.c.email, subscribers.c.id))).all())
        chosen = [("anna.schmidt@example.org", "veranstaltungen")] + [
            (f"person{i}@example.org", "projekte") for i in range(10)
        ]
        await conn.execute(
            insert(subscriber_topics),
            [{"subscriber_id": ids[email], "topic": topic} for email, topic in chosen],
        )
        await record(
            conn,
            ids["anna.schmidt@example.org"],
            ConsentEvent.SIGNED_UP,
            channel="email",
            source="form",
            ip="203.0.113.0",
            consent_version="2026-11",
        )
        await record(
            conn, ids["anna.schmidt@example.org"], ConsentEvent.CONFIRMED, ip="203.0.113.0"
        )
    async with (
        SmtpCapture() as smtp,
        serving(Service(settings_for(database_url, smtp.port))) as url,
    ):
        yield url


async def _as(base: str, name: str) -> aiohttp.ClientSession:
    http = client(base)
    status, _page = await login(http, f"{name.lower()}@bzi.example.org", PASSWORD)
    assert status == 303
    return http


async def _get(http: aiohttp.ClientSession, path: str, status: int = 200) -> str:
    async with http.get(path, allow_redirects=False) as answer:
        assert answer.status == status, await answer.text()
        return await answer.text()


async def _id(engine: AsyncEngine, email: str | None, name: str | None = None) -> int:
    which = subscribers.c.email == email if email else subscribers.c.name == name
    async with engine.connect() as conn:
        return int((await conn.execute(select(subscribers.c.id).where(which))).scalar_one())


def _count(page: str, label: str) -> int:
    found = re.search(rf'<th scope="row">{re.escape(label)}</th><td>(\d+)</td>', page)
    assert found, label
    return int(found.group(1))


def _monday(moment: datetime) -> date:
    local = moment.astimezone(LOCAL_TZ).date()
    return local - timedelta(days=local.weekday())


async def test_search_filters_and_pages(base: str) -> None:
    async with await _as(base, "Paul") as http:
        page = await _get(http, "/admin/abonnenten?q=SCHMIDT")
        assert "anna.schmidt@example.org" in page
        assert "1 Person gefunden." in page
        page = await _get(http, "/admin/abonnenten?q=person")
        assert "55 Personen gefunden." in page
        assert "Seite 1 von 2" in page
        assert len(re.findall(r'href="/admin/abonnenten/\d+"', page)) == 50
        second = await _get(http, "/admin/abonnenten?q=person&seite=2")
        assert len(re.findall(r'href="/admin/abonnenten/\d+"', second)) == 5
        only = await _get(http, "/admin/abonnenten?status=unsubscribed")
        assert "weg@example.org" in only
        assert "1 Person gefunden." in only
        topic = await _get(http, "/admin/abonnenten?thema=projekte&q=person1")
        assert "person1@example.org" in topic  # person1 chose „projekte“; person10… did not
        assert "1 Person gefunden." in topic
        telegram = await _get(http, "/admin/abonnenten?kanal=telegram")
        assert "2 Personen gefunden." in telegram
        assert "(keine Adresse)" in telegram  # the bot-only person
        nothing = await _get(http, "/admin/abonnenten?q=%25")  # LIKE wildcards are literal
        assert "0 Personen gefunden." in nothing


async def test_counts_and_growth(base: str) -> None:
    async with await _as(base, "Eva") as http:  # figures are for every staff member
        page = await _get(http, "/admin/abonnenten")
    assert _count(page, "aktiv") == 58
    assert _count(page, "unbestätigt") == 1
    assert _count(page, "abgemeldet") == 1
    assert _count(page, "unzustellbar") == 1
    assert _count(page, "E-Mail") == 57  # active with an address
    assert _count(page, "Telegram") == 2
    assert _count(page, "Projekte") == 10
    assert _count(page, "Veranstaltungen") == 1
    assert _count(page, "ohne Auswahl (alle Themen)") == 58 - 11
    assert '<title id="neu-title">' in page and '<title id="gesamt-title">' in page
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td><td>(\d+)</td></tr>", page)
    assert len(rows) == 26
    confirmed = [p["confirmed_at"] for p in PEOPLE if p["confirmed_at"] is not None]
    this_week = _monday(NOW)
    for label, new, total in rows[-6:]:
        (week,) = [
            this_week - timedelta(weeks=k)
            for k in range(26)
            if format_date(this_week - timedelta(weeks=k), "medium", locale="de") == label
        ]
        assert int(new) == sum(1 for c in confirmed if _monday(c) == week)
        assert int(total) == sum(1 for c in confirmed if _monday(c) <= week)
    assert int(rows[-1][2]) == len(confirmed)
    assert "anna.schmidt@example.org" not in page  # editors get no addresses
    assert "Die Liste der Personen sehen nur" in page


async def test_roles_guard_personal_data(base: str, engine: AsyncEngine) -> None:
    anna = await _id(engine, "anna.schmidt@example.org")
    async with await _as(base, "Eva") as http:
        await _get(http, f"/admin/abonnenten/{anna}", 403)
        await _get(http, "/admin/abonnenten/export", 403)
        await _get(http, "/admin/protokoll", 403)
    async with await _as(base, "Paul") as http:
        await _get(http, f"/admin/abonnenten/{anna}")
        await _get(http, f"/admin/abonnenten/{anna}/loeschen", 403)
        token = CSRF.search(await _get(http, "/admin/abonnenten"))
        assert token
        form = {"csrf": token.group(1), "confirm": "yes"}
        async with http.post(f"/admin/abonnenten/{anna}/loeschen", data=form) as answer:
            assert answer.status == 403  # erasing is for admins
        await _get(http, "/admin/abonnenten/99999", 404)
    assert await _id(engine, "anna.schmidt@example.org") == anna


async def test_export_as_csv_and_json_lines(base: str, engine: AsyncEngine) -> None:
    async with await _as(base, "Paul") as http:
        async with http.get("/admin/abonnenten/export?format=csv") as answer:
            assert answer.status == 200
            assert "attachment" in answer.headers["Content-Disposition"]
            table = list(csv.DictReader(io.StringIO(await answer.text())))
        async with http.get("/admin/abonnenten/export?format=jsonl") as answer:
            lines = [json.loads(line) for line in (await answer.text()).splitlines()]
    assert len(table) == len(lines) == len(PEOPLE)
    assert {row["email"] for row in lines} == {p["email"] for p in PEOPLE}
    (anna,) = [row for row in table if row["email"] == "anna.schmidt@example.org"]
    assert anna["topics"] == "veranstaltungen"
    assert anna["telegram_chat_id"] == "4242"
    (formula,) = [row for row in table if "HYPERLINK" in row["email"]]
    assert formula["email"].startswith("'=")  # a spreadsheet shows it, never runs it
    assert formula["name"].startswith("'=")
    async with engine.connect() as conn:
        exported = (
            await conn.execute(
                select(audit_log.c.detail).where(audit_log.c.action == "subscribers.exported")
            )
        ).all()
    assert sorted(json.loads(row.detail)["format"] for row in exported) == ["csv", "jsonl"]


async def test_consent_proof_and_erase_with_confirmation(base: str, engine: AsyncEngine) -> None:
    anna = await _id(engine, "anna.schmidt@example.org")
    announcement_id = await Announcements(engine).create(example_announcement(), actor="test")
    async with engine.begin() as conn:  # past deliveries to her: kept, but anonymised
        await conn.execute(
            insert(deliveries),
            [
                {
                    "announcement_id": announcement_id,
                    "channel": channel,
                    "recipient": recipient,
                    "subscriber_id": anna,
                    "status": "sent",
                    "attempts": 1,
                    "next_attempt_at": NOW,
                }
                for channel, recipient in (
                    ("email", "anna.schmidt@example.org"),
                    ("telegram", "4242"),
                )
            ],
        )
    async with await _as(base, "Ada") as http:
        page = await _get(http, f"/admin/abonnenten/{anna}")
        assert "Einwilligungsnachweis" in page
        assert "203.0.113.0" in page and "2026-11" in page and "Bestätigt" in page
        assert "Veranstaltungen" in page
        confirm = await _get(http, f"/admin/abonnenten/{anna}/loeschen")
        assert "Endgültig löschen" in confirm
        async with http.post(
            f"/admin/abonnenten/{anna}/loeschen", data={"confirm": "yes"}
        ) as answer:
            assert answer.status == 403  # no CSRF token
        token = CSRF.search(confirm)
        assert token
        form = {"csrf": token.group(1), "confirm": "yes"}
        async with http.post(
            f"/admin/abonnenten/{anna}/loeschen", data=form, allow_redirects=False
        ) as answer:
            assert answer.status == 303
            assert answer.headers["Location"] == "/admin/abonnenten?meldung=geloescht"
        assert "Die Person wurde gelöscht." in await _get(http, answer.headers["Location"])
        await _get(http, f"/admin/abonnenten/{anna}", 404)
        bot_only = await _id(engine, None, name="Nur Telegram")
        async with http.post(
            f"/admin/abonnenten/{bot_only}/loeschen", data=form, allow_redirects=False
        ) as answer:
            assert answer.status == 303  # someone without an address can be erased too
    async with engine.connect() as conn:
        left = (await conn.execute(select(subscribers.c.id))).scalars().all()
        proof = (await conn.execute(select(consent_events))).all()
        recipients = (await conn.execute(select(deliveries.c.recipient))).scalars().all()
        suppressed = (await conn.execute(select(suppressions))).all()
        audited = (
            (
                await conn.execute(
                    select(audit_log.c.detail).where(audit_log.c.action == "subscriber.erased")
                )
            )
            .scalars()
            .all()
        )
        every_detail = " ".join(
            filter(None, (await conn.execute(select(audit_log.c.detail))).scalars())
        )
    assert anna not in left and bot_only not in left
    assert proof == []
    assert len(recipients) == 2
    assert "4242" not in recipients and "anna.schmidt@example.org" not in recipients
    assert len(suppressed) == 1  # the address as a keyed hash; the bot-only person had none
    assert sorted(json.loads(d)["subscriber_id"] for d in audited) == sorted([anna, bot_only])
    assert "anna" not in every_detail  # the audit says who was erased by id, not by address


async def test_audit_log_labels_filters_and_escaping(base: str, engine: AsyncEngine) -> None:
    hostile = await user_by_email(engine, "hostile@bzi.example.org")
    assert hostile is not None
    await create_api_token(engine, hostile, XSS)
    async with client(base) as http:
        await login(http, "eva@bzi.example.org", "falsch-falsch-falsch")
    async with await _as(base, "hostile") as http:
        await _get(http, "/admin")
    async with await _as(base, "Paul") as http:
        page = await _get(http, "/admin/protokoll")
        assert "Anmeldung fehlgeschlagen" in page
        assert "API-Token erstellt" in page
        assert "127.0.0.1" in page
        assert HOSTILE_STAFF not in page and XSS not in page
        assert "&lt;img src=x" in page and ESCAPED in page
        failed = await _get(http, "/admin/protokoll?aktion=login.failed")
        assert "Anmeldung fehlgeschlagen" in failed
        assert "API-Token erstellt</td>" not in failed
        paul = await user_by_email(engine, "paul@bzi.example.org")
        assert paul is not None
        own = await _get(http, f"/admin/protokoll?benutzer={paul.id}")
        assert re.findall(r"<tr><td>[^<]*</td><td>([^<]*)</td>", own) == ["Paul"]
        subscribers_page = await _get(http, "/admin/abonnenten?q=evil")
        assert XSS not in subscribers_page
        assert ESCAPED in subscribers_page
        evil = await _id(engine, "evil@example.org")
        person = await _get(http, f"/admin/abonnenten/{evil}")
        assert XSS not in person and ESCAPED in person
