"""The public archive and Atom feed: only sent announcements, newest first, paginated, opt-out
honoured, escaped, nothing personal."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.content.loader import parse_announcement
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.service import Service
from bzi_broadcast.store.announcements import Announcements, transition
from bzi_broadcast.testing.smtp import SmtpCapture

from .test_delivery import serving, settings_for

ATOM = "{http://www.w3.org/2005/Atom}"


@pytest.fixture
async def base(database_url: str) -> AsyncIterator[str]:
    async with (
        SmtpCapture() as smtp,
        serving(Service(settings_for(database_url, smtp.port))) as url,
    ):
        yield url


async def add(
    engine: AsyncEngine, title: str, minutes_ago: int, *, sent: bool = True, **fields: object
) -> int:
    data = {"title": title, "blocks": [{"type": "text", "text": f"Text von {title}"}], **fields}
    announcement = parse_announcement(json.dumps(data), fmt="json")
    store = Announcements(engine)
    new_id = await store.create(
        announcement,
        actor="t",
        status=S.SCHEDULED,
        publish_at=datetime.now(UTC) + timedelta(days=1),
    )
    if sent:
        released = datetime.now(UTC) - timedelta(minutes=minutes_ago)
        async with engine.begin() as conn:
            await transition(conn, new_id, S.SENDING, actor="t", released_at=released)
            await transition(conn, new_id, S.SENT, actor="t", finished_at=released)
    return new_id


async def get(url: str) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        return answer.status, await answer.text(), dict(answer.headers)


async def test_archive_lists_sent_announcements_newest_first_in_pages(
    engine: AsyncEngine, base: str
) -> None:
    for minutes in range(25):
        await add(engine, f"Meldung {minutes:02d}", minutes_ago=minutes)
    await add(engine, "Entwurf", 0, sent=False)
    hidden = await add(engine, "Intern", 0, archive=False)
    status, first, headers = await get(f"{base}/archiv")
    assert status == 200
    assert headers["Cache-Control"] == "public, max-age=300"
    assert first.index("Meldung 00") < first.index("Meldung 01") < first.index("Meldung 19")
    assert "Meldung 20" not in first
    assert "Entwurf" not in first and "Intern" not in first
    assert "Seite 1 von 2" in first
    _status, second, _headers = await get(f"{base}/archiv?seite=2")
    assert "Meldung 24" in second and "Meldung 00" not in second
    assert (await get(f"{base}/archiv?seite=3"))[0] == 404
    assert (await get(f"{base}/archiv/{hidden}"))[0] == 404
    assert "Page 1 of 2" in (await get(f"{base}/archiv?lang=en"))[1]


async def test_announcement_page_and_feed_escape_what_staff_wrote(
    engine: AsyncEngine, base: str
) -> None:
    evil = await add(engine, "<script>alert(1)</script> & Co", minutes_ago=1)
    await add(engine, "Zweite", minutes_ago=5)
    await add(engine, "Privat", minutes_ago=0, archive=False)
    status, page, _headers = await get(f"{base}/archiv/{evil}")
    assert status == 200
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in page
    assert "Text von" in page
    status, feed, headers = await get(f"{base}/feed.atom")
    assert status == 200
    assert headers["Content-Type"].startswith("application/atom+xml")
    root = ET.fromstring(feed.encode())
    assert root.tag == f"{ATOM}feed"
    assert root.findtext(f"{ATOM}id")
    assert root.findtext(f"{ATOM}updated")
    entries = root.findall(f"{ATOM}entry")
    titles = [e.findtext(f"{ATOM}title") for e in entries]
    assert titles == ["<script>alert(1)</script> & Co", "Zweite"]
    assert all(e.findtext(f"{ATOM}id", "").startswith("tag:") for e in entries)
    content = entries[0].findtext(f"{ATOM}content") or ""  # the HTML, once unescaped from XML
    assert "&lt;script&gt;" in content
    assert "<script>" not in content
    assert "@" not in feed.replace("kontakt@bzi.example.org", "")  # nothing personal
