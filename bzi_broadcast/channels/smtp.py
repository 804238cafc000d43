"""A pool of reused SMTP connections (aiosmtplib), and SMTP errors translated into ours.

One transaction is MAIL, RCPT, DATA on a pooled connection. Refusals before DATA and replies to
DATA are definite (4xx transient, 5xx permanent); a connection lost or timed out *during* DATA
leaves the outcome unknown, so the row is retried (at least once, never lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib

from bzi_broadcast.errors import (
    ChannelAuthError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)

Security = Literal["none", "starttls", "tls"]
# Replies to RCPT that say the mailbox does not exist: a hard bounce, the address is suppressed.
HARD_BOUNCE_CODES = frozenset({550, 551, 553})


@dataclass(frozen=True, kw_only=True)
class SmtpServer:
    host: str = "127.0.0.1"
    port: int = 25
    security: Security = "none"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    pool_size: int = 4
    verify_tls: bool = True

    def __repr__(self) -> str:
        secret = "***" if self.password else None
        return (
            f"SmtpServer(host={self.host!r}, port={self.port}, security={self.security!r}, "
            f"username={self.username!r}, password={secret!r}, pool_size={self.pool_size})"
        )


class SmtpPool:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(server.pool_size)
        self._closed = False

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        """Hand one message to the server; its reply to DATA is the receipt."""
        async with self._slots:
            connection = await self._checkout()
            try:
                reply = await _transaction(connection, sender, recipient, message)
            except (PermanentError, TransientError) as exc:
                await self._checkin(connection, reusable=not isinstance(exc, UnknownOutcomeError))
                raise
            await self._checkin(connection, reusable=True)
            return reply

    async def _checkout(self) -> aiosmtplib.SMTP:
        while self._idle:
            connection = self._idle.pop()
            if connection.is_connected:
                return connection
        return await self._connect()

    async def _checkin(self, connection: aiosmtplib.SMTP, *, reusable: bool) -> None:
        if reusable and connection.is_connected and not self._closed:
            self._idle.append(connection)
            return
        with contextlib.suppress(Exception):
            connection.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.server
        context = ssl.create_default_context()
        if not s.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        connection = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            tls_context=context,
        )
        try:
            await connection.connect()
            if s.username and s.password:
                await connection.login(s.username, s.password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise ChannelAuthError(f"SMTP {exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientError(f"SMTP {s.host}:{s.port} nicht erreichbar: {exc}") from exc
        return connection

    async def check(self) -> None:
        """Connect (and log in) once; raise ``TransientError`` or ``ChannelAuthError`` if not."""
        connection = await self._connect()
        await self._checkin(connection, reusable=True)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:  # a polite QUIT, but never let a stuck server hold up shutdown
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.quit(), 2)
            connection.close()


async def _transaction(
    connection: aiosmtplib.SMTP, sender: str, recipient: str, message: bytes
) -> str:
    try:
        await connection.mail(sender)
        await connection.rcpt(recipient)
    except aiosmtplib.SMTPResponseException as exc:
        with contextlib.suppress(aiosmtplib.SMTPException):
            await connection.rset()
        refused = isinstance(exc, aiosmtplib.SMTPRecipientRefused)
        raise _by_code(exc, refused_recipient=refused) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise TransientError(f"SMTP-Verbindung verloren: {exc}") from exc
    try:
        response = await connection.data(message)
    except aiosmtplib.SMTPResponseException as exc:
        raise _by_code(exc, refused_recipient=False) from exc
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise UnknownOutcomeError(f"Verbindung während DATA verloren: {exc}") from exc
    return response.message


def _by_code(
    exc: aiosmtplib.SMTPResponseException, *, refused_recipient: bool
) -> TransientError | PermanentError:
    text = f"SMTP {exc.code} {exc.message}"[:500]
    if 400 <= exc.code < 500:
        return TransientError(text)
    return PermanentError(
        text, suppress_recipient=refused_recipient and exc.code in HARD_BOUNCE_CODES
    )
