"""A pool of reused SMTP connections, and SMTP errors translated into ours.

aiosmtplib opens each connection (EHLO/HELO, STARTTLS or TLS, AUTH, timeouts); the mail
transactions run on our own protocol (``smtp_wire``), pipelined when the server offers PIPELINING.
Refusals before DATA and replies to DATA are definite (4xx transient, 5xx permanent); a connection
lost or timed out *during* DATA leaves the outcome unknown, so the row is retried (at least once,
never lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass, field
from typing import Literal, cast

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import normalize_message_line_endings

from bzi_broadcast.channels.smtp_wire import Session
from bzi_broadcast.errors import ChannelAuthError, TransientError

Security = Literal["none", "starttls", "tls"]
# With PIPELINING a connection carries two transactions at once: one waits for the reply to its
# content while the next one's envelope is on its way (bench/RESULTS.md).
PIPELINE_DEPTH = 2
QUIT_TIMEOUT = 2.0
# Addresses whose envelope form is plainly "<address>": parseaddr would give them back unchanged
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)


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
    """Up to ``pool_size`` open connections; a send takes the least busy one."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server
        self._sessions: list[Session] = []
        self._opening = 0
        self._slots = asyncio.Semaphore(server.pool_size * PIPELINE_DEPTH)
        self._closed = False
        self._context: ssl.SSLContext | None = None

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        """Hand one message to the server; its reply to the content is the receipt."""
        return await self.send_data(sender, recipient, data_bytes(message))

    async def send_data(self, sender: str, recipient: str, content: bytes) -> str:
        """``send`` for a message already in its DATA form (``data_bytes``)."""
        envelope = envelope_address(sender), envelope_address(recipient)
        async with self._slots:
            session = await self._checkout()
            try:
                return await session.transaction(*envelope, content)
            finally:
                session.in_flight -= 1
                if self._closed and not session.in_flight:
                    session.close()

    async def _checkout(self) -> Session:
        """An idle connection, a new one while the pool has room, else the least busy one."""
        self._sessions = [s for s in self._sessions if s.usable]
        session = min(self._sessions, key=lambda s: s.in_flight, default=None)
        if session is None or (
            session.in_flight and len(self._sessions) + self._opening < self.server.pool_size
        ):
            self._opening += 1
            try:
                session = await self._connect()
            finally:
                self._opening -= 1
            self._sessions.append(session)
        session.in_flight += 1
        return session

    async def _connect(self) -> Session:
        s = self.server
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            tls_context=self._tls_context(),
        )
        try:
            await client.connect()
            if s.username and s.password:
                await client.login(s.username, s.password)
            await _greet(client)
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            raise ChannelAuthError(f"SMTP {exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise TransientError(f"SMTP {s.host}:{s.port} nicht erreichbar: {exc}") from exc
        # From here on the transport is ours: aiosmtplib's protocol is left behind.
        transport = cast(asyncio.WriteTransport, client.transport)
        return Session(
            transport, pipelining=client.supports_extension("pipelining"), timeout=s.timeout
        )

    def _tls_context(self) -> ssl.SSLContext | None:
        """One context for every connection, only when TLS is used: loading the system's
        certificate authorities costs tens of milliseconds and a few MB each time."""
        if self.server.security == "none":
            return None
        if self._context is None:
            self._context = ssl.create_default_context()
            if not self.server.verify_tls:
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
        return self._context

    async def check(self) -> None:
        """Connect (and log in) once; raise ``TransientError`` or ``ChannelAuthError`` if not."""
        self._sessions.append(await self._connect())

    async def aclose(self) -> None:
        self._closed = True
        sessions, self._sessions = self._sessions, []
        for session in sessions:  # busy ones close when their transaction ends
            if not session.in_flight:
                with contextlib.suppress(Exception):
                    await session.quit(QUIT_TIMEOUT)


async def _greet(client: aiosmtplib.SMTP) -> None:
    """EHLO (HELO if refused) unless connecting or logging in has done it, as aiosmtplib would
    before its first MAIL: the extensions (PIPELINING) are known from here on."""
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not client.is_connected:
                raise
            await client.helo()


def envelope_address(address: str) -> bytes:
    """``<address>`` for MAIL FROM / RCPT TO, exactly as aiosmtplib quotes it (ASCII, or
    ``UnicodeEncodeError``); the common plain address without parsing it."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return b"<" + address.encode("ascii") + b">"
    return quote_address(address).encode("ascii")


def data_bytes(message: bytes) -> bytes:
    """The message as aiosmtplib sends it after DATA: CRLF line endings, a final CRLF, lines
    starting with "." doubled (RFC 5321 4.5.2), then the lone ".". Our messages already have
    CRLF everywhere, so the regular expressions run only for others."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = normalize_message_line_endings(message)
    elif not message.endswith(b"\r\n"):
        message += b"\r\n"
    stuffed = message.replace(b"\n.", b"\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"
