"""The whole staff journey in headless Chromium, against a running service with aiosmtpd and the
local Mastodon and Telegram servers: an editor logs in and types the seed example into the forms
block by block, watches the live previews of every channel, submits; a publisher approves and
schedules it for the next minute in Europe/Berlin; it arrives by email, as a Mastodon thread and as
Telegram messages; an injected mail failure shows on the dashboard and "retry failed" delivers it.
Every screen is kept as a screenshot in ``artifacts/``."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, async_playwright
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.service import Service
from bzi_broadcast.staff.accounts import Role, add_user
from bzi_broadcast.store.schema import announcements
from bzi_broadcast.testing.mastodon import MastodonServer
from bzi_broadcast.testing.smtp import Fault, FaultPlan, SmtpCapture
from bzi_broadcast.testing.telegram import Limits, TelegramServer

from .conftest import ARTIFACTS, EXAMPLE, require_or_skip
from .test_admin import PASSWORD
from .test_delivery import serving, wait_until
from .test_editor import TOKEN, _settings
from .test_telegram_channel import add_telegram_subscribers

CHROMIUM = Path("/usr/bin/chromium")
EDITOR, PUBLISHER = "eva@bzi.example.org", "paul@bzi.example.org"
CHATS = [7001, 7002, 7003]
UNLUCKY = f"tg{CHATS[1]}@example.org"  # the mail server refuses this one once
LEAD = timedelta(seconds=20)  # the least time between choosing the minute and the send
SEED = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
pytestmark = pytest.mark.browser


@dataclass
class Stage:
    url: str
    smtp: SmtpCapture
    mastodon: MastodonServer
    telegram: TelegramServer
    browser: Browser


@pytest.fixture
async def stage(database_url: str, engine: AsyncEngine) -> AsyncIterator[Stage]:
    require_or_skip(CHROMIUM.exists() and shutil.which("chromium") is not None, "/usr/bin/chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    await add_user(engine, email=EDITOR, name="Eva", role=Role.EDITOR, password=PASSWORD)
    await add_user(engine, email=PUBLISHER, name="Paul", role=Role.PUBLISHER, password=PASSWORD)
    await add_telegram_subscribers(engine, CHATS)
    telegram = TelegramServer(
        token=TOKEN, limits=Limits(per_second=1000, per_chat_per_second=1000), accept_private=True
    )
    mastodon = MastodonServer(token="secret")
    telegram_http = TestServer(telegram.app(), host="127.0.0.1")
    mastodon_http = TestServer(mastodon.app(), host="127.0.0.1")
    await telegram_http.start_server()
    await mastodon_http.start_server()
    plan = FaultPlan(
        choose=lambda recipient: Fault(stage="data", code=554) if recipient == UNLUCKY else None
    )
    try:
        async with (
            SmtpCapture(plan) as smtp,
            async_playwright() as playwright,
        ):
            settings = _settings(
                database_url, smtp.port, telegram_http.port or 0, mastodon_http.port or 0
            )
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox"]
            )
            try:
                async with serving(Service(settings)) as url:
                    yield Stage(url, smtp, mastodon, telegram, browser)
            finally:
                await browser.close()
    finally:
        await mastodon_http.close()
        await telegram_http.close()


async def log_in(stage: Stage, email: str) -> Page:
    context = await stage.browser.new_context(
        viewport={"width": 1600, "height": 1000}, locale="de-DE"
    )
    page = await context.new_page()
    await page.goto(f"{stage.url}/admin/anmelden")
    await page.get_by_label("E-Mail-Adresse").fill(email)
    await page.get_by_label("Passwort").fill(PASSWORD)
    await page.get_by_role("button", name="Anmelden").click()
    await page.wait_for_url(f"{stage.url}/admin")
    return page


async def shot(page: Page, name: str, *, full_page: bool = True) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"workspace-{name}.png"), full_page=full_page)


async def add(page: Page, action: str) -> None:
    """A form button that re-renders the page (add a block, a format, a partner)."""
    async with page.expect_navigation():
        await page.locator(f'button[name="action"][value="{action}"]').click()


async def type_the_example(page: Page) -> None:
    await page.locator("#title").fill(SEED["title"])
    await page.locator("#summary").fill(SEED["summary"])
    for topic in SEED["topics"]:
        await page.locator(f'input[name="topics"][value="{topic}"]').check()
    await page.locator("#hashtags").fill(" ".join(SEED["hashtags"]))
    await page.locator("#channels-email-preheader").fill(SEED["channels"]["email"]["preheader"])
    await page.locator("#channels-telegram-link_preview").uncheck()
    event, quote, thanks = SEED["blocks"]

    await add(page, "add-event")
    await add(page, "add-format-0")
    await add(page, "add-format-0")
    await page.locator("#blocks-0-name").fill(event["name"])
    await page.locator("#blocks-0-start").fill(str(event["start"]))
    await page.locator("#blocks-0-place").fill(event["place"])
    await page.locator("#blocks-0-organisers").fill("\n".join(event["organisers"]))
    for index, item in enumerate(event["formats"]):
        for key in ("kind", "title", "led_by"):
            await page.locator(f"#blocks-0-formats-{index}-{key}").fill(item[key])
    await page.locator("#blocks-0-description").fill(event["description"])

    await add(page, "add-quote")
    await page.locator("#blocks-1-speaker").fill(quote["speaker"])
    await page.locator("#blocks-1-role").fill(quote["role"])
    await page.locator("#blocks-1-text").fill(quote["text"])

    await add(page, "add-thanks")
    await add(page, "add-partner-2")
    await add(page, "add-partner-2")
    await page.locator("#blocks-2-intro").fill(thanks["intro"])
    for index, partner in enumerate(thanks["partners"]):
        prefix = f"#blocks-2-partners-{index}-"
        await page.locator(prefix + "name").fill(partner["name"])
        await page.locator(prefix + "role").select_option(partner["role"])
        await page.locator(prefix + "url").fill(partner["url"])
    await page.locator("#blocks-2-closing").fill(thanks["closing"])


async def announcement_id_of(page: Page) -> int:
    found = re.search(r"/admin/ankuendigungen/(\d+)", page.url)
    assert found, page.url
    return int(found.group(1))


async def status_of(engine: AsyncEngine, announcement_id: int) -> S:
    async with engine.connect() as conn:
        status = (
            await conn.execute(
                select(announcements.c.status).where(announcements.c.id == announcement_id)
            )
        ).scalar_one()
    return S(status)


async def test_write_preview_approve_schedule_deliver_and_retry(
    stage: Stage, engine: AsyncEngine
) -> None:
    editor = await log_in(stage, EDITOR)
    await shot(editor, "1-uebersicht")
    await editor.get_by_role("link", name="Neue Ankündigung").first.click()
    await type_the_example(editor)

    # The live preview follows the typing: email (desktop and phone), thread, Telegram.
    preview = editor.locator("#vorschau")
    await editor.locator("#blocks-2-closing").press("End")
    await editor.locator("#blocks-2-closing").type(" ")
    await preview.locator("iframe").first.wait_for(timeout=15_000)
    assert await preview.locator("iframe").count() == 2
    email = editor.frame_locator("#vorschau iframe").first
    await email.get_by_text("Dr. Nergiz").first.wait_for(timeout=15_000)
    posts = preview.locator(".post")
    assert await posts.count() >= 2  # the long quote needs a thread
    assert re.search(r"\d+ von 500 Zeichen", await preview.inner_text())  # per-post counts
    assert await preview.locator(".bubble").count() >= 1
    await editor.locator("#blocks-1-speaker").scroll_into_view_if_needed()
    await shot(editor, "2-editor-vorschau", full_page=False)  # form and preview side by side

    async with editor.expect_navigation():
        await editor.get_by_role("button", name="Speichern").first.click()
    announcement_id = await announcement_id_of(editor)
    await editor.get_by_role("button", name="Zur Freigabe einreichen").click()
    await editor.get_by_text("Zur Freigabe").first.wait_for()
    assert await status_of(engine, announcement_id) == S.IN_REVIEW
    assert await editor.get_by_role("button", name="Freigeben").count() == 0  # four eyes
    await shot(editor, "3-eingereicht")

    publisher = await log_in(stage, PUBLISHER)
    await publisher.goto(f"{stage.url}/admin/ankuendigungen/{announcement_id}")
    await publisher.get_by_role("button", name="Freigeben").click()
    await publisher.locator("#at").wait_for()
    assert await status_of(engine, announcement_id) == S.APPROVED
    # The picker has minutes: the next whole minute, or the one after when the next is less than
    # LEAD away (filling and clicking take a few seconds, and a past time is refused). The send
    # waits for that minute: 20 to 80 s, where "two minutes ahead" waited 60 to 120 s.
    now = datetime.now(ZoneInfo("Europe/Berlin"))
    at = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if at - now < LEAD:
        at += timedelta(minutes=1)
    await publisher.locator("#at").fill(at.strftime("%Y-%m-%dT%H:%M"))
    await shot(publisher, "4-freigegeben-planen")
    await publisher.get_by_role("button", name="Planen").click()
    await publisher.get_by_role("button", name="Neu planen").wait_for()
    async with engine.connect() as conn:
        planned = (
            await conn.execute(
                select(announcements.c.publish_at).where(announcements.c.id == announcement_id)
            )
        ).scalar_one()
    assert planned == at.astimezone(UTC)

    async def finished() -> bool:
        return await status_of(engine, announcement_id) in (S.SENT, S.PARTIALLY_FAILED)

    await wait_until(finished, timeout=240)
    assert await status_of(engine, announcement_id) == S.PARTIALLY_FAILED
    delivered = {r.recipient for r in stage.smtp.received}
    assert delivered == {f"tg{chat}@example.org" for chat in CHATS} - {UNLUCKY}
    thread = stage.mastodon.thread()
    assert len(thread) >= 2 and "Dr. Nergiz" in " ".join(s["content"] for s in thread)
    assert all(stage.telegram.messages_to(chat) for chat in CHATS)

    await publisher.goto(f"{stage.url}/admin/ankuendigungen/{announcement_id}/versand")
    page_text = await publisher.inner_text("main")
    assert "554" in page_text  # the reason, as the mail server gave it
    assert thread[0]["url"] in [
        await link.get_attribute("href") for link in await publisher.locator("main a").all()
    ]
    await shot(publisher, "5-versand-fehler")
    # the button posts a form: wait for that navigation, or the reload below races it
    async with publisher.expect_navigation():
        await publisher.get_by_role("button", name="Fehlgeschlagene erneut senden").click()

    async def all_mail_arrived() -> bool:
        return UNLUCKY in {r.recipient for r in stage.smtp.received}

    await wait_until(all_mail_arrived, timeout=60)
    await wait_until(lambda: _status_is(engine, announcement_id, S.SENT), timeout=60)
    await publisher.reload()
    await shot(publisher, "6-versand-fertig")
    assert [r.recipient for r in stage.smtp.received].count(UNLUCKY) == 1


async def _status_is(engine: AsyncEngine, announcement_id: int, wanted: S) -> bool:
    return await status_of(engine, announcement_id) == wanted
