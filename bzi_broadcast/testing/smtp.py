"""An SMTP capture server (aiosmtpd) that can misbehave on purpose.

Runs on the caller's event loop (tests) or on its own (``python -m bzi_broadcast.testing.smtp
--port 1025`` for the demo). Faults are chosen per recipient by a ``FaultPlan``: temporary (4xx)
or permanent (5xx) refusals, connections dropped after DATA arrived but before the reply, and
slow replies. A dropped message is *not* kept: the client cannot know, and must send it again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True, kw_only=True)
class Received:
    sender: str
    recipient: str
    data: bytes
    at: datetime

    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass(frozen=True, kw_only=True)
class Fault:
    """What to do to one recipient: refuse ``times`` attempts at ``stage`` with ``code``."""

    stage: str  # "rcpt", "data" or "drop" (close the connection after DATA, no reply)
    code: int = 451
    times: int = 1  # attempts affected; a large number makes it permanent
    delay: float = 0.0


@dataclass(kw_only=True)
class FaultPlan:
    choose: Callable[[str], Fault | None] = lambda _recipient: None
    delay: float = 0.0  # added to every DATA reply (a slow server)
    attempts: Counter[str] = field(default_factory=Counter)

    def fault_for(self, recipient: str, stage: str) -> Fault | None:
        fault = self.choose(recipient)
        if fault is None or fault.stage != stage:
            return None
        self.attempts[f"{stage}:{recipient}"] += 1
        return fault if self.attempts[f"{stage}:{recipient}"] <= fault.times else None


class CaptureHandler:
    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.plan = plan or FaultPlan()
        self.received: list[Received] = []
        self.changed = asyncio.Condition()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        fault = self.plan.fault_for(address, "rcpt")
        if fault:
            return _reply(fault.code, "recipient refused (injected)")
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        recipient = envelope.rcpt_tos[0] if envelope.rcpt_tos else ""
        if self.plan.delay:
            await asyncio.sleep(self.plan.delay)
        if self.plan.fault_for(recipient, "drop"):
            transport = server.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            return "421 dropped (injected)"
        fault = self.plan.fault_for(recipient, "data")
        if fault:
            return _reply(fault.code, "message refused (injected)")
        data = envelope.original_content or b""
        async with self.changed:
            for rcpt in envelope.rcpt_tos:
                self.received.append(
                    Received(
                        sender=str(envelope.mail_from),
                        recipient=rcpt,
                        data=data,
                        at=datetime.now(UTC),
                    )
                )
            self.changed.notify_all()
        return f"250 2.0.0 OK queued as {len(self.received)}"

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived; TimeoutError otherwise."""
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: len(self.received) >= count)
        return list(self.received)


def _reply(code: int, text: str) -> str:
    enhanced = "4.0.0" if code < 500 else "5.1.1" if code == 550 else "5.0.0"
    return f"{code} {enhanced} {text}"


class SmtpCapture:
    """The server itself: ``async with SmtpCapture() as smtp: ... smtp.port ...``.

    ``tls`` is a server context: with ``implicit_tls`` the socket speaks TLS from the start
    (port 465 style), otherwise STARTTLS is offered and required. ``credentials`` requires AUTH.
    """

    def __init__(
        self,
        plan: FaultPlan | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.handler = CaptureHandler(plan)
        self.host = host
        self.port = port
        self._tls = tls
        self._implicit_tls = implicit_tls
        self._credentials = credentials
        self._server: asyncio.Server | None = None

    async def start(self) -> SmtpCapture:
        loop = asyncio.get_running_loop()
        context = self._tls if self._implicit_tls else None
        self._server = await loop.create_server(self._protocol, self.host, self.port, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _protocol(self) -> SMTP:
        starttls = self._tls if self._tls and not self._implicit_tls else None
        return SMTP(
            self.handler,
            hostname="capture.local",
            enable_SMTPUTF8=True,
            data_size_limit=10 * 1024 * 1024,
            tls_context=starttls,
            require_starttls=starttls is not None,
            authenticator=self._authenticate if self._credentials else None,
            auth_required=self._credentials is not None,
            auth_require_tls=starttls is not None,  # implicit TLS is encrypted from the start
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        valid = isinstance(data, LoginPassword) and self._credentials == (
            data.login.decode(),
            data.password.decode(),
        )
        return AuthResult(success=valid, handled=False)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    async def __aenter__(self) -> SmtpCapture:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="SMTP capture server for tests and the demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    args = parser.parse_args()

    async def serve() -> None:
        capture = await SmtpCapture(host=args.host, port=args.port).start()
        print(f"SMTP capture listening on {args.host}:{capture.port}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
