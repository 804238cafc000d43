"""The subscriber bot's data: who started it, their topics and language, and the consent log.

Every change is one transaction with its consent event (see ``consent``): /start is the person's
own opt-in inside Telegram, so it signs up and confirms at once; /stop keeps the row, so a later
/start re-activates it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import DEFAULT_LOCALE
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import subscriber_topics, subscribers
from bzi_broadcast.subscribers.consent import ConsentEvent, record
from bzi_broadcast.subscribers.store import SubscriberStatus

_SEPARATOR = re.compile(r"[-_]")


@dataclass(frozen=True, kw_only=True)
class Person:
    id: int
    language: str
    status: str
    topics: frozenset[str]

    @property
    def active(self) -> bool:
        return self.status == SubscriberStatus.ACTIVE


def payload_topics(payload: str, known: Sequence[str]) -> frozenset[str]:
    """Topic ids from a deep link (``t.me/bot?start=veranstaltungen-projekte``), joined by ``-``
    or ``_``; ids that themselves contain those characters are matched whole, unknown ones skipped.
    """
    payload, found, at = payload.lower(), set(), 0
    longest_first = sorted(known, key=len, reverse=True)
    while at < len(payload):
        match = next(
            (
                topic
                for topic in longest_first
                if payload.startswith(topic, at)
                and payload[at + len(topic) : at + len(topic) + 1] in ("", "-", "_")
            ),
            None,
        )
        if match is not None:
            found.add(match)
            at += len(match) + 1
        else:
            separator = _SEPARATOR.search(payload, at)
            at = separator.end() if separator else len(payload)
    return frozenset(found)


class BotSubscribers:
    """What the bot changes about a person, each change together with its consent event."""

    def __init__(self, engine: AsyncEngine, consent_version: str) -> None:
        self.engine = engine
        self.consent_version = consent_version

    async def find(self, chat_id: int) -> Person | None:
        async with self.engine.connect() as conn:
            return await _person(conn, chat_id)

    async def subscribe(self, chat_id: int, topics: frozenset[str] | None) -> tuple[Person, bool]:
        """Sign up and confirm, or re-activate; ``topics`` (from a deep link) replaces the choice.

        Returns the person and whether they were subscribed already."""
        async with self.engine.begin() as conn:
            person = await _person(conn, chat_id) or await self._insert(conn, chat_id)
            if not person.active:
                await self._activate(conn, person, topics)
            elif topics and topics != person.topics:
                await _write_topics(conn, person.id, topics)
                await self._changed(conn, person.id, {"topics": sorted(topics)})
            return await _found(conn, chat_id), person.active

    async def unsubscribe(self, chat_id: int) -> tuple[Person | None, bool]:
        """Returns the person (if known) and whether they were subscribed until now."""
        async with self.engine.begin() as conn:
            person = await _person(conn, chat_id)
            if person is None or not person.active:
                return person, False
            await _update(conn, person.id, status=str(SubscriberStatus.UNSUBSCRIBED))
            await self._record(conn, person.id, ConsentEvent.UNSUBSCRIBED, {"command": "/stop"})
            return await _found(conn, chat_id), True

    async def toggle_topic(self, chat_id: int, topic: str) -> Person | None:
        async with self.engine.begin() as conn:
            person = await _person(conn, chat_id)
            if person is None:
                return None
            chosen = person.topics ^ {topic}
            await _write_topics(conn, person.id, chosen)
            await self._changed(conn, person.id, {"topics": sorted(chosen)})
            return await _found(conn, chat_id)

    async def set_language(self, chat_id: int, language: str) -> Person | None:
        async with self.engine.begin() as conn:
            person = await _person(conn, chat_id)
            if person is None:
                return None
            if language != person.language:
                await _update(conn, person.id, language=language)
                await self._changed(conn, person.id, {"language": language})
            return await _found(conn, chat_id)

    async def _insert(self, conn: AsyncConnection, chat_id: int) -> Person:
        now = utcnow()
        await conn.execute(
            insert(subscribers).values(
                email=None,
                telegram_chat_id=chat_id,
                language=DEFAULT_LOCALE,
                status=str(SubscriberStatus.PENDING),
                source="bot",
                created_at=now,
                updated_at=now,
            )
        )
        return await _found(conn, chat_id)

    async def _activate(
        self, conn: AsyncConnection, person: Person, topics: frozenset[str] | None
    ) -> None:
        if topics is not None:
            await _write_topics(conn, person.id, topics)
        chosen = sorted(person.topics if topics is None else topics)
        await _update(
            conn,
            person.id,
            status=str(SubscriberStatus.ACTIVE),
            confirmed_at=utcnow(),
            consent_version=self.consent_version,
        )
        await self._record(
            conn, person.id, ConsentEvent.SIGNED_UP, {"command": "/start", "topics": chosen}
        )
        # The person started the bot themself in a private chat: that is the confirmation.
        await self._record(conn, person.id, ConsentEvent.CONFIRMED, {"opt_in": "telegram /start"})

    async def _changed(self, conn: AsyncConnection, person_id: int, detail: dict[str, Any]) -> None:
        await self._record(conn, person_id, ConsentEvent.PREFERENCES_CHANGED, detail)

    async def _record(
        self, conn: AsyncConnection, person_id: int, event: ConsentEvent, detail: dict[str, Any]
    ) -> None:
        await record(
            conn,
            person_id,
            event,
            channel="telegram",
            source="bot",
            consent_version=self.consent_version,
            detail=detail,
        )


async def _person(conn: AsyncConnection, chat_id: int) -> Person | None:
    row = (
        await conn.execute(
            select(subscribers.c.id, subscribers.c.language, subscribers.c.status).where(
                subscribers.c.telegram_chat_id == chat_id
            )
        )
    ).first()
    if row is None:
        return None
    topics = await conn.execute(
        select(subscriber_topics.c.topic).where(subscriber_topics.c.subscriber_id == row.id)
    )
    return Person(
        id=row.id, language=row.language, status=row.status, topics=frozenset(topics.scalars())
    )


async def _found(conn: AsyncConnection, chat_id: int) -> Person:
    person = await _person(conn, chat_id)
    if person is None:  # only if the row went away inside our own transaction
        raise BroadcastError()
    return person


async def _update(conn: AsyncConnection, person_id: int, **values: Any) -> None:
    await conn.execute(
        update(subscribers)
        .where(subscribers.c.id == person_id)
        .values(updated_at=utcnow(), **values)
    )


async def _write_topics(conn: AsyncConnection, person_id: int, topics: frozenset[str]) -> None:
    await conn.execute(
        delete(subscriber_topics).where(subscriber_topics.c.subscriber_id == person_id)
    )
    if topics:
        await conn.execute(
            insert(subscriber_topics),
            [{"subscriber_id": person_id, "topic": topic} for topic in sorted(topics)],
        )
