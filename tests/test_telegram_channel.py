"""The Telegram channel end to end: outbox → python-telegram-bot → the local Bot API server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.content import Announcement, load_announcement
from bzi_broadcast.content.model import Image
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.service import Service
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.schema import deliveries, subscribers
from bzi_broadcast.testing.smtp import SmtpCapture
from bzi_broadcast.testing.telegram import Limits, TelegramServer

from .conftest import EXAMPLE
from .test_delivery import settings_for, wait_until

TOKEN = "123456:TEST-TOKEN"
PNG = base64.b64decode(  # 1×1 pixel
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def add_telegram_subscribers(engine: AsyncEngine, chats: list[int]) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(subscribers),
            [
                {
                    "email": f"tg{chat}@example.org",
                    "language": "de",
                    "status": "active",
                    "source": "bot",
                    "telegram_chat_id": chat,
                    "created_at": now,
                    "updated_at": now,
                }
                for chat in chats
            ],
        )


async def run_telegram(
    engine: AsyncEngine,
    database_url: str,
    api: TelegramServer,
    *,
    until: S | tuple[S, ...] = (S.SENT, S.PARTIALLY_FAILED),
    announcement: Announcement | None = None,
    **telegram: object,
) -> tuple[Announcements, int, int]:
    """Serve one announcement with Telegram against ``api``; returns the store, the announcement
    id and how many mails the email channel sent beside it."""
    http = TestServer(api.app(), host="127.0.0.1")
    await http.start_server()
    smtp = await SmtpCapture().start()
    base = settings_for(database_url, smtp.port)
    options = {
        "enabled": True,
        "token": SecretStr(TOKEN),
        "base_url": f"http://127.0.0.1:{http.port}/bot",
        **telegram,
    }
    settings = base.model_copy(update={"telegram": base.telegram.model_copy(update=options)})
    service = Service(settings)
    task = asyncio.create_task(service.run())
    store = Announcements(engine)
    wanted = until if isinstance(until, tuple) else (until,)
    try:
        announcement_id = await store.create(
            announcement or load_announcement(EXAMPLE),
            actor="t",
            status=S.SCHEDULED,
            publish_at=datetime.now(UTC),
        )
        await wait_until(lambda: _reached(store, announcement_id, wanted), timeout=60)
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)
        await smtp.stop()
        await http.close()
    return store, announcement_id, len(smtp.received)


async def _reached(store: Announcements, announcement_id: int, wanted: tuple[S, ...]) -> bool:
    return (await store.get(announcement_id)).status in wanted


async def test_seed_example_reaches_every_chat_and_errors_land_right(
    engine: AsyncEngine, database_url: str
) -> None:

    api = TelegramServer(
        token=TOKEN, limits=Limits(per_second=300, per_chat_per_second=10, per_group_per_minute=600)
    )
    for chat in (1001, 1002, 1003):
        api.add_chat(chat)
    api.add_chat(1004, blocked=True)
    api.add_chat(-100500, type="channel", title="BZI-Kanal")
    api.add_chat(-3003, type="group", migrated_to=-1004242)
    api.add_chat(-1004242, type="supergroup", title="BZI-Gruppe")
    await add_telegram_subscribers(engine, [1001, 1002, 1003, 1004])
    store, announcement_id, mails = await run_telegram(
        engine,
        database_url,
        api,
        chats=[-100500, -3003],
        per_chat_per_second=10.0,
        per_group_per_minute=600.0,
        per_second=300.0,
    )
    assert (await store.get(announcement_id)).status == S.PARTIALLY_FAILED
    async with engine.connect() as conn:
        rows = {
            r.recipient: r
            for r in await conn.execute(
                select(deliveries).where(deliveries.c.channel == "telegram")
            )
        }
        blocked = (
            await conn.execute(
                select(subscribers.c.telegram_chat_id).where(
                    subscribers.c.email == "tg1004@example.org"
                )
            )
        ).scalar_one()
    assert set(rows) == {"1001", "1002", "1003", "1004", "-100500", "-1004242"}
    assert rows["1004"].status == "failed"
    assert "blocked" in rows["1004"].last_error
    assert blocked is None  # the person blocked the bot: no more messages to that chat
    assert all(rows[c].status == "sent" for c in ("1001", "1002", "1003", "-100500", "-1004242"))
    per_chat = {chat: api.messages_to(chat) for chat in (1001, -100500, -1004242)}
    assert all(messages for messages in per_chat.values())
    assert per_chat[1001][0].text.startswith("Weltoffene Kommunen")
    assert api.flood_answers == 0
    assert mails == 4  # the email channel ran beside it


async def test_flood_answer_and_lost_connection_are_retried(
    engine: AsyncEngine, database_url: str
) -> None:
    from bzi_broadcast.testing.telegram import Fault

    api = TelegramServer(
        token=TOKEN, limits=Limits(per_second=300, per_chat_per_second=10, per_group_per_minute=600)
    )
    api.add_chat(1001)
    api.add_chat(1002)
    api.inject(
        "sendMessage",
        Fault(status=429, description="Too Many Requests: retry after 1", retry_after=1),
    )
    api.inject("sendMessage", Fault(drop=True))
    await add_telegram_subscribers(engine, [1001, 1002])
    store, announcement_id, _mails = await run_telegram(engine, database_url, api)
    assert (await store.get(announcement_id)).status == S.SENT
    async with engine.connect() as conn:
        attempts = sorted(
            (
                await conn.execute(
                    select(deliveries.c.attempts).where(deliveries.c.channel == "telegram")
                )
            ).scalars()
        )
    assert attempts == [2, 2]  # each chat hit one fault and got through on the retry
    assert api.messages_to(1001)
    assert api.messages_to(1002)


async def test_pacer_keeps_every_window_under_the_limits_and_waits_out_a_flood() -> None:
    import time

    from bzi_broadcast.channels.telegram import Pacer, TelegramLimits

    pacer = Pacer(TelegramLimits(per_second=200, per_chat_per_second=20, per_group_per_minute=600))
    admitted: list[tuple[float, int]] = []

    async def send(chat: int) -> None:
        await pacer.wait(chat)
        admitted.append((time.monotonic(), chat))

    started = time.monotonic()
    await asyncio.gather(*(send(chat) for chat in range(1, 301)), *(send(7) for _ in range(5)))
    times = sorted(at for at, _ in admitted)
    busiest = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert busiest <= 200 * 0.97
    assert time.monotonic() - started < 2.5  # and not much slower than the limit allows
    sevens = sorted(at for at, chat in admitted if chat == 7)
    assert min(b - a for a, b in itertools.pairwise(sevens)) >= 1 / 20

    pacer.hold(0.3)
    held = time.monotonic()
    await pacer.wait(999)
    assert time.monotonic() - held >= 0.29


async def test_a_wrong_token_pauses_the_channel_and_a_missing_chat_fails_its_row(
    engine: AsyncEngine, database_url: str
) -> None:
    from bzi_broadcast.delivery import control

    api = TelegramServer(token=TOKEN)
    api.add_chat(1001)
    await add_telegram_subscribers(engine, [1001])
    await run_telegram(engine, database_url, api, chats=[-100999], until=S.PARTIALLY_FAILED)
    async with engine.connect() as conn:
        rows = {
            r.recipient: r
            for r in await conn.execute(
                select(deliveries).where(deliveries.c.channel == "telegram")
            )
        }
    assert rows["-100999"].status == "failed"
    assert "chat not found" in rows["-100999"].last_error.lower()
    assert rows["-100999"].attempts == 1
    assert rows["1001"].status == "sent"

    wrong = TelegramServer(token="654321:OTHER")  # the bot's token was revoked
    wrong.add_chat(1001)
    sends = asyncio.create_task(
        run_telegram(engine, database_url, wrong, until=S.SENT)  # never reached: paused
    )
    paused = await wait_until(lambda: control.paused_channels(engine), timeout=30)
    sends.cancel()  # stops the service cleanly (run_telegram's finally)
    with contextlib.suppress(asyncio.CancelledError):
        await sends
    assert "neu verbunden" in (paused["telegram"] or "")
    assert wrong.sent == []


async def test_an_image_is_uploaded_once_then_sent_by_file_id_with_a_short_caption(
    engine: AsyncEngine, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bzi_broadcast.render import telegram_html
    from bzi_broadcast.testing.telegram import UPLOAD

    monkeypatch.chdir(tmp_path)  # local images are read relative to the working directory
    (tmp_path / "podium.png").write_bytes(PNG)
    example = load_announcement(EXAMPLE)
    announcement = example.model_copy(update={"image": Image(src="podium.png", alt="Podium")})
    api = TelegramServer(token=TOKEN, limits=Limits(per_second=300, per_chat_per_second=10))
    for chat in (1001, 1002):
        api.add_chat(chat)
    await add_telegram_subscribers(engine, [1001, 1002])
    store, announcement_id, _mails = await run_telegram(
        engine, database_url, api, announcement=announcement, per_chat_per_second=10.0
    )
    assert (await store.get(announcement_id)).status == S.SENT
    photos = [params["photo"] for method, params in api.calls if method == "sendPhoto"]
    assert sorted(photos, key=lambda p: p != UPLOAD) == [UPLOAD, "photo-1"]
    for chat in (1001, 1002):
        first, *rest = api.messages_to(chat)
        assert first.method == "sendPhoto"
        assert telegram_html.utf16_length(first.text) <= 1024
        assert rest  # the rest of the announcement follows the captioned photo
        assert all(m.method == "sendMessage" for m in rest)
