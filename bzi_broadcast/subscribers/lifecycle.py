"""Email subscriptions: sign-up, double opt-in, one-click unsubscribe, preferences.

Independent of HTTP, so the pages, the CLI and the admin share it. Every change is written in one
transaction with its consent event. Nothing here tells a caller whether an address is known: a
sign-up for an active, suppressed or throttled address ends like any other, only without mail.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.config import Settings
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import subscriber_topics, subscribers, suppressions, throttles
from bzi_broadcast.subscribers.consent import ConsentEvent, record, stored_ip
from bzi_broadcast.subscribers.store import SubscriberStatus, suppression_hash
from bzi_broadcast.tokens import (
    TokenError,
    TokenExpiredError,
    TokenPayload,
    TokenSigner,
    link_subject,
    parse_link_subject,
)

log = logging.getLogger(__name__)

BERLIN = ZoneInfo("Europe/Berlin")
PREFERENCES_TTL = timedelta(days=400)
ConfirmationMail = Callable[[str, str, str, str], Awaitable[None]]  # (to, language, link, name)


class TokenState(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    INVALID = "invalid"
    GONE = "gone"  # well signed, but the person it was made for is no longer here


@dataclass(frozen=True, kw_only=True)
class Link:
    """Whom a link stands for: the id and the person's random key (the token's subject)."""

    subscriber_id: int
    link_key: str


@dataclass(frozen=True, kw_only=True)
class SignUp:
    email: str  # already validated and normalised (see ``web.forms``)
    name: str | None
    language: str
    topics: frozenset[str]
    ip: str | None


@dataclass(frozen=True, kw_only=True)
class Preferences:
    subscriber_id: int
    email: str | None
    language: str
    topics: frozenset[str]
    paused_until: date | None
    status: str


class Subscriptions:
    def __init__(
        self, engine: AsyncEngine, settings: Settings, signer: TokenSigner, mail: ConfirmationMail
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._signer = signer
        self._mail = mail
        self._key = settings.security.secret_key.get_secret_value().encode()

    # --- sign-up and confirmation -------------------------------------------------------------

    async def allow_sign_up(self, ip: str | None) -> bool:
        """The per-IP limit; the only answer a visitor sees that is not the same for everyone."""
        limit = self._settings.subscribers.signups_per_ip_per_hour
        return await self._hit(f"signup-ip:{ip or '-'}", limit, timedelta(hours=1))

    async def sign_up(self, form: SignUp) -> None:
        """Record the sign-up and mail a confirmation link when that is right to do."""
        subs = self._settings.subscribers
        now = utcnow()
        async with self._engine.begin() as conn:
            # a suppressed address may come back, but only through this double opt-in
            suppressed = now if await self._suppressed(conn, form.email) else None
            row = (
                await conn.execute(select(subscribers).where(subscribers.c.email == form.email))
            ).first()
            if row is not None and not suppressed and not _must_confirm(row):
                return  # already confirmed: nothing to do, nothing to tell
            if row is None:
                result = await conn.execute(
                    insert(subscribers).values(
                        email=form.email,
                        name=form.name,
                        language=form.language,
                        status=str(SubscriberStatus.PENDING),
                        source="form",
                        created_at=now,
                        updated_at=now,
                        consent_version=subs.consent_version,
                        suppressed_at=suppressed,
                    )
                )
                subscriber_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            else:
                subscriber_id = row.id
                await conn.execute(
                    update(subscribers)
                    .where(subscribers.c.id == subscriber_id)
                    .values(
                        name=form.name,
                        language=form.language,
                        status=str(SubscriberStatus.PENDING),
                        consent_version=subs.consent_version,
                        updated_at=now,
                        suppressed_at=row.suppressed_at or suppressed,
                    )
                )
            await _write_topics(conn, subscriber_id, form.topics)
            text = subs.consent_text_en if form.language == "en" else subs.consent_text_de
            await record(
                conn,
                subscriber_id,
                ConsentEvent.SIGNED_UP,
                channel="email",
                source="form",
                ip=stored_ip(form.ip, subs.ip_logging),
                consent_version=subs.consent_version,
                detail={
                    "consent_text": text,
                    "language": form.language,
                    "topics": sorted(form.topics),
                },
            )
        await self.send_confirmation(subscriber_id)

    async def send_confirmation(self, subscriber_id: int) -> bool:
        """Mail the confirmation link (at most ``confirmations_per_address_per_day``)."""
        subs = self._settings.subscribers
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(subscribers).where(subscribers.c.id == subscriber_id))
            ).first()
        if row is None or row.email is None or row.status != str(SubscriberStatus.PENDING):
            return False
        limit = subs.confirmations_per_address_per_day
        if not await self._hit(f"confirm-mail:{row.id}", limit, timedelta(days=1)):
            log.info("confirmation mail throttled subscriber_id=%s", row.id)
            return False
        token = self._signer.sign(
            purpose="confirm",
            subject=link_subject(row.id, row.link_key),
            ttl=timedelta(hours=subs.confirm_hours),
        )
        link = f"{self._settings.email.public_url.rstrip('/')}/bestaetigen/{token}"
        await self._mail(row.email, row.language, link, row.name or "")
        async with self._engine.begin() as conn:
            now = utcnow()
            await conn.execute(
                update(subscribers)
                .where(subscribers.c.id == row.id)
                .values(confirmation_sent_at=now, updated_at=now)
            )
            await record(conn, row.id, ConsentEvent.CONFIRMATION_SENT, channel="email", at=now)
        return True

    async def send_pending_confirmations(self, batch: int = 100) -> int:
        """Imported people who were not mailed yet get their link (the service calls this)."""
        async with self._engine.connect() as conn:
            ids = (
                await conn.execute(
                    select(subscribers.c.id)
                    .where(
                        subscribers.c.status == str(SubscriberStatus.PENDING),
                        subscribers.c.confirmation_sent_at.is_(None),
                        subscribers.c.email.is_not(None),
                        # a form sign-up mails its own link; racing it would send two
                        subscribers.c.source == "import",
                    )
                    .order_by(subscribers.c.id)
                    .limit(batch)
                )
            ).scalars()
            pending = list(ids)
        sent = 0
        for subscriber_id in pending:
            sent += await self.send_confirmation(subscriber_id)
        return sent

    async def resolve(self, token: str, purpose: str) -> tuple[TokenState, Link | None]:
        """The person a link stands for; GONE when they were erased (whoever has the id now).

        A link from before the keys (no key in it) still works until it expires, but only for
        a person who existed when it was made."""
        try:
            payload = self._signer.verify(token, purpose=purpose)
            subscriber_id, key = parse_link_subject(payload.subject)
        except TokenExpiredError:
            return TokenState.EXPIRED, None
        except TokenError:
            return TokenState.INVALID, None
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(subscribers.c.link_key, subscribers.c.created_at).where(
                        subscribers.c.id == subscriber_id
                    )
                )
            ).first()
        fits = row is not None and (
            hmac.compare_digest(row.link_key.encode(), key.encode())
            if key
            else row.created_at <= self._issued(payload) + timedelta(seconds=1)
        )
        if row is None or not fits:
            return TokenState.GONE, None
        return TokenState.VALID, Link(subscriber_id=subscriber_id, link_key=row.link_key)

    def _issued(self, payload: TokenPayload) -> datetime:
        ttl = (
            timedelta(hours=self._settings.subscribers.confirm_hours)
            if payload.purpose == "confirm"
            else PREFERENCES_TTL  # unsubscribe links live as long
        )
        return datetime.fromtimestamp(payload.expires_at, UTC) - ttl

    async def confirm(self, subscriber_id: int, ip: str | None) -> bool:
        """True when this confirmed the subscription; False when it was confirmed before.

        The confirmation is the fresh consent that lifts a suppression of the address."""
        now = utcnow()
        async with self._engine.begin() as conn:
            email = (
                await conn.execute(
                    select(subscribers.c.email).where(subscribers.c.id == subscriber_id)
                )
            ).scalar()
            result = await conn.execute(
                update(subscribers)
                .where(
                    subscribers.c.id == subscriber_id,
                    subscribers.c.status == str(SubscriberStatus.PENDING),
                )
                .values(
                    status=str(SubscriberStatus.ACTIVE),
                    confirmed_at=now,
                    updated_at=now,
                    suppressed_at=None,
                )
            )
            if not result.rowcount:
                return False
            if email is not None:
                await conn.execute(
                    delete(suppressions).where(
                        suppressions.c.email_hash == suppression_hash(email, self._key)
                    )
                )
            await record(
                conn,
                subscriber_id,
                ConsentEvent.CONFIRMED,
                channel="email",
                ip=stored_ip(ip, self._settings.subscribers.ip_logging),
                consent_version=self._settings.subscribers.consent_version,
                at=now,
            )
        return True

    # --- unsubscribe and preferences ----------------------------------------------------------

    async def unsubscribe(self, subscriber_id: int, method: str) -> None:
        """Idempotent; ``method`` is "one-click" (RFC 8058) or "page"."""
        now = utcnow()
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(subscribers)
                .where(
                    subscribers.c.id == subscriber_id,
                    subscribers.c.status != str(SubscriberStatus.UNSUBSCRIBED),
                )
                .values(status=str(SubscriberStatus.UNSUBSCRIBED), updated_at=now)
            )
            if result.rowcount:
                await record(
                    conn,
                    subscriber_id,
                    ConsentEvent.UNSUBSCRIBED,
                    channel="email",
                    detail={"method": method},
                    at=now,
                )

    async def preferences(self, subscriber_id: int) -> Preferences | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(subscribers).where(subscribers.c.id == subscriber_id))
            ).first()
            if row is None:
                return None
            topics = (
                await conn.execute(
                    select(subscriber_topics.c.topic).where(
                        subscriber_topics.c.subscriber_id == subscriber_id
                    )
                )
            ).scalars()
            return Preferences(
                subscriber_id=row.id,
                email=row.email,
                language=row.language,
                topics=frozenset(topics),
                paused_until=(
                    row.paused_until.astimezone(BERLIN).date() if row.paused_until else None
                ),
                status=row.status,
            )

    async def update_preferences(
        self,
        subscriber_id: int,
        *,
        language: str,
        topics: frozenset[str],
        paused_until: date | None,
        resubscribe: bool = False,
    ) -> bool:
        """True when a resubscription waits for a confirmation: a suppressed (bounced,
        complained, erased) address comes back only through a fresh double opt-in; the caller
        then mails the link (``send_confirmation``)."""
        pause = datetime.combine(paused_until, time.min, tzinfo=BERLIN) if paused_until else None
        now = utcnow()
        values: dict[str, Any] = {"language": language, "paused_until": pause, "updated_at": now}
        confirm = False
        async with self._engine.begin() as conn:
            if resubscribe:
                confirm = await self._held_back(conn, subscriber_id)
                status = SubscriberStatus.PENDING if confirm else SubscriberStatus.ACTIVE
                values["status"] = str(status)
                if confirm:
                    values["suppressed_at"] = func.coalesce(subscribers.c.suppressed_at, now)
            await conn.execute(
                update(subscribers).where(subscribers.c.id == subscriber_id).values(**values)
            )
            await _write_topics(conn, subscriber_id, topics)
            await record(
                conn,
                subscriber_id,
                ConsentEvent.PREFERENCES_CHANGED,
                channel="email",
                detail={
                    "language": language,
                    "topics": sorted(topics),
                    "paused_until": paused_until.isoformat() if paused_until else None,
                    **({"resubscribed": True} if resubscribe else {}),
                    **({"confirmation_needed": True} if confirm else {}),
                },
            )
        return confirm

    def preferences_link(self, link: Link) -> str:
        token = self._signer.sign(
            purpose="preferences",
            subject=link_subject(link.subscriber_id, link.link_key),
            ttl=PREFERENCES_TTL,
        )
        return f"{self._settings.email.public_url.rstrip('/')}/einstellungen/{token}"

    # --- helpers -----------------------------------------------------------------------------

    async def _held_back(self, conn: AsyncConnection, subscriber_id: int) -> bool:
        """Whether the person's address is suppressed (marked, listed, or bounced)."""
        row = (
            await conn.execute(select(subscribers).where(subscribers.c.id == subscriber_id))
        ).first()
        if row is None or row.email is None:
            return False
        if row.suppressed_at is not None or row.status == str(SubscriberStatus.BOUNCED):
            return True
        return await self._suppressed(conn, row.email)

    async def _suppressed(self, conn: AsyncConnection, email: str) -> bool:
        digest = suppression_hash(email, self._key)
        found = await conn.execute(
            select(suppressions.c.email_hash).where(suppressions.c.email_hash == digest)
        )
        return found.first() is not None

    async def _hit(self, key: str, limit: int, window: timedelta) -> bool:
        """Count one use of ``key`` in a fixed window shared by every process; False: over.

        The count goes up in one conditional UPDATE, atomic on SQLite and PostgreSQL alike; a
        new window is an INSERT that only one of several racing processes can win."""
        for _attempt in range(3):
            now = utcnow()
            async with self._engine.begin() as conn:
                counted = await conn.execute(
                    update(throttles)
                    .where(
                        throttles.c.key == key,
                        throttles.c.reset_at > now,
                        throttles.c.count < limit,
                    )
                    .values(count=throttles.c.count + 1)
                )
                if counted.rowcount:
                    return True
                current = await conn.execute(
                    select(throttles.c.key).where(
                        throttles.c.key == key, throttles.c.reset_at > now
                    )
                )
                if current.first() is not None:
                    return False  # the window is full
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(
                        delete(throttles).where(throttles.c.key == key, throttles.c.reset_at <= now)
                    )
                    await conn.execute(
                        insert(throttles).values(key=key, count=1, reset_at=now + window)
                    )
                return True
            except IntegrityError:  # another process opened the window first: count in it
                continue
        return False


def _must_confirm(row: Any) -> bool:
    """A row that must confirm before it receives again (see ``Subscriptions.sign_up``)."""
    return row.status != str(SubscriberStatus.ACTIVE) or row.suppressed_at is not None


async def _write_topics(
    conn: AsyncConnection, subscriber_id: int, topics: Sequence[str] | frozenset[str]
) -> None:
    await conn.execute(
        delete(subscriber_topics).where(subscriber_topics.c.subscriber_id == subscriber_id)
    )
    if topics:
        await conn.execute(
            insert(subscriber_topics),
            [{"subscriber_id": subscriber_id, "topic": t} for t in sorted(topics)],
        )
