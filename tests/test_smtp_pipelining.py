"""The SMTP hot path (channels/smtp_wire.py): pipelined when offered, lock-step otherwise, and the
same outcome for every refusal and failure either way.

Two servers: aiosmtpd (``bzi_broadcast.testing.smtp``, which does not offer PIPELINING unless its
EHLO hook adds it) for real SMTP, and ``Scripted`` below, a small server that answers every
complete command of one read in one write and counts those writes: the round trips.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from bzi_broadcast.channels.smtp import (
    PIPELINE_DEPTH,
    SmtpPool,
    SmtpServer,
    data_bytes,
    envelope_address,
)
from bzi_broadcast.errors import PermanentError, TransientError, UnknownOutcomeError
from bzi_broadcast.testing.smtp import CaptureHandler, Fault, FaultPlan, SmtpCapture

SENDER = "newsletter@bzi.example.org"


class PipeliningHandler(CaptureHandler):
    """The capture server, offering PIPELINING in its EHLO answer (aiosmtpd reads commands line by
    line from a buffer, so it takes pipelined commands as they come)."""

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]  # the last is "250 HELP"


async def capture(pipelining: bool, plan: FaultPlan | None = None) -> SmtpCapture:
    server = SmtpCapture(plan)
    if pipelining:
        server.handler = PipeliningHandler(plan)
    return await server.start()


def message(n: int) -> bytes:
    # lines that start with a dot must come through (dot-stuffing), as must a lone "."
    return (
        f"To: reader{n}@example.org\r\nSubject: {n}\r\n\r\n.\r\n..two\r\nline {n}\r\n.end\r\n"
    ).encode()


async def test_aiosmtpd_offers_pipelining_only_with_the_hook() -> None:
    for pipelining in (False, True):
        server = await capture(pipelining)
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port)
        try:
            await client.connect()  # with EHLO
            assert client.supports_extension("pipelining") is pipelining
        finally:
            await client.quit()
            await server.stop()


@pytest.mark.parametrize("pipelining", [False, True])
async def test_every_message_arrives_intact(pipelining: bool) -> None:
    server = await capture(pipelining)
    pool = SmtpPool(SmtpServer(port=server.port, pool_size=2))
    try:
        replies = await asyncio.gather(
            *(pool.send(SENDER, f"reader{n}@example.org", message(n)) for n in range(40))
        )
        await server.handler.wait_for(40)
    finally:
        await pool.aclose()
        await server.stop()
    assert all(reply.startswith("2.0.0 OK queued as") for reply in replies)
    got = {r.recipient: r.data for r in server.received}
    assert got == {f"reader{n}@example.org": message(n) for n in range(40)}
    assert {r.sender for r in server.received} == {SENDER}


def refusals(recipient: str) -> Fault | None:
    kind = recipient.split("@")[0]
    return {
        "gone": Fault(stage="rcpt", code=550, times=99),
        "full": Fault(stage="rcpt", code=452, times=99),
        "policy": Fault(stage="data", code=554, times=99),
        "later": Fault(stage="data", code=451, times=99),
        "dropped": Fault(stage="drop", times=99),
    }.get(kind)


@pytest.mark.parametrize("pipelining", [False, True])
async def test_refusals_and_failures_mean_the_same_with_and_without_pipelining(
    pipelining: bool,
) -> None:
    server = await capture(pipelining, FaultPlan(choose=refusals))
    pool = SmtpPool(SmtpServer(port=server.port, pool_size=1, timeout=10))
    outcomes: dict[str, tuple[type[Exception], bool, str] | str] = {}
    try:
        for kind in ("gone", "ok1", "full", "ok2", "policy", "later", "ok3", "dropped", "ok4"):
            try:
                outcomes[kind] = await pool.send(SENDER, f"{kind}@example.org", message(1))
            except (TransientError, PermanentError) as exc:
                suppress = isinstance(exc, PermanentError) and exc.suppress_recipient
                outcomes[kind] = (type(exc), suppress, exc.message)
    finally:
        await pool.aclose()
        await server.stop()
    # a hard bounce: suppress the address
    assert outcomes["gone"] == (PermanentError, True, "SMTP 550 5.1.1 recipient refused (injected)")
    assert outcomes["full"] == (
        TransientError,
        False,
        "SMTP 452 4.0.0 recipient refused (injected)",
    )
    assert outcomes["policy"] == (
        PermanentError,
        False,
        "SMTP 554 5.0.0 message refused (injected)",
    )
    assert outcomes["later"] == (TransientError, False, "SMTP 451 4.0.0 message refused (injected)")
    assert outcomes["dropped"] == (
        UnknownOutcomeError,
        False,
        "Verbindung während DATA verloren: Unexpected EOF received",
    )
    # after each refusal the connection (or a new one) goes on delivering
    assert sorted(r.recipient for r in server.received) == [
        f"ok{n}@example.org" for n in range(1, 5)
    ]


@dataclass
class Log:
    turns: int = 0  # writes of replies: each one ends a round trip
    commands: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)


class Scripted(asyncio.Protocol):
    """SMTP as postfix's smtp-sink speaks it: every complete command in the input is answered,
    all answers of one read in one write. ``refuse`` recipients get 550; ``data_anyway`` answers
    DATA with 354 even when no recipient was accepted (which RFC 2920 3.1 tells clients to expect);
    ``mute`` stops answering at that command."""

    def __init__(self, log: Log, options: dict[str, Any]) -> None:
        self.log = log
        self.pipelining = options.get("pipelining", True)
        self.refuse: set[str] = options.get("refuse", set())
        self.data_anyway = options.get("data_anyway", False)
        self.mute: bytes | None = options.get("mute")
        self.buffer = b""
        self.in_data = False
        self.recipients = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 scripted ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies = []
        while (reply := self.step()) is not None:
            if reply == b"":  # muted: silence from here on
                self.step = lambda: None  # type: ignore[method-assign]
                break
            replies.append(reply)
        if replies:
            self.log.turns += 1
            self.transport.write(b"".join(replies))

    def step(self) -> bytes | None:
        if self.in_data:
            end = -2 if self.buffer.startswith(b".\r\n") else self.buffer.find(b"\r\n.\r\n")
            if end == -1:
                return None
            self.log.messages.append(self.buffer[: end + 2])
            self.buffer, self.in_data = self.buffer[end + 5 :], False
            return b"" if self.mute == b"." else b"250 2.0.0 Ok: queued as X\r\n"
        line, found, self.buffer = self.buffer.partition(b"\r\n")
        if not found:
            self.buffer = line
            return None
        self.log.commands.append(line)
        verb = line[:4].upper()
        if verb == self.mute:
            return b""
        if verb == b"EHLO":
            return (
                b"250-scripted\r\n"
                + (b"250-PIPELINING\r\n" if self.pipelining else b"")
                + (b"250 8BITMIME\r\n")
            )
        if verb == b"RCPT":
            if line.split(b"<")[1].rstrip(b">").decode() in self.refuse:
                return b"550 5.1.1 no such user\r\n"
            self.recipients += 1
        if verb == b"DATA":
            if not (self.recipients or self.data_anyway):
                return b"554 5.5.1 no valid recipients\r\n"
            self.in_data, self.recipients = True, 0
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb in (b"RSET", b"MAIL"):
            self.recipients = 0
        if verb == b"QUIT":
            self.transport.write(b"221 Bye\r\n")
            self.transport.close()
            return None
        return b"250 2.0.0 Ok\r\n"


async def scripted(**options: Any) -> tuple[asyncio.Server, Log, int]:
    log = Log()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Scripted(log, options), "127.0.0.1", 0)
    return server, log, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(("pipelining", "turns_per_message"), [(True, 1), (False, 4)])
async def test_round_trips_per_message(pipelining: bool, turns_per_message: int) -> None:
    server, log, port = await scripted(pipelining=pipelining)
    pool = SmtpPool(SmtpServer(port=port, pool_size=1))
    try:
        await pool.check()  # connected and greeted: from here on every turn is a transaction's
        before = log.turns
        count = 20
        await asyncio.gather(
            *(pool.send(SENDER, f"r{n}@example.org", message(n)) for n in range(count))
        )
        turns = log.turns - before
    finally:
        await pool.aclose()
        server.close()
    assert len(log.messages) == count
    # pipelined: MAIL, RCPT, DATA of the next message ride with the content of the one before
    # (one round trip each, plus the first envelope); lock-step: MAIL, RCPT, DATA, content
    assert turns <= count * turns_per_message + (1 if pipelining else 0)
    assert turns >= count * turns_per_message
    assert PIPELINE_DEPTH >= 2


async def test_refused_recipient_while_pipelining_resets_and_goes_on() -> None:
    server, log, port = await scripted(refuse={"gone@example.org"})
    pool = SmtpPool(SmtpServer(port=port, pool_size=1))
    try:
        with pytest.raises(PermanentError) as refused:
            await pool.send(SENDER, "gone@example.org", message(1))
        assert await pool.send(SENDER, "here@example.org", message(2)) == "2.0.0 Ok: queued as X"
    finally:
        await pool.aclose()
        server.close()
    assert refused.value.suppress_recipient
    assert refused.value.message == "SMTP 550 5.1.1 no such user"
    verbs = [c.split(b" ")[0] for c in log.commands]
    assert verbs == [
        b"EHLO",
        b"MAIL",
        b"RCPT",
        b"DATA",
        b"RSET",
        b"MAIL",
        b"RCPT",
        b"DATA",
        b"QUIT",
    ]
    assert log.messages == [message(2).replace(b"\r\n.", b"\r\n..")]


async def test_data_accepted_despite_the_refusal_is_ended_with_a_lone_dot() -> None:
    server, log, port = await scripted(refuse={"gone@example.org"}, data_anyway=True)
    pool = SmtpPool(SmtpServer(port=port, pool_size=1))
    try:
        with pytest.raises(PermanentError):
            await pool.send(SENDER, "gone@example.org", message(1))
        await pool.send(SENDER, "here@example.org", message(2))
    finally:
        await pool.aclose()
        server.close()
    assert log.messages[0] == b""  # RFC 2920 3.1: "the client SMTP should send a single dot"
    assert len(log.messages) == 2


@pytest.mark.parametrize(
    ("mute", "error", "text"),
    [
        (b"MAIL", TransientError, "SMTP-Verbindung verloren: Timed out waiting for server"),
        (b"DATA", UnknownOutcomeError, "Verbindung während DATA verloren: Timed out waiting"),
        (b".", UnknownOutcomeError, "Verbindung während DATA verloren: Timed out waiting"),
    ],
)
async def test_silence_is_transient_before_data_and_unknown_after(
    mute: bytes, error: type[Exception], text: str
) -> None:
    server, _log, port = await scripted(mute=mute)
    pool = SmtpPool(SmtpServer(port=port, pool_size=1, timeout=0.3))
    try:
        with pytest.raises(TransientError) as failed:
            await pool.send(SENDER, "a@example.org", message(1))
    finally:
        await pool.aclose()
        server.close()
    assert type(failed.value) is error
    assert failed.value.message.startswith(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(alphabet=".\r\nab", max_size=60).map(str.encode))
def test_data_bytes_are_what_aiosmtplib_sends(raw: bytes) -> None:
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(raw)) + b".\r\n"
    assert data_bytes(raw) == expected


ATEXT = "abcXYZ019._+-=!#$%&'*/?^`{|}~\"(),:;<>@[\\] äé"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ATEXT, min_size=1, max_size=30), st.text(alphabet=ATEXT, max_size=20))
def test_envelope_addresses_are_quoted_as_aiosmtplib_quotes_them(local: str, domain: str) -> None:
    address = f"{local}@{domain}" if domain else local
    try:
        expected: bytes | type[Exception] = quote_address(address).encode("ascii")
    except ValueError as exc:  # UnicodeEncodeError too
        expected = type(exc)
    try:
        got: bytes | type[Exception] = envelope_address(address)
    except ValueError as exc:
        got = type(exc)
    assert got == expected
    if isinstance(got, bytes):
        assert re.fullmatch(rb"<[^\r\n]*>", got)
