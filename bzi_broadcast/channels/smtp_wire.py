"""Mail transactions on one SMTP connection, pipelined when the server offers it (RFC 2920).

aiosmtplib opens the connection (greeting, EHLO/HELO, STARTTLS, AUTH, each with its timeout);
then the transport is handed to ``ReplyReader``, and ``Session`` writes the transactions itself:
aiosmtplib sends one command and waits for its reply each time, and one message costs it four
round trips and four wake-ups of our event loop (bench/RESULTS.md has the profile).

With PIPELINING, MAIL FROM, RCPT TO and DATA go out in one write; the message content, which RFC
2920 allows as the first "command" of a group, goes out with the next transaction's envelope when
one is waiting for the connection: one write and one round trip per message. Replies come in the
order of the commands, so every written command gets the next reply future in line.

Errors keep their meaning: a refusal of MAIL, RCPT or DATA is definite (4xx transient, 5xx
permanent; RCPT 550/551/553 a hard bounce) and is followed by RSET; a reply to the content is
definite; a connection lost or timed out before the DATA command leaves nothing sent (transient),
after it the outcome is unknown (the row is retried: at least once, never lost).
"""

from __future__ import annotations

import asyncio
from collections import deque

from aiosmtplib import SMTPReadTimeoutError, SMTPServerDisconnected

from bzi_broadcast.errors import PermanentError, TransientError, UnknownOutcomeError

Reply = tuple[int, str]
# Replies to RCPT that say the mailbox does not exist: a hard bounce, the address is suppressed.
HARD_BOUNCE_CODES = frozenset({550, 551, 553})
MAX_LINE_LENGTH = 8192  # aiosmtplib's bounds: a server cannot make us buffer without end
MAX_REPLY_LENGTH = MAX_LINE_LENGTH * 4
MALFORMED = -1  # the code aiosmtplib gives a reply it cannot parse (so: a permanent error)


class ReplyReader(asyncio.Protocol):
    """Parses the server's replies and hands them out in the order the commands were written."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self._lost: Exception | None = None

    @property
    def lost(self) -> bool:
        return self._lost is not None

    def expect(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Reply]:
        """The future of the reply to the command written last."""
        future: asyncio.Future[Reply] = loop.create_future()
        if self._lost is not None:
            _fail(future, self._lost)
        else:
            self._waiting.append(future)
        return future

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            reply = self._next_reply()
            if reply is None:
                return
            if self._waiting:
                future = self._waiting.popleft()
                if not future.done():  # a waiter that timed out gave up, but the reply is its
                    future.set_result(reply)
            # else: unsolicited, dropped (as aiosmtplib does); a closing server follows with EOF

    def _next_reply(self) -> Reply | None:
        """One complete (possibly multi-line) reply off the buffer, or None if it is not all in."""
        lines: list[bytes] = []
        offset = 0
        while True:
            end = self._buffer.find(b"\n", offset)
            if end < 0 and len(self._buffer) - offset < MAX_LINE_LENGTH:
                return None
            if end < 0 or end - offset >= MAX_LINE_LENGTH or offset > MAX_REPLY_LENGTH:
                self._buffer.clear()
                return MALFORMED, "Response too long"
            line = bytes(self._buffer[offset : end + 1])
            offset = end + 1
            if not line[:3].isdigit():
                self._buffer.clear()
                text = line.decode("utf-8", errors="ignore")
                return MALFORMED, f"Malformed SMTP response line: {text}"
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del self._buffer[:offset]
                return int(line[:3]), b"\n".join(lines).decode("utf-8", "surrogateescape")

    def eof_received(self) -> bool:
        self._lose(SMTPServerDisconnected("Unexpected EOF received"))
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        lost = SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._lose(lost)

    def _lose(self, exc: Exception) -> None:
        if self._lost is None:
            self._lost = exc
        while self._waiting:
            _fail(self._waiting.popleft(), exc)


def _fail(future: asyncio.Future[Reply], exc: Exception) -> None:
    """Fail a reply future and mark its exception seen: some are never awaited (the RCPT and DATA
    replies when the MAIL reply already failed), and asyncio would log each one."""
    if not future.done():
        future.set_exception(exc)
        future.exception()


# the replies that let a transaction go on, for MAIL, RCPT and DATA
PROCEED = ((250,), (250, 251), (354,))
DATA_STAGE = 2


class Session:
    """One open connection. Without PIPELINING a transaction has it to itself until the final
    reply; with it, the next transaction may write its envelope once the content is written."""

    def __init__(
        self, transport: asyncio.WriteTransport, *, pipelining: bool, timeout: float
    ) -> None:
        self.pipelining = pipelining
        self.in_flight = 0  # transactions handed to this session and not finished (the pool's)
        self._transport = transport
        self._reader = ReplyReader()
        transport.set_protocol(self._reader)
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._turn = asyncio.Lock()  # who writes commands next
        self._queued = 0  # transactions waiting for the turn
        self._corked: list[bytes] = []  # content that goes out with the next envelope
        self._broken = False

    @property
    def usable(self) -> bool:
        return not (self._broken or self._reader.lost or self._transport.is_closing())

    async def transaction(self, sender: bytes, recipient: bytes, content: bytes) -> str:
        """Send one message: ``sender``/``recipient`` as ``<address>``, ``content`` dot-stuffed
        and ending in CRLF.CRLF. Returns the server's reply to the content (the receipt)."""
        try:
            self._queued += 1
            try:
                await self._turn.acquire()
            finally:
                self._queued -= 1
            try:
                final = await self._envelope(sender, recipient, content)
                if not self.pipelining:
                    return await self._final(final)
            finally:
                self._turn.release()
            self._loop.call_soon(self._flush)  # after the next writer's wake-up: it goes first
            return await self._final(final)
        except (TransientError, PermanentError) as exc:
            if isinstance(exc, UnknownOutcomeError):
                self.close()  # the conversation is out of step: never reuse it
            raise
        except BaseException:
            self.close()  # cancelled mid-conversation (or a bug): never reuse it
            raise

    async def _envelope(
        self, sender: bytes, recipient: bytes, content: bytes
    ) -> asyncio.Future[Reply]:
        """MAIL, RCPT and DATA; then the content is written (or corked). Its reply's future."""
        commands = (
            b"MAIL FROM:" + sender + b"\r\n",
            b"RCPT TO:" + recipient + b"\r\n",
            b"DATA\r\n",
        )
        if self.pipelining:
            self._send_command(b"".join(commands))
            futures = [self._reader.expect(self._loop) for _ in commands]
            replies = await self._replies(futures, first_stage=0)
        else:
            replies = []
            for stage, command in enumerate(commands):
                self._send_command(command)
                replies += await self._replies([self._reader.expect(self._loop)], stage)
                if replies[-1][0] not in PROCEED[stage]:
                    break
        await self._refused(replies)
        final = self._reader.expect(self._loop)
        if self._queued and self.pipelining:
            self._corked.append(content)  # the next envelope takes it along: one write
        else:
            try:
                self._write(content)
            except SMTPServerDisconnected as exc:
                raise UnknownOutcomeError(f"Verbindung während DATA verloren: {exc}") from exc
        return final

    def _send_command(self, data: bytes) -> None:
        try:
            self._write(data)
        except SMTPServerDisconnected as exc:
            raise TransientError(f"SMTP-Verbindung verloren: {exc}") from exc

    async def _replies(self, futures: list[asyncio.Future[Reply]], first_stage: int) -> list[Reply]:
        """The envelope's replies. Lost before the DATA command's reply: nothing was sent
        (transient); from there on the outcome counts as unknown, as aiosmtplib's ``data()``."""
        got: list[Reply] = []
        try:
            async with asyncio.timeout(self._timeout):
                for future in futures:
                    got.append(await future)
        except (TimeoutError, SMTPServerDisconnected) as exc:
            error = _read_error(exc)
            if first_stage + len(got) >= DATA_STAGE:
                raise UnknownOutcomeError(f"Verbindung während DATA verloren: {error}") from exc
            raise TransientError(f"SMTP-Verbindung verloren: {error}") from exc
        return got

    async def _refused(self, replies: list[Reply]) -> None:
        """Raise for the first refusal of MAIL, RCPT or DATA, after setting the server back."""
        for stage, (code, text) in enumerate(replies):
            if code in PROCEED[stage]:
                continue
            if len(replies) > DATA_STAGE and replies[DATA_STAGE][0] == 354:
                await self._command(b".\r\n")  # RFC 2920 3.1: DATA accepted all the same
            await self._command(b"RSET\r\n")
            raise refusal(code, text, recipient=stage == 1)

    async def _command(self, command: bytes) -> None:
        """A command whose reply only keeps us in step (RSET after a refusal, QUIT)."""
        try:
            self._write(command)
            async with asyncio.timeout(self._timeout):
                await self._reader.expect(self._loop)
        except (TimeoutError, SMTPServerDisconnected):
            self.close()

    async def _final(self, final: asyncio.Future[Reply]) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                code, text = await final
        except (TimeoutError, SMTPServerDisconnected) as exc:
            raise UnknownOutcomeError(
                f"Verbindung während DATA verloren: {_read_error(exc)}"
            ) from exc
        if code != 250:
            raise refusal(code, text, recipient=False)
        return text

    def _write(self, data: bytes) -> None:
        if self._transport.is_closing() or self._reader.lost:
            raise SMTPServerDisconnected("Connection lost")
        if self._corked:
            data = b"".join((*self._corked, data))
            self._corked.clear()
        self._transport.write(data)

    def _flush(self) -> None:
        """Corked content whose next writer did not come (it was cancelled): out on its own."""
        if self._corked and not self._transport.is_closing():
            self._transport.write(b"".join(self._corked))
        self._corked.clear()

    async def quit(self, timeout: float) -> None:
        """A polite QUIT, but never let a stuck server hold up shutdown."""
        self._timeout = min(self._timeout, timeout)
        try:
            await self._command(b"QUIT\r\n")
        finally:
            self.close()

    def close(self) -> None:
        self._broken = True
        self._transport.close()


def _read_error(exc: BaseException) -> str:
    """aiosmtplib's words for a lost connection or a reply that did not come in time."""
    if isinstance(exc, TimeoutError):
        return str(SMTPReadTimeoutError("Timed out waiting for server response"))
    return str(exc)


def refusal(code: int, text: str, *, recipient: bool) -> TransientError | PermanentError:
    """A server's refusal as our error: 4xx transient, else permanent (RCPT 550/551/553: the
    mailbox does not exist, the address is suppressed)."""
    message = f"SMTP {code} {text}"[:500]
    if 400 <= code < 500:
        return TransientError(message)
    return PermanentError(message, suppress_recipient=recipient and code in HARD_BOUNCE_CODES)
