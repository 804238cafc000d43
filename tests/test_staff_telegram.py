"""„Test an mich senden“ posts only to a private chat the staff member proved with a one-time code
sent to the bot (/verbinden 123456): never to a chat id typed in, a channel, a group, or
someone else's chat. Wrong, expired and used codes get one answer; tries per chat are bounded."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.service import Service
from bzi_broadcast.staff.accounts import Role, add_user
from bzi_broadcast.store import schema
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import users
from bzi_broadcast.testing.mastodon import MastodonServer
from bzi_broadcast.testing.smtp import SmtpCapture
from bzi_broadcast.testing.telegram import Limits, Sent, TelegramServer

from .test_admin import CSRF, PASSWORD, client, login
from .test_delivery import serving, wait_until
from .test_editor import EDITOR, PUBLISHER, TOKEN, _settings, create_example, step

CHANNEL = -1001000000001  # the council's public channel
EVA_CHAT, PAUL_CHAT, STRANGER = 4711, 4712, 999
NEUTRAL = "Dieser Code gilt nicht (mehr)."


@dataclass
class Desk:
    url: str
    api: TelegramServer
    engine: AsyncEngine

    async def say(self, text: str, chat_id: int, **options: object) -> Sent:
        """Write to the bot and wait for its answer."""
        before = len(self.api.messages_to(chat_id))
        self.api.push_message(chat_id, text, **options)

        async def arrived() -> list[Sent]:
            return self.api.messages_to(chat_id)[before:]

        return (await wait_until(arrived, timeout=15))[0]


@pytest.fixture
async def desk(database_url: str, engine: AsyncEngine) -> AsyncIterator[Desk]:
    await add_user(engine, email=EDITOR, name="Eva", role=Role.EDITOR, password=PASSWORD)
    await add_user(engine, email=PUBLISHER, name="Paul", role=Role.PUBLISHER, password=PASSWORD)
    api = TelegramServer(token=TOKEN, limits=Limits(per_second=1000, per_chat_per_second=1000))
    api.add_chat(CHANNEL, type="channel", title="BZI")
    http = TestServer(api.app(), host="127.0.0.1")
    instance = TestServer(MastodonServer(token="secret").app(), host="127.0.0.1")
    await http.start_server()
    await instance.start_server()
    try:
        async with SmtpCapture() as smtp:
            base = _settings(database_url, smtp.port, http.port or 0, instance.port or 0)
            telegram = base.telegram.model_copy(update={"bot": True, "chats": [CHANNEL]})
            async with serving(Service(base.model_copy(update={"telegram": telegram}))) as url:
                yield Desk(url=url, api=api, engine=engine)
    finally:
        await instance.close()
        await http.close()


@contextlib.asynccontextmanager
async def staff(desk: Desk, email: str = EDITOR) -> AsyncIterator[aiohttp.ClientSession]:
    async with client(desk.url) as http:
        status, _page = await login(http, email, PASSWORD)
        assert status == 303
        yield http


async def account(http: aiohttp.ClientSession, **fields: str) -> tuple[int, str]:
    """POST to the Telegram part of „Mein Konto“ (with its CSRF token)."""
    async with http.get("/admin/konto") as answer:
        token = CSRF.search(await answer.text())
    assert token
    data = {"csrf": token.group(1), **fields}
    async with http.post("/admin/konto/telegram", data=data) as answer:
        return answer.status, await answer.text()


async def code_for(http: aiohttp.ClientSession) -> str:
    status, page = await account(http, action="code")
    assert status == 200, page
    found = re.search(r"/verbinden (\d{6})\b", page)
    assert found, page
    return found.group(1)


async def chat_of(engine: AsyncEngine, email: str = EDITOR) -> int | None:
    async with engine.connect() as conn:
        found = await conn.execute(select(users.c.telegram_chat_id).where(users.c.email == email))
        return found.scalar()


async def test_a_chat_id_typed_in_is_not_taken(desk: Desk) -> None:
    async with staff(desk) as http:
        status, _page = await account(http, telegram_chat_id=str(CHANNEL))
        assert status == 400
        async with http.get("/admin/konto") as answer:
            page = await answer.text()
        assert 'name="telegram_chat_id"' not in page
        assert "/verbinden" not in page  # no code until one is asked for (GET changes nothing)
    assert await chat_of(desk.engine) is None


async def test_a_channel_is_never_a_test_target(desk: Desk) -> None:
    async with desk.engine.begin() as conn:  # as if the chat had been set before this release
        await conn.execute(
            update(users).where(users.c.email == EDITOR).values(telegram_chat_id=CHANNEL)
        )
    async with staff(desk) as http:
        announcement_id = await create_example(http)
        status, page, _where = await step(http, announcement_id, "test")
    assert status == 502
    assert "Telegram-Test nicht gesendet" in page
    assert desk.api.messages_to(CHANNEL) == []


async def test_the_verbinden_journey(desk: Desk) -> None:
    async with staff(desk) as http:
        code = await code_for(http)
        answer = await desk.say(f"/verbinden {code}", EVA_CHAT)
        assert answer.text.startswith("Verbunden: „Test an mich senden“ schickt")
        assert "für Eva" in answer.text
        assert await chat_of(desk.engine) == EVA_CHAT
        async with http.get("/admin/konto") as konto:
            shown = await konto.text()
        assert "an Ihren privaten Chat (verbunden am" in shown
        assert 'value="trennen"' in shown
        announcement_id = await create_example(http)
        status, page, _where = await step(http, announcement_id, "test")
        assert status == 200, page
        assert f"Telegram: 1 Nachricht an Chat {EVA_CHAT} gesendet." in page
        test = desk.api.messages_to(EVA_CHAT)[-1]
        assert test.text.startswith("[Test] Weltoffene Kommunen")
        reused = await desk.say(f"/verbinden {code}", STRANGER)  # one use only
        assert reused.text.startswith(NEUTRAL)
        assert await chat_of(desk.engine) == EVA_CHAT
        status, _page = await account(http, action="trennen")
        assert status == 200
        assert await chat_of(desk.engine) is None
    assert desk.api.messages_to(CHANNEL) == []
    async with desk.engine.connect() as conn:
        assert (await conn.execute(select(schema.staff_telegram_codes))).all() == []


async def test_a_new_code_replaces_the_old_and_codes_are_kept_keyed(desk: Desk) -> None:
    async with staff(desk) as http:
        old, new = await code_for(http), await code_for(http)
    async with desk.engine.connect() as conn:
        stored = list(
            (await conn.execute(select(schema.staff_telegram_codes.c.code_hash))).scalars()
        )
    assert len(stored) == 1 and new not in stored[0]
    if old != new:
        assert (await desk.say(f"/verbinden {old}", EVA_CHAT)).text.startswith(NEUTRAL)
    assert (await desk.say(f"/verbinden {new}", EVA_CHAT)).text.startswith("Verbunden")


async def test_expired_and_wrong_codes_get_the_neutral_answer(desk: Desk) -> None:
    async with staff(desk) as http:
        code = await code_for(http)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert (await desk.say(f"/verbinden {wrong}", EVA_CHAT)).text.startswith(NEUTRAL)
    assert (await desk.say("/verbinden abcdef", EVA_CHAT)).text.startswith(NEUTRAL)
    usage = await desk.say("/verbinden", EVA_CHAT)
    assert usage.text.startswith("Bitte senden Sie /verbinden mit dem Code")
    async with desk.engine.begin() as conn:  # ten minutes later
        past = utcnow() - timedelta(seconds=1)
        await conn.execute(update(schema.staff_telegram_codes).values(expires_at=past))
    assert (await desk.say(f"/verbinden {code}", EVA_CHAT)).text.startswith(NEUTRAL)
    assert await chat_of(desk.engine) is None


async def test_a_group_or_someone_elses_chat_cannot_be_linked(desk: Desk) -> None:
    group = -20001
    async with staff(desk) as http:
        code = await code_for(http)
    answer = await desk.say(f"/verbinden {code}", group, chat_type="group", user_id=EVA_CHAT)
    assert answer.text.startswith("Ich arbeite nur im privaten Chat.")
    before = len(desk.api.messages_to(PAUL_CHAT))
    desk.api.push_message(PAUL_CHAT, f"/verbinden {code}", user_id=STRANGER)  # not his own chat
    answer = await desk.say("/hilfe", EVA_CHAT)  # handled in order: the line above is done
    assert "/verbinden – nur für Mitarbeitende" in answer.text
    assert len(desk.api.messages_to(PAUL_CHAT)) == before
    assert await chat_of(desk.engine) is None
    assert (await desk.say(f"/verbinden {code}", EVA_CHAT)).text.startswith("Verbunden")
    assert await chat_of(desk.engine) == EVA_CHAT


async def test_five_tries_per_chat_then_even_the_right_code_waits(desk: Desk) -> None:
    async with staff(desk) as http:
        code = await code_for(http)
    wrong = f"{(int(code) + 500_000) % 10**6:06d}"
    for _try in range(5):
        assert (await desk.say(f"/verbinden {wrong}", STRANGER)).text.startswith(NEUTRAL)
    refused = await desk.say(f"/verbinden {code}", STRANGER)
    assert refused.text.startswith("Zu viele Versuche.")
    assert await chat_of(desk.engine) is None
    async with staff(desk, PUBLISHER) as http:  # other chats are not held up
        paul = await code_for(http)
    assert (await desk.say(f"/verbinden {paul}", PAUL_CHAT)).text.startswith("Verbunden")
    assert await chat_of(desk.engine, PUBLISHER) == PAUL_CHAT
