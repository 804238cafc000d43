"""The local Telegram Bot API server, driven by the real python-telegram-bot client over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer
from telegram import Bot, LinkPreviewOptions
from telegram.error import BadRequest, ChatMigrated, Forbidden, InvalidToken, RetryAfter

from bzi_broadcast.content import Announcement
from bzi_broadcast.render import Renderer
from bzi_broadcast.testing.telegram import Fault, Limits, TelegramServer

TOKEN = "123456:TEST-TOKEN"


@pytest.fixture
async def server() -> AsyncIterator[tuple[TelegramServer, str]]:
    api = TelegramServer(
        token=TOKEN,
        limits=Limits(per_second=1000, per_chat_per_second=1000, per_group_per_minute=1000),
    )
    api.add_chat(1001)
    http = TestServer(api.app(), host="127.0.0.1")
    await http.start_server()
    yield api, f"http://127.0.0.1:{http.port}/bot"
    await http.close()


def bot(base_url: str, token: str = TOKEN) -> Bot:
    return Bot(token, base_url=base_url)


async def test_get_me_and_a_bad_token(server: tuple[TelegramServer, str]) -> None:
    _api, url = server
    async with bot(url) as client:
        me = await client.get_me()
    assert me.username == "bzi_test_bot"
    with pytest.raises(InvalidToken):
        async with bot(url, "999:WRONG") as wrong:
            await wrong.get_me()


async def test_seed_example_arrives_as_telegram_parses_it(
    server: tuple[TelegramServer, str], renderer: Renderer, example: Announcement
) -> None:
    api, url = server
    messages = renderer.telegram(example).messages
    async with bot(url) as client:
        for message in messages:
            sent = await client.send_message(
                1001,
                message.text,
                parse_mode=message.parse_mode,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            )
            assert sent.message_id > 0
    received = api.messages_to(1001)
    assert len(received) == len(messages)
    assert received[0].text.startswith("Weltoffene Kommunen – Vom Dialog zum Zusammenhalt")
    assert any(e["type"] == "blockquote" for r in received for e in r.entities)
    assert received[0].params["link_preview_options"] == {"is_disabled": True}


async def test_telegram_errors_map_to_ptb_exceptions(server: tuple[TelegramServer, str]) -> None:
    api, url = server
    api.add_chat(2002, blocked=True)
    api.add_chat(-3003, type="group", migrated_to=-1004242)
    async with bot(url) as client:
        with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
            await client.send_message(1001, "<script>x</script>", parse_mode="HTML")
        with pytest.raises(BadRequest, match=r"(?i)message is too long"):
            await client.send_message(1001, "x" * 4097)
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            await client.send_message(4242, "hallo")
        with pytest.raises(Forbidden, match=r"(?i)blocked"):
            await client.send_message(2002, "hallo")
        with pytest.raises(ChatMigrated) as migrated:
            await client.send_message(-3003, "hallo")
        assert migrated.value.new_chat_id == -1004242
        with pytest.raises(BadRequest, match=r"(?i)caption is too long"):
            await client.send_photo(1001, "https://example.org/p.jpg", caption="x" * 1025)
    assert api.sent == []


async def test_flood_control_answers_429_with_retry_after(
    server: tuple[TelegramServer, str],
) -> None:
    api, url = server
    api.limits = Limits(per_second=30, per_chat_per_second=1, per_group_per_minute=20)
    async with bot(url) as client:
        await client.send_message(1001, "eins")
        with pytest.raises(RetryAfter) as caught:
            await client.send_message(1001, "zwei")
    retry_after = caught.value.retry_after
    seconds = retry_after if isinstance(retry_after, int) else retry_after.total_seconds()
    assert seconds >= 1
    assert api.flood_answers == 1


async def test_injected_fault_and_long_polling(server: tuple[TelegramServer, str]) -> None:
    api, url = server
    api.inject(
        "sendMessage",
        Fault(status=429, description="Too Many Requests: retry after 3", retry_after=3),
    )
    async with bot(url) as client:
        with pytest.raises(RetryAfter):
            await client.send_message(1001, "x")
        api.push_update(
            {
                "message": {
                    "message_id": 1,
                    "date": 0,
                    "text": "/start",
                    "chat": {"id": 1001, "type": "private"},
                }
            }
        )
        updates = await client.get_updates(offset=0, timeout=1)
        assert [u.message.text for u in updates if u.message] == ["/start"]
        assert await client.get_updates(offset=updates[-1].update_id + 1, timeout=0) == ()
        await client.set_webhook("https://bzi.example.org/telegram")
        with pytest.raises(Exception, match="webhook is active"):
            await client.get_updates(timeout=0)
        await client.delete_webhook()
