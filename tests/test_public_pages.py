"""The subscriber's pages through a running service, a real SMTP server and a real HTTP client:
double opt-in from the received mail, RFC 8058 one-click unsubscribe from a sent newsletter,
preferences, bad tokens, CSRF, enumeration resistance, rate limits and escaping."""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.config import Settings
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.service import Service, signer
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.schema import consent_events, subscriber_topics, subscribers
from bzi_broadcast.subscribers.store import suppress
from bzi_broadcast.testing.smtp import SmtpCapture
from bzi_broadcast.web.public import BACKGROUND, normalize_address

from .test_delivery import example_announcement, serving, settings_for, wait_until

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Site:
    service: Service
    smtp: SmtpCapture
    base: str
    settings: Settings

    def client(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(self.base, cookie_jar=aiohttp.CookieJar(unsafe=True))


@contextlib.asynccontextmanager
async def open_site(database_url: str, **subscriber_settings: object) -> AsyncIterator[Site]:
    async with SmtpCapture() as smtp:
        base = settings_for(database_url, smtp.port)
        settings = base.model_copy(
            update={"subscribers": base.subscribers.model_copy(update=subscriber_settings)}
        )
        service = Service(settings)
        async with serving(service) as url:
            yield Site(service, smtp, url, settings)


@pytest.fixture
async def site(database_url: str) -> AsyncIterator[Site]:
    async with open_site(database_url, signups_per_ip_per_hour=50, ip_logging="full") as opened:
        yield opened


async def sign_up(http: aiohttp.ClientSession, **fields: str) -> tuple[int, str]:
    async with http.get("/anmelden") as answer:
        token = CSRF.search(await answer.text())
    assert token is not None
    data = {"csrf": token.group(1), "language": "de", "consent": "ja", **fields}
    async with http.post("/anmelden", data=data) as answer:
        return answer.status, await answer.text()


async def mails_to(smtp: SmtpCapture, address: str, count: int = 1) -> list[str]:
    async def arrived() -> list[str]:
        found = [r.message().get_body(("plain",)) for r in smtp.received if r.recipient == address]
        return [part.get_content() for part in found if part] if len(found) >= count else []

    return await wait_until(arrived, timeout=20)


def path_of(text: str, prefix: str) -> str:
    found = re.search(rf"https?://[^/\s]+(/{prefix}/[A-Za-z0-9._-]+)", text)
    assert found, text
    return found.group(1)


async def status_of(engine: AsyncEngine, email: str) -> str | None:
    async with engine.connect() as conn:
        return (
            await conn.execute(select(subscribers.c.status).where(subscribers.c.email == email))
        ).scalar()


async def events_of(engine: AsyncEngine, email: str) -> list[str]:
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(consent_events.c.event)
                    .join(subscribers, subscribers.c.id == consent_events.c.subscriber_id)
                    .where(subscribers.c.email == email)
                    .order_by(consent_events.c.id)
                )
            ).scalars()
        )


async def test_double_opt_in_from_the_received_mail(site: Site, engine: AsyncEngine) -> None:
    async with site.client() as http:
        status, page = await sign_up(
            http, email="Anna@Example.org", name="<script>alert(1)</script>", topics="projekte"
        )
        assert status == 200
        assert "Fast geschafft" in page
        (mail,) = await mails_to(site.smtp, "anna@example.org")
        html = next(r for r in site.smtp.received if r.recipient == "anna@example.org")
        html_body = html.message().get_body(("html",))
        assert html_body is not None
        assert "<script>alert(1)" not in html_body.get_content()
        assert "&lt;script&gt;" in html_body.get_content()
        link = path_of(mail, "bestaetigen")
        async with http.get(link) as answer:  # what a mail scanner does: confirms nothing
            assert answer.status == 200
            assert '<form method="post"' in await answer.text()
        assert await status_of(engine, "anna@example.org") == "pending"
        async with http.post(link) as answer:
            assert "Anmeldung bestätigt" in await answer.text()
        async with http.post(link) as answer:
            assert "Schon bestätigt" in await answer.text()
    assert await status_of(engine, "anna@example.org") == "active"
    assert await events_of(engine, "anna@example.org") == [
        "signed_up",
        "confirmation_sent",
        "confirmed",
    ]
    async with engine.connect() as conn:
        ip = (
            await conn.execute(
                select(consent_events.c.ip).where(consent_events.c.event == "confirmed")
            )
        ).scalar()
        topics = list((await conn.execute(select(subscriber_topics.c.topic))).scalars())
    assert ip == "127.0.0.1"
    assert topics == ["projekte"]


async def test_one_click_unsubscribe_through_the_sent_newsletters_header(
    site: Site, engine: AsyncEngine
) -> None:
    async with site.client() as http:
        await sign_up(http, email="bert@example.org")
        link = path_of((await mails_to(site.smtp, "bert@example.org"))[0], "bestaetigen")
        async with http.post(link) as answer:
            assert answer.status == 200
    announcement_id = await Announcements(engine).create(
        example_announcement(), actor="t", status=S.SCHEDULED, publish_at=datetime.now(UTC)
    )
    await mails_to(site.smtp, "bert@example.org", count=2)
    newsletter = next(
        r.message()
        for r in site.smtp.received
        if r.recipient == "bert@example.org" and r.message()["List-Unsubscribe"]
    )
    assert newsletter["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.search(r"<(https?://[^>]+)>", newsletter["List-Unsubscribe"])
    assert url, newsletter["List-Unsubscribe"]
    path = "/" + url.group(1).split("/", 3)[3]
    # The mailbox provider's POST: no cookies, no CSRF token, just the RFC 8058 body.
    async with (
        aiohttp.ClientSession(site.base) as provider,
        provider.post(
            path,
            data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as answer,
    ):
        assert answer.status == 200
    assert await status_of(engine, "bert@example.org") == "unsubscribed"
    assert await events_of(engine, "bert@example.org") == [
        "signed_up",
        "confirmation_sent",
        "confirmed",
        "unsubscribed",
    ]
    assert announcement_id


async def test_preferences_change_topics_language_and_pause(
    site: Site, engine: AsyncEngine
) -> None:
    async with site.client() as http:
        await sign_up(http, email="cem@example.org")
        link = path_of((await mails_to(site.smtp, "cem@example.org"))[0], "bestaetigen")
        async with http.post(link) as answer:
            found = re.search(r'href="https?://[^/"]+(/einstellungen/[^"]+)"', await answer.text())
        assert found
        preferences = found.group(1)
        async with http.get(preferences) as answer:
            token = CSRF.search(await answer.text())
        assert token
        pause = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
        form = {
            "csrf": token.group(1),
            "language": "en",
            "topics": "veranstaltungen",
            "paused_until": pause,
        }
        async with http.post(preferences, data=form) as answer:
            assert answer.status == 200
            assert "Gespeichert" in await answer.text()
        async with http.post(preferences, data={**form, "paused_until": "morgen"}) as answer:
            assert answer.status == 400
            assert "JJJJ-MM-TT" in await answer.text()
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(subscribers).where(subscribers.c.email == "cem@example.org"))
        ).one()
    assert row.language == "en"
    assert row.paused_until is not None
    assert (await events_of(engine, "cem@example.org"))[-1] == "preferences_changed"


async def test_tampered_and_expired_tokens_and_a_missing_csrf_token(site: Site) -> None:
    sign = signer(site.settings)
    expired = sign.sign(purpose="confirm", subject="1", ttl=timedelta(seconds=-1))
    valid = sign.sign(purpose="unsubscribe", subject="1", ttl=timedelta(days=1))
    tampered = valid[:-2] + ("AA" if not valid.endswith("AA") else "BB")
    async with site.client() as http:
        async with http.get(f"/bestaetigen/{expired}") as answer:
            assert answer.status == 410
            assert "abgelaufen" in await answer.text()
        async with http.post(f"/abmelden/{tampered}") as answer:
            assert answer.status == 400
            assert "ungültig" in await answer.text()
        async with http.post(f"/bestaetigen/{valid}") as answer:  # the wrong purpose
            assert answer.status == 400
        async with http.post("/anmelden", data={"email": "x@example.org", "consent": "ja"}) as a:
            assert a.status == 403


async def test_known_unknown_and_suppressed_addresses_look_the_same(
    site: Site, engine: AsyncEngine
) -> None:
    key = site.settings.security.secret_key.get_secret_value().encode()
    async with site.client() as http:
        await sign_up(http, email="known@example.org")
        link = path_of((await mails_to(site.smtp, "known@example.org"))[0], "bestaetigen")
        async with http.post(link):
            pass
        await suppress(engine, "blocked@example.org", reason="erased", detail=None, key=key)
        answers: dict[str, list[tuple[int, str]]] = {}
        timings: dict[str, list[float]] = {}
        for round_ in range(5):
            for kind, address in (
                ("known", "known@example.org"),
                ("unknown", f"new{round_}@example.org"),
                ("suppressed", "blocked@example.org"),
            ):
                started = time.perf_counter()
                answers.setdefault(kind, []).append(await sign_up(http, email=address))
                timings.setdefault(kind, []).append(time.perf_counter() - started)
    bodies = {kind: {(s, re.sub(CSRF, "", b)) for s, b in found} for kind, found in answers.items()}
    assert bodies["known"] == bodies["unknown"] == bodies["suppressed"]
    medians = [statistics.median(t) for t in timings.values()]
    assert max(medians) < 3 * min(medians) + 0.05
    await mails_to(site.smtp, "new4@example.org")
    # a suppressed address comes back only through a fresh double opt-in: a link, no newsletter
    (mail, *_more) = await mails_to(site.smtp, "blocked@example.org")
    assert "/bestaetigen/" in mail
    assert await status_of(engine, "blocked@example.org") == "pending"


async def test_rate_limits_per_ip_and_per_address(database_url: str, engine: AsyncEngine) -> None:
    async with open_site(
        database_url, signups_per_ip_per_hour=4, confirmations_per_address_per_day=2
    ) as site:
        async with site.client() as http:
            statuses = [(await sign_up(http, email="dora@example.org"))[0] for _ in range(5)]
            assert statuses == [200, 200, 200, 200, 429]
        await mails_to(site.smtp, "dora@example.org", count=2)
        pending = site.service.web[BACKGROUND]  # sign-ups finish after their answer
        if pending:
            await asyncio.wait(pending, timeout=10)
        # the third and fourth sign-up of the address were throttled: no more mail
        received = [r for r in site.smtp.received if r.recipient == "dora@example.org"]
        assert len(received) == 2


@pytest.mark.parametrize(
    ("address", "accepted"),
    [
        ("anna@bücher.example", True),
        ("kein-at-zeichen", False),
        ("zwei@@example.org", False),
        ("leer@", False),
        ("ä@example.org", False),
    ],
)
def test_addresses_valid_idn_accepted_the_rest_refused(address: str, accepted: bool) -> None:
    normalized = normalize_address(address)
    assert (normalized is not None) is accepted
    if address == "anna@bücher.example":
        assert normalized == "anna@xn--bcher-kva.example"


async def test_a_form_without_consent_keeps_what_was_typed(site: Site) -> None:
    async with site.client() as http:
        async with http.get("/anmelden?lang=en") as answer:
            token = CSRF.search(await answer.text())
        assert token
        data = {"csrf": token.group(1), "email": "kaputt", "name": 'Émile "Zola"', "language": "en"}
        async with http.post("/anmelden", data=data) as answer:
            page = await answer.text()
            assert answer.status == 400
    assert 'value="kaputt"' in page
    assert "Émile &#34;Zola&#34;" in page
    assert "not a valid email address" in page
    assert "consent" in page
