"""The subscriber bot end to end: updates from the local Bot API server, through
python-telegram-bot inside ``Service.run``, to the database and back as answers.

Polling on SQLite and PostgreSQL; webhook mode through the service's web server; and two
``serve`` processes on PostgreSQL, of which exactly one polls until it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.i18n import use_locale
from bzi_broadcast.service import Service
from bzi_broadcast.store.schema import consent_events, subscriber_topics, subscribers
from bzi_broadcast.subscribers.bot import WEBHOOK_PATH
from bzi_broadcast.subscribers.bot_store import payload_topics
from bzi_broadcast.testing.smtp import SmtpCapture
from bzi_broadcast.testing.telegram import Limits, Sent, TelegramServer

from .test_delivery import settings_for, wait_until
from .test_reliability import exited, serve

TOKEN = "123456:TEST-TOKEN"
PERSON = 4711
SECRET = "webhook-secret_1"


@dataclass
class Bot:
    """The running service with its bot, and the local Bot API server it talks to."""

    api: TelegramServer
    engine: AsyncEngine
    service: Service | None = None  # None: the service runs in other processes

    async def say(self, text: str, chat_id: int = PERSON, **options: Any) -> Sent:
        """Write to the bot and wait for its answer."""
        before = len(self.api.messages_to(chat_id))
        self.api.push_message(chat_id, text, **options)
        return await self.answer(chat_id, before)

    async def answer(self, chat_id: int, before: int) -> Sent:
        async def arrived() -> list[Sent]:
            return self.api.messages_to(chat_id)[before:]

        return (await wait_until(arrived, timeout=15))[0]

    async def press(self, message: Sent, data: str) -> Sent:
        """Press a button under ``message``; wait for the answer and the edited message."""
        edits = len(self.api.edits)
        query = self.api.push_callback(message.chat_id, message.message_id, data)

        async def edited() -> bool:
            return query in self.api.answers and len(self.api.edits) > edits

        await wait_until(edited, timeout=15)
        return self.api.edits[-1]


@contextlib.asynccontextmanager
async def start_bot(
    engine: AsyncEngine, database_url: str, **telegram: object
) -> AsyncIterator[Bot]:
    api = TelegramServer(
        token=TOKEN,
        limits=Limits(per_second=1000, per_chat_per_second=1000, per_group_per_minute=1000),
    )
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
    try:
        yield Bot(api=api, engine=engine, service=service)
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)
        await smtp.stop()
        await http.close()


@pytest.fixture
async def bot(engine: AsyncEngine, database_url: str) -> AsyncIterator[Bot]:
    async with start_bot(engine, database_url) as running:
        yield running


async def person(engine: AsyncEngine, chat_id: int = PERSON) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(subscribers).where(subscribers.c.telegram_chat_id == chat_id))
        ).first()
        if row is None:
            return None
        topics = await conn.execute(
            select(subscriber_topics.c.topic).where(subscriber_topics.c.subscriber_id == row.id)
        )
        events = await conn.execute(
            select(consent_events)
            .where(consent_events.c.subscriber_id == row.id)
            .order_by(consent_events.c.id)
        )
        return {
            **row._asdict(),
            "topics": set(topics.scalars()),
            "events": [
                (e.event, e.channel, e.source, json.loads(e.detail) if e.detail else None)
                for e in events
            ],
        }


def english(message: str) -> str:
    with use_locale("en"):
        return _(message)


# --- the conversation -------------------------------------------------------------------------


async def test_start_subscribes_and_confirms_stop_unsubscribes_start_again(bot: Bot) -> None:
    welcome = await bot.say("/start")
    assert welcome.text.startswith("Willkommen! Sie erhalten die Mitteilungen des BZI")
    assert "Ihre Themen: alle" in welcome.text
    assert "/stop – abmelden" in welcome.text
    row = await person(bot.engine)
    assert row is not None
    assert (row["email"], row["status"], row["source"], row["language"]) == (
        None,
        "active",
        "bot",
        "de",
    )
    assert row["confirmed_at"] is not None
    assert row["consent_version"] == "2026-11"
    assert row["events"] == [
        ("signed_up", "telegram", "bot", {"command": "/start", "topics": []}),
        ("confirmed", "telegram", "bot", {"opt_in": "telegram /start"}),
    ]

    assert (await bot.say("/start")).text.startswith("Sie sind bereits angemeldet.")
    assert len((await person(bot.engine) or {})["events"]) == 2  # nothing new to prove

    assert (await bot.say("/stop")).text.startswith("Sie sind abgemeldet")
    row = await person(bot.engine)
    assert row is not None and row["status"] == "unsubscribed"
    assert row["events"][-1] == ("unsubscribed", "telegram", "bot", {"command": "/stop"})
    assert (await bot.say("/stop")).text.startswith("Sie sind nicht angemeldet.")

    assert (await bot.say("/start")).text.startswith("Willkommen!")
    row = await person(bot.engine)
    assert row is not None and row["status"] == "active"
    assert [e[0] for e in row["events"]] == [
        "signed_up",
        "confirmed",
        "unsubscribed",
        "signed_up",
        "confirmed",
    ]


async def test_deep_link_preselects_known_topics(bot: Bot) -> None:
    answer = await bot.say("/start stellungnahmen-unbekannt_projekte")
    assert "Ihre Themen: Stellungnahmen, Projekte" in answer.text
    row = await person(bot.engine)
    assert row is not None and row["topics"] == {"stellungnahmen", "projekte"}
    assert row["events"][0][3] == {"command": "/start", "topics": ["projekte", "stellungnahmen"]}
    # a deep link later replaces the choice of someone subscribed already
    await bot.say("/start veranstaltungen")
    row = await person(bot.engine)
    assert row is not None and row["topics"] == {"veranstaltungen"}
    assert row["events"][-1] == (
        "preferences_changed",
        "telegram",
        "bot",
        {"topics": ["veranstaltungen"]},
    )
    # only unknown ids: an ordinary /start for a new person
    await bot.say("/start nichts-davon", chat_id=PERSON + 1)
    other = await person(bot.engine, PERSON + 1)
    assert other is not None and other["topics"] == set() and other["status"] == "active"


def test_deep_link_payload_with_ids_that_contain_separators() -> None:
    known = ["a-b", "a", "b_c", "projekte"]
    assert payload_topics("a-b_projekte", known) == {"a-b", "projekte"}
    assert payload_topics("a_b-c", known) == {"a"}  # "b-c" is not "b_c"
    assert payload_topics("B_C-x-a", known) == {"b_c", "a"}
    assert payload_topics("", known) == frozenset()
    assert payload_topics("---", known) == frozenset()


async def test_topics_keyboard_toggles_a_topic(bot: Bot) -> None:
    await bot.say("/start")
    menu = await bot.say("/themen")
    keyboard = menu.params["reply_markup"]["inline_keyboard"]
    assert [row[0]["text"] for row in keyboard] == ["Veranstaltungen", "Stellungnahmen", "Projekte"]
    edited = await bot.press(menu, "projekte")
    assert "Ihre Themen: Projekte" in edited.text
    labels = [row[0]["text"] for row in edited.params["reply_markup"]["inline_keyboard"]]
    assert labels == ["Veranstaltungen", "Stellungnahmen", "✓ Projekte"]
    assert list(bot.api.answers.values())[-1] == "Gespeichert."
    row = await person(bot.engine)
    assert row is not None and row["topics"] == {"projekte"}
    assert row["events"][-1] == (
        "preferences_changed",
        "telegram",
        "bot",
        {"topics": ["projekte"]},
    )
    edited = await bot.press(edited, "projekte")  # the same button again: chosen no more
    assert "Ihre Themen: alle" in edited.text
    row = await person(bot.engine)
    assert row is not None and row["topics"] == set()


async def test_topics_and_language_need_a_subscription(bot: Bot) -> None:
    assert (await bot.say("/themen")).text.startswith("Sie sind nicht angemeldet.")
    assert (await bot.say("/sprache")).text.startswith("Sie sind nicht angemeldet.")
    assert await person(bot.engine) is None


async def test_language_switch_to_english(bot: Bot) -> None:
    await bot.say("/start")
    menu = await bot.say("/sprache")
    buttons = menu.params["reply_markup"]["inline_keyboard"][0]
    assert [(b["text"], b["callback_data"]) for b in buttons] == [
        ("Deutsch", "lang:de"),
        ("English", "lang:en"),
    ]
    edited = await bot.press(menu, "lang:en")
    assert edited.text == english("Ab jetzt schreibe ich Ihnen auf {language}.").format(
        language="English"
    )
    assert "reply_markup" not in edited.params
    row = await person(bot.engine)
    assert row is not None and row["language"] == "en"
    assert row["events"][-1] == ("preferences_changed", "telegram", "bot", {"language": "en"})
    # the next answers are English: the topic names come from the settings' English names
    topics = await bot.say("/topics")
    keyboard = topics.params["reply_markup"]["inline_keyboard"]
    assert [row[0]["text"] for row in keyboard] == ["Events", "Statements", "Projects"]
    assert (await bot.say("/hilfe")).text == english(
        "/start – anmelden\n/stop – abmelden\n/themen – Themen wählen\n"
        "/sprache – Sprache wechseln (Deutsch/English)\n/datenschutz – was wir speichern\n"
        "/hilfe – diese Übersicht"
    ) + "\n" + english("/verbinden – nur für Mitarbeitende: den Chat für Testnachrichten verbinden")
    unknown = await bot.say("/quatsch")
    assert unknown.text.startswith(english("Diesen Befehl kenne ich nicht."))


async def test_help_privacy_unknown_commands_and_plain_text(bot: Bot) -> None:
    help_text = (await bot.say("/hilfe")).text
    assert help_text.splitlines()[0] == "/start – anmelden"
    assert (await bot.say("/help")).text == help_text
    privacy = (await bot.say("/datenschutz")).text
    assert privacy.startswith("Datenschutz: Wir speichern Ihre Telegram-Chat-ID")
    assert "Mehr dazu: https://bzi.example.org" in privacy
    unknown = (await bot.say("/gibtsnicht")).text
    assert unknown == f"Diesen Befehl kenne ich nicht.\n\n{help_text}"
    plain = (await bot.say("Hallo, was kann ich hier tun?")).text
    assert plain == f"Ich verstehe nur Befehle.\n\n{help_text}"
    assert (await bot.say("/start@anderer_bot")).text.startswith("Diesen Befehl kenne ich")
    assert await person(bot.engine) is None  # talking is not subscribing


async def test_group_chats_get_pointed_to_the_private_chat(bot: Bot) -> None:
    group = -20001
    answer = await bot.say("/start", chat_id=group, chat_type="group", user_id=PERSON)
    assert (
        answer.text == "Ich arbeite nur im privaten Chat. Schreiben Sie mir direkt: @bzi_test_bot"
    )
    bot.api.push_message(group, "/start@anderer_bot", user_id=PERSON)  # not for us: no answer
    answer = await bot.say("/themen@bzi_test_bot", chat_id=group, user_id=PERSON)
    assert answer.text.startswith("Ich arbeite nur im privaten Chat.")
    assert len(bot.api.messages_to(group)) == 2
    assert await person(bot.engine, group) is None
    assert await person(bot.engine, PERSON) is None


async def test_command_menu_in_german_and_english(bot: Bot) -> None:
    async def menus() -> bool:
        return {"", "en"} <= bot.api.commands.keys()

    await wait_until(menus, timeout=15)
    assert [name for name, _d in bot.api.commands[""]] == [
        "start",
        "stop",
        "themen",
        "sprache",
        "hilfe",
        "datenschutz",
        "verbinden",
    ]
    assert [name for name, _d in bot.api.commands["en"]] == [
        "start",
        "stop",
        "topics",
        "language",
        "help",
        "privacy",
        "connect",
    ]
    assert bot.api.commands[""][2][1] == "Themen wählen"


async def test_a_failure_is_an_apology_without_details(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert bot.service is not None and bot.service.bot is not None
    bot_part = bot.service.bot

    async def broken(chat_id: int, topics: object) -> object:
        raise RuntimeError("connection to db-secret-host refused")

    monkeypatch.setattr(bot_part.people, "subscribe", broken)
    answer = await bot.say("/start")
    assert answer.text == (
        "Das hat leider nicht geklappt. Bitte versuchen Sie es später noch einmal."
    )
    assert all("secret" not in s.text for s in bot.api.sent)


async def test_polling_stops_and_the_lock_is_released(
    engine: AsyncEngine, database_url: str
) -> None:
    async with start_bot(engine, database_url) as running:
        await running.say("/start")
    polls = sum(1 for method, _p in running.api.calls if method == "getUpdates")
    assert polls >= 1
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            held = await conn.scalar(
                select(func.count())
                .select_from(text("pg_locks"))
                .where(text("locktype = 'advisory'"))
            )
        assert held == 0


# --- webhook mode ------------------------------------------------------------------------------


async def test_webhook_mode_takes_updates_through_the_service(
    engine: AsyncEngine, database_url: str
) -> None:
    url = "https://bot.example.org/telegram/webhook"
    async with start_bot(
        engine, database_url, webhook_url=url, webhook_secret=SecretStr(SECRET)
    ) as running:
        api = running.api
        service = running.service
        assert service is not None

        async def registered() -> bool:
            return api.webhook_url == url and service.web_port is not None

        await wait_until(registered, timeout=15)
        assert api.webhook_secret == SECRET
        endpoint = f"http://127.0.0.1:{service.web_port}{WEBHOOK_PATH}"
        update = {"update_id": 1, **api.message_update(PERSON, "/start")}
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
                async with http.post(endpoint, json=update, headers=headers) as response:
                    assert response.status == 403
            good = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
            async with http.post(endpoint, data="{not json", headers=good) as response:
                assert response.status == 400
                assert "Traceback" not in await response.text()
            async with http.post(endpoint, json=update, headers=good) as response:
                assert response.status == 200
            welcome = await running.answer(PERSON, 0)
        assert welcome.text.startswith("Willkommen!")
        assert len(api.messages_to(PERSON)) == 1  # the refused posts did nothing
        row = await person(engine)
        assert row is not None and row["status"] == "active"
        assert not any(method == "getUpdates" for method, _p in api.calls)


# --- several processes: one poller ----------------------------------------------------------------


async def test_two_processes_on_postgresql_one_polls_and_the_other_takes_over(
    pg_database_url: str, tmp_path: Path
) -> None:
    from bzi_broadcast.store.engine import create_engine, migrate
    from bzi_broadcast.store.schema import metadata

    engine = create_engine(pg_database_url)
    await migrate(engine)
    async with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(table.delete())
    api = TelegramServer(
        token=TOKEN,
        limits=Limits(per_second=1000, per_chat_per_second=1000, per_group_per_minute=1000),
    )
    http = TestServer(api.app(), host="127.0.0.1")
    await http.start_server()
    telegram = {
        "BZI_TELEGRAM_ENABLED": "true",
        "BZI_TELEGRAM_TOKEN": TOKEN,
        "BZI_TELEGRAM_BASE_URL": f"http://127.0.0.1:{http.port}/bot",
        "BZI_LOG_LEVEL": "INFO",
    }
    try:
        async with SmtpCapture() as smtp:
            processes = [serve(pg_database_url, smtp.port, tmp_path, **telegram) for _ in range(2)]
            logs = [tmp_path / f"serve-{i}.log" for i in range(2)]
            try:
                first = await wait_until(lambda: _pollers(logs, 1), timeout=60)
                talk = Bot(api=api, engine=engine)
                assert (await talk.say("/start")).text.startswith("Willkommen!")
                # The other process tried the lock and was refused: it must not poll.
                other = logs[1 - first[0]]
                await wait_until(lambda: _logged(other, "another process polls"), timeout=20)
                assert await _pollers(logs, 1) == first
                assert api.conflicts == 0
                assert len(api.messages_to(PERSON)) == 1
                processes[first[0]].send_signal(signal.SIGKILL)
                await exited(processes[first[0]])
                survivor = 1 - first[0]
                await wait_until(lambda: _polling(logs[survivor]), timeout=20)
                assert (await talk.say("/hilfe")).text.startswith("/start – anmelden")
                assert api.conflicts == 0
            finally:
                for process in processes:
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)
                codes = [await exited(process) for process in processes]
            assert codes[1 - first[0]] == 0
        row = await person(engine)
        assert row is not None and row["status"] == "active"
    finally:
        await http.close()
        await engine.dispose()


async def _polling(log: Path) -> bool:
    return await _logged(log, "telegram bot polling")


async def _logged(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text(errors="replace")


async def _pollers(logs: list[Path], expected: int) -> list[int]:
    """The processes that logged that they poll, when there are ``expected`` of them."""
    polling = [i for i, log in enumerate(logs) if await _polling(log)]
    return polling if len(polling) == expected else []
