"""A staff member's own Telegram chat, proven by a one-time code sent to the bot.

*Mein Konto* shows a random six-digit code, valid ``CODE_LIFETIME`` and once; a new one replaces
the old. Sent to the bot as ``/verbinden 123456`` from a private chat, it makes that chat the
person's verified chat — the only place „Test an mich senden“ posts to. Codes are stored as an
HMAC keyed with ``security.secret_key`` (a bare hash of a six-digit number is undone by trying
all of them). The code space is small, so each chat has ``ATTEMPTS`` tries per
``ATTEMPT_WINDOW``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import SecretStr
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff import throttle
from bzi_broadcast.staff.accounts import User, audit
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import staff_telegram_codes as codes
from bzi_broadcast.store.schema import users

CODE_LIFETIME = timedelta(minutes=10)
ATTEMPTS = 5
ATTEMPT_WINDOW = timedelta(minutes=10)
ATTEMPT_KEY = "verbinden:"  # throttles key prefix, then the chat id


class CodeRefused(BroadcastError):
    """Wrong, expired or used: one answer for all."""

    def __init__(self) -> None:
        super().__init__(
            _(
                "Dieser Code gilt nicht (mehr). Bitte lassen Sie sich im Arbeitsbereich unter "
                "„Mein Konto“ einen neuen anzeigen."
            )
        )


class TooManyAttempts(BroadcastError):
    """The chat has used up its tries for now."""

    def __init__(self) -> None:
        super().__init__(
            _("Zu viele Versuche. Bitte warten Sie zehn Minuten und versuchen Sie es dann erneut.")
        )


@dataclass(frozen=True, kw_only=True)
class LinkedChat:
    chat_id: int
    linked_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class Linked:
    """Whose chat it became (the bot answers in their language)."""

    user_id: int
    name: str
    language: str


async def new_code(engine: AsyncEngine, secret: SecretStr, user: User, ip: str | None) -> str:
    """A fresh code for ``user``, replacing any earlier one; shown once, never stored."""
    for _attempt in range(5):
        code = f"{secrets.randbelow(10**6):06d}"
        now = utcnow()
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    delete(codes).where(or_(codes.c.user_id == user.id, codes.c.expires_at <= now))
                )
                await conn.execute(
                    insert(codes).values(
                        user_id=user.id,
                        code_hash=_digest(secret, code),
                        expires_at=now + CODE_LIFETIME,
                    )
                )
                await audit(conn, user.id, "user.telegram_code", None, ip)
            return code
        except IntegrityError:  # a colleague holds the same code right now: draw again
            continue
    raise BroadcastError(_("Gerade kann kein Code erzeugt werden. Bitte versuchen Sie es erneut."))


async def link(engine: AsyncEngine, secret: SecretStr, code: str, chat_id: int) -> Linked:
    """Make ``chat_id`` (a private chat, checked by the caller) the verified chat of the code's
    owner, and use the code up. ``TooManyAttempts`` or ``CodeRefused`` otherwise."""
    if await throttle.count(engine, ATTEMPT_KEY + str(chat_id), ATTEMPT_WINDOW) > ATTEMPTS:
        raise TooManyAttempts()
    code = code.strip()
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        raise CodeRefused()
    now = utcnow()
    async with engine.begin() as conn:
        owner = await conn.scalar(
            select(codes.c.user_id).where(
                codes.c.code_hash == _digest(secret, code), codes.c.expires_at > now
            )
        )
        used = await conn.execute(
            delete(codes).where(codes.c.user_id == owner, codes.c.expires_at > now)
        )
        if owner is None or used.rowcount != 1:  # unknown, expired, or another process won
            raise CodeRefused()
        await conn.execute(
            update(users)
            .where(users.c.id == owner)
            .values(telegram_chat_id=chat_id, telegram_linked_at=now)
        )
        await audit(conn, owner, "user.telegram_linked", None, None)
        row = (await conn.execute(select(users).where(users.c.id == owner))).one()
    return Linked(user_id=row.id, name=row.name, language=row.language)


async def unlink(engine: AsyncEngine, user: User, ip: str | None) -> None:
    """„Trennen“: no more Telegram tests until the chat is proven again."""
    async with engine.begin() as conn:
        await conn.execute(
            update(users)
            .where(users.c.id == user.id)
            .values(telegram_chat_id=None, telegram_linked_at=None)
        )
        await conn.execute(delete(codes).where(codes.c.user_id == user.id))
        await audit(conn, user.id, "user.telegram_unlinked", None, ip)


async def linked_chat(engine: AsyncEngine, user: User) -> LinkedChat | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(users.c.telegram_chat_id, users.c.telegram_linked_at).where(
                    users.c.id == user.id
                )
            )
        ).first()
    if row is None or row.telegram_chat_id is None:
        return None
    return LinkedChat(chat_id=int(row.telegram_chat_id), linked_at=row.telegram_linked_at)


def _digest(secret: SecretStr, code: str) -> str:
    key = hmac.new(secret.get_secret_value().encode(), b"staff-telegram-code", hashlib.sha256)
    return hmac.new(key.digest(), code.encode(), hashlib.sha256).hexdigest()
