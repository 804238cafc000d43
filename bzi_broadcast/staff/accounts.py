"""Staff accounts: argon2id password hashes, roles, lockout with backoff, sessions, audit log.

Roles are ranked: an editor drafts; a publisher also approves, schedules and sends; an admin also
manages users and settings. A failed login counts against the account; after
``security.login_attempts`` in a row it is locked for ``lockout_minutes``, doubling with each
further lockout up to ``lockout_max_minutes`` (an admin lifts it sooner). Failed logins also count
against the client's network (``login_attempts_per_ip`` per 15 minutes). Unknown, wrong and
locked answer alike after the same argon2 work. Session ids are random, sent only in the cookie,
and stored as their SHA-256.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.config import SecuritySettings
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff import throttle
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import api_tokens, audit_log, sessions, users

MIN_PASSWORD = 12
_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters


@functools.cache
def _dummy() -> str:
    """Verified instead of a real hash for unknown or locked accounts, to spend the same time; its
    password is random, and even a match is refused. Made at the first login of any kind, not at
    import: argon2id takes 64 MiB while hashing, which a process that only sends never needs."""
    return PasswordHasher().hash(secrets.token_urlsafe(32))


IP_KEY = "login:"  # throttles key prefix, then the client network
IP_WINDOW = timedelta(minutes=15)


class Role(StrEnum):
    EDITOR = "editor"
    PUBLISHER = "publisher"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = [Role.EDITOR, Role.PUBLISHER, Role.ADMIN]
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True, kw_only=True)
class User:
    id: int
    email: str
    name: str
    role: Role
    language: str

    def __repr__(self) -> str:
        return f"User(id={self.id}, role={self.role})"


class LoginRefused(BroadcastError):
    """Unknown address, wrong password or a locked account: one answer for all three, so the
    answer tells nobody which addresses have accounts."""

    retry_after: int | None = None

    def __init__(self) -> None:
        super().__init__(
            _(
                "Anmeldung fehlgeschlagen: E-Mail-Adresse oder Passwort stimmen nicht. Nach "
                "mehreren Fehlversuchen bleibt die Anmeldung einige Minuten lang gesperrt."
            )
        )


class LoginThrottled(LoginRefused):
    """Too many failed logins from this client's network; it may try again in ``retry_after``
    seconds (this says nothing about any account)."""

    def __init__(self, retry_after: int) -> None:
        BroadcastError.__init__(
            self,
            _(
                "Zu viele Fehlversuche von Ihrem Anschluss. Bitte versuchen Sie es in {minutes} "
                "Minuten erneut."
            ).format(minutes=max(1, -(-retry_after // 60))),
        )
        self.retry_after = retry_after


async def add_user(
    engine: AsyncEngine,
    *,
    email: str,
    name: str,
    role: Role,
    password: str,
    language: str = "de",
    actor: User | None = None,
) -> int:
    if len(password) < MIN_PASSWORD:
        raise BroadcastError(
            _("Das Passwort muss mindestens {n} Zeichen lang sein.").format(n=MIN_PASSWORD)
        )
    try:
        async with engine.begin() as conn:
            result = await conn.execute(
                insert(users).values(
                    email=email.strip().lower(),
                    name=name.strip(),
                    role=str(role),
                    password_hash=_HASHER.hash(password),
                    language=language,
                    failed_logins=0,
                    lockouts=0,
                    created_at=utcnow(),
                )
            )
            user_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            detail = {"user_id": user_id, "role": str(role)}
            await audit(conn, actor.id if actor else None, "user.added", detail, None)
            return user_id
    except IntegrityError:
        raise BroadcastError(
            _("Es gibt schon ein Konto mit der Adresse {email}.").format(email=email)
        ) from None


async def authenticate(
    engine: AsyncEngine, security: SecuritySettings, email: str, password: str, ip: str | None
) -> User:
    """The user, or ``LoginRefused`` after the failure is counted and audited.

    Unknown address, wrong password and locked account answer alike after the same work: one
    argon2 verification, against a dummy hash unless the account is open. A client network over
    ``login_attempts_per_ip`` failures is refused before any account is looked at, so its guesses
    neither cost hashing time nor lock anyone out."""
    client = throttle.network(ip)
    if client is not None:
        await _refuse_busy_network(engine, security, client, ip)
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(users).where(users.c.email == email.strip().lower()))
        ).first()
    is_open = row is not None and not _locked(row, utcnow())
    dummy = await asyncio.to_thread(_dummy)  # before the branch: every first login pays for it
    hashed = row.password_hash if row is not None and is_open else dummy
    if await asyncio.to_thread(_verify, hashed, password) and is_open:
        return await _succeeded(engine, row, password, ip)
    if client is not None:
        await throttle.count(engine, IP_KEY + client, IP_WINDOW)
    async with engine.begin() as conn:
        await _failed(conn, security, row, ip)
    raise LoginRefused()


async def _refuse_busy_network(
    engine: AsyncEngine, security: SecuritySettings, client: str, ip: str | None
) -> None:
    window = await throttle.current(engine, IP_KEY + client)
    if window is not None and window.count >= security.login_attempts_per_ip:
        async with engine.begin() as conn:
            await audit(conn, None, "login.throttled", None, ip)
        raise LoginThrottled(window.seconds_left(utcnow()))


async def _succeeded(engine: AsyncEngine, row: Any, password: str, ip: str | None) -> User:
    values: dict[str, Any] = {"failed_logins": 0, "lockouts": 0, "locked_until": None}
    if _HASHER.check_needs_rehash(row.password_hash):
        values["password_hash"] = await asyncio.to_thread(_HASHER.hash, password)
    async with engine.begin() as conn:
        await conn.execute(update(users).where(users.c.id == row.id).values(**values))
        await audit(conn, row.id, "login", None, ip)
    return _user(row)


async def _failed(conn: Any, security: SecuritySettings, seen: Any, ip: str | None) -> None:
    """Count a wrong password against the account (unless it is locked: waiting out a lock is
    not prolonged by more guesses); the lock doubles with every lockout up to the cap."""
    row = None
    if seen is not None:
        query = select(users).where(users.c.id == seen.id).with_for_update()
        row = (await conn.execute(query)).first()
    if row is None:
        await audit(conn, None, "login.failed", {"reason": "unknown"}, ip)
        return
    now = utcnow()
    if _locked(row, now):
        await audit(conn, row.id, "login.locked", None, ip)
        return
    values: dict[str, Any] = {"failed_logins": row.failed_logins + 1}
    if values["failed_logins"] >= security.login_attempts:
        values = {
            "failed_logins": 0,
            "lockouts": row.lockouts + 1,
            "locked_until": now + lockout(security, row.lockouts),
        }
    await conn.execute(update(users).where(users.c.id == row.id).values(**values))
    await audit(conn, row.id, "login.failed", {"reason": "password"}, ip)


def lockout(security: SecuritySettings, earlier: int) -> timedelta:
    """How long the lockout after ``earlier`` ones lasts: doubling, at most the cap."""
    minutes = security.lockout_minutes * 2 ** min(earlier, 16)
    return timedelta(minutes=min(minutes, security.lockout_max_minutes))


def _locked(row: Any, now: datetime) -> bool:
    return row.locked_until is not None and bool(row.locked_until > now)


async def start_session(engine: AsyncEngine, user: User, hours: int) -> str:
    """A fresh random id for every login (never one the browser brought along)."""
    raw = secrets.token_urlsafe(32)
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(delete(sessions).where(sessions.c.expires_at < now))
        await conn.execute(
            insert(sessions).values(
                id_hash=_digest(raw),
                user_id=user.id,
                created_at=now,
                expires_at=now + timedelta(hours=hours),
            )
        )
    return raw


async def session_user(engine: AsyncEngine, raw: str | None) -> User | None:
    if not raw:
        return None
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(users)
                .join(sessions, sessions.c.user_id == users.c.id)
                .where(sessions.c.id_hash == _digest(raw), sessions.c.expires_at > utcnow())
            )
        ).first()
    return _user(row) if row is not None else None


async def end_session(engine: AsyncEngine, raw: str | None, ip: str | None) -> None:
    if not raw:
        return
    async with engine.begin() as conn:
        row = (
            await conn.execute(select(sessions.c.user_id).where(sessions.c.id_hash == _digest(raw)))
        ).first()
        await conn.execute(delete(sessions).where(sessions.c.id_hash == _digest(raw)))
        if row is not None:
            await audit(conn, row.user_id, "logout", None, ip)


API_TOKEN_PREFIX = "bzi_"  # noqa: S105 - a prefix, not a secret


async def create_api_token(engine: AsyncEngine, user: User, name: str) -> str:
    """A new bearer token for ``user``; shown once, stored as its SHA-256."""
    raw = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with engine.begin() as conn:
        await conn.execute(
            insert(api_tokens).values(
                user_id=user.id,
                name=name.strip()[:100],
                token_hash=_digest(raw),
                created_at=utcnow(),
            )
        )
        await audit(conn, user.id, "api_token.created", {"name": name.strip()[:100]}, None)
    return raw


async def token_user(engine: AsyncEngine, raw: str | None) -> User | None:
    """The user a bearer token belongs to, unless it is unknown or revoked."""
    if not raw or not raw.startswith(API_TOKEN_PREFIX):
        return None
    digest = _digest(raw)
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(users)
                .join(api_tokens, api_tokens.c.user_id == users.c.id)
                .where(api_tokens.c.token_hash == digest, api_tokens.c.revoked_at.is_(None))
            )
        ).first()
        if row is not None:
            await conn.execute(
                update(api_tokens)
                .where(api_tokens.c.token_hash == digest)
                .values(last_used_at=utcnow())
            )
    return _user(row) if row is not None else None


async def user_by_email(engine: AsyncEngine, email: str) -> User | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(users).where(users.c.email == email.strip().lower()))
        ).first()
    return _user(row) if row is not None else None


async def audit(
    conn: Any, user_id: int | None, action: str, detail: dict[str, Any] | None, ip: str | None
) -> None:
    """One line in the audit log, written in the caller's transaction."""
    await conn.execute(
        insert(audit_log).values(
            at=utcnow(),
            user_id=user_id,
            action=action,
            detail=json.dumps(detail, ensure_ascii=False) if detail else None,
            ip=ip,
        )
    )


def _verify(hashed: str, password: str) -> bool:
    try:
        return _HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _user(row: Any) -> User:
    return User(
        id=row.id, email=row.email, name=row.name, role=Role(row.role), language=row.language
    )


async def change_user(
    engine: AsyncEngine,
    actor: User,
    user_id: int,
    *,
    role: Role | None,
    unlock: bool,
    ip: str | None = None,
) -> None:
    """An admin sets a colleague's role or lifts a lockout; nobody demotes themselves (so the
    last admin cannot lock everyone out of user management)."""
    if role is not None and user_id == actor.id and role != actor.role:
        raise BroadcastError(
            _("Die eigene Rolle kann nur eine andere Person mit der Rolle Administration ändern.")
        )
    values: dict[str, Any] = {}
    if role is not None:
        values["role"] = str(role)
    if unlock:
        values |= {"failed_logins": 0, "lockouts": 0, "locked_until": None}
    if not values:
        return
    async with engine.begin() as conn:
        changed = await conn.execute(update(users).where(users.c.id == user_id).values(**values))
        if changed.rowcount != 1:
            raise BroadcastError(_("Dieses Konto gibt es nicht."))
        detail = {"user_id": user_id, "role": values.get("role"), "unlocked": unlock}
        await audit(conn, actor.id, "user.changed", detail, ip)


async def remove_user(
    engine: AsyncEngine, actor: User, user_id: int, ip: str | None = None
) -> None:
    """Delete a colleague's account with its sessions and API tokens; the audit log keeps the
    actions (without the name)."""
    if user_id == actor.id:
        raise BroadcastError(
            _("Das eigene Konto kann nur eine andere Person mit der Rolle Administration löschen.")
        )
    async with engine.begin() as conn:
        await conn.execute(delete(sessions).where(sessions.c.user_id == user_id))
        await conn.execute(delete(api_tokens).where(api_tokens.c.user_id == user_id))
        removed = await conn.execute(delete(users).where(users.c.id == user_id))
        if removed.rowcount != 1:
            raise BroadcastError(_("Dieses Konto gibt es nicht."))
        await audit(conn, actor.id, "user.removed", {"user_id": user_id}, ip)


async def change_password(
    engine: AsyncEngine,
    user: User,
    current: str,
    new: str,
    *,
    keep_session: str | None,
    ip: str | None = None,
) -> None:
    """Everyone sets their own password, proving the current one; other sessions end."""
    if len(new) < MIN_PASSWORD:
        raise BroadcastError(
            _("Das Passwort muss mindestens {n} Zeichen lang sein.").format(n=MIN_PASSWORD)
        )
    async with engine.begin() as conn:
        row = (await conn.execute(select(users).where(users.c.id == user.id))).one()
        if not _verify(row.password_hash, current):
            await audit(conn, user.id, "password.refused", None, ip)
            raise BroadcastError(_("Das bisherige Passwort stimmt nicht."))
        await conn.execute(
            update(users).where(users.c.id == user.id).values(password_hash=_HASHER.hash(new))
        )
        await conn.execute(
            delete(sessions).where(
                sessions.c.user_id == user.id, sessions.c.id_hash != _digest(keep_session or "")
            )
        )
        await audit(conn, user.id, "password.changed", None, ip)
