"""The bounce mailbox, read over IMAP: every ``poll_seconds`` each message in ``imap_folder`` is
read, acted upon (``effects``) and MOVEd to ``processed_folder``; a message that is not a report
this service understands, names no delivery of ours or is too big goes to ``failed_folder`` for a
person to look at. Nothing is deleted unread; a message whose effects could not be written (the
database away) stays where it is and is read again at the next poll.

The IMAP client is the standard library's ``imaplib`` (typed, STARTTLS, timeouts, the base of
imap-tools), driven in a worker thread one step at a time, so the event loop never waits on the
mail server. Several replicas may read the same mailbox: MOVE is atomic on the server (a message
one replica moved is gone for the others), and a message two replicas read in the same moment
counts once (``bounces`` has one row per delivery and kind).
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import logging
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.bounces.effects import Effects, SoftBounceRule
from bzi_broadcast.bounces.parse import MAX_BYTES, ReportError, parse
from bzi_broadcast.bounces.verp import Verp
from bzi_broadcast.config import Settings
from bzi_broadcast.errors import ConfigError
from bzi_broadcast.i18n import gettext as _

log = logging.getLogger(__name__)

MAX_PER_POLL = 1000  # then the next poll follows at once
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


@dataclass(frozen=True, kw_only=True)
class ImapAccount:
    host: str
    port: int
    security: str  # tls, starttls or none
    username: str
    password: str = field(repr=False)
    folder: str = "INBOX"
    processed_folder: str = "Verarbeitet"
    failed_folder: str = "Unerkannt"
    timeout: float = 30.0
    verify_tls: bool = True


class MailboxError(Exception):
    """The IMAP server refused or failed (the reader logs it and tries again next poll)."""


class MessageGone(MailboxError):
    """The message is no longer there (another replica moved it)."""


class ImapMailbox:
    """One IMAP session on the bounce folder. Blocking: call it from a worker thread."""

    def __init__(self, account: ImapAccount) -> None:
        self._account = account
        self._imap: imaplib.IMAP4 | None = None
        self._capabilities: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        a = self._account
        return f"ImapMailbox({a.username!r}@{a.host}:{a.port}, password=***)"

    def open(self) -> None:
        a = self._account
        try:
            if a.security == "tls":
                imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    a.host, a.port, ssl_context=self._tls(), timeout=a.timeout
                )
            else:
                imap = imaplib.IMAP4(a.host, a.port, timeout=a.timeout)
                if a.security == "starttls":
                    imap.starttls(self._tls())
            self._imap = imap
            imap.login(a.username, a.password)
            # asked again: many servers (Dovecot) name MOVE and UIDPLUS only after the login
            typ, data = imap.capability()
            if typ == "OK" and data and isinstance(data[0], bytes):
                self._capabilities = frozenset(data[0].decode().upper().split())
            for folder in (a.processed_folder, a.failed_folder):
                imap.create(_quoted(folder))  # NO when it exists: fine
            self._ok(imap.select(_quoted(a.folder)), "SELECT")
        except (imaplib.IMAP4.error, OSError) as exc:
            self.close()
            raise MailboxError(_reason(exc)) from None

    def pending(self) -> list[str]:
        """The UIDs of the messages waiting, oldest first."""
        data = self._call("SEARCH", "UNDELETED")
        uids = [u.decode() for line in data if isinstance(line, bytes) for u in line.split()]
        return uids[:MAX_PER_POLL]

    def fetch(self, uid: str) -> bytes | None:
        """The whole message; None for one larger than ``parse.MAX_BYTES`` (never read);
        ``MessageGone`` when another reader moved it away meanwhile."""
        lines = self._call("FETCH", uid, "(RFC822.SIZE)")
        sizes = [_SIZE.search(line) for line in lines if isinstance(line, bytes)]
        size = next((int(found.group(1)) for found in sizes if found), None)
        if size is None:
            raise MessageGone(uid)
        if size > MAX_BYTES:
            return None
        data = self._call("FETCH", uid, "(BODY.PEEK[])")  # PEEK: not marked \Seen by reading
        for item in data:
            if isinstance(item, tuple) and len(item) == 2:
                return bytes(item[1])
        raise MessageGone(uid)

    def move(self, uid: str, folder: str) -> None:
        """MOVE (RFC 6851), or COPY, flag \\Deleted and expunge where the server has no MOVE."""
        imap = self._session()
        if "MOVE" in self._capabilities:
            self._call("MOVE", uid, _quoted(folder))
            return
        self._call("COPY", uid, _quoted(folder))
        self._call("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)")
        if "UIDPLUS" in self._capabilities:
            self._call("EXPUNGE", uid)
        else:
            self._ok(imap.expunge(), "EXPUNGE")

    def close(self) -> None:
        imap, self._imap = self._imap, None
        if imap is not None:
            with contextlib.suppress(Exception):
                imap.logout()

    def _call(self, command: str, *args: str) -> list[bytes | tuple[bytes, bytes]]:
        try:
            typ, data = self._session().uid(command, *args)
        except (imaplib.IMAP4.error, OSError) as exc:
            raise MailboxError(_reason(exc)) from None
        if typ != "OK":
            raise MailboxError(f"UID {command}: {_text(data)}")
        return list(data or [])

    def _session(self) -> imaplib.IMAP4:
        if self._imap is None:
            raise MailboxError("not connected")
        return self._imap

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self._account.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @staticmethod
    def _ok(answer: tuple[str, Sequence[object]], command: str) -> None:
        typ, data = answer
        if typ != "OK":
            raise MailboxError(f"{command}: {_text(data)}")


class BounceReader:
    """Polls the mailbox until stopped; one poll at a time, a new IMAP session each."""

    def __init__(
        self,
        mailbox: Callable[[], ImapMailbox],
        verp: Verp,
        effects: Effects,
        *,
        account: ImapAccount,
        poll_seconds: float,
    ) -> None:
        self._mailbox = mailbox
        self._verp = verp
        self._effects = effects
        self._account = account
        self._poll_seconds = poll_seconds
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        while not self._stopped.is_set():
            try:
                more = await self.poll()
            except MailboxError as exc:
                log.warning("bounce mailbox unreachable host=%s reason=%s", self._host, exc)
                more = False
            except Exception:  # the database away: the messages stay, read again next time
                log.exception("bounce mailbox poll failed host=%s", self._host)
                more = False
            if not more:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), self._poll_seconds)

    def stop(self) -> None:
        self._stopped.set()

    async def poll(self) -> bool:
        """Read every waiting message; True when more may wait than one poll takes."""
        mailbox = self._mailbox()
        await asyncio.to_thread(mailbox.open)
        try:
            uids = await asyncio.to_thread(mailbox.pending)
            for uid in uids:
                if self._stopped.is_set():
                    return False
                try:
                    raw = await asyncio.to_thread(mailbox.fetch, uid)
                except MessageGone:
                    continue
                folder = await self._handle(uid, raw)
                await asyncio.to_thread(mailbox.move, uid, folder)
            return len(uids) >= MAX_PER_POLL
        finally:
            await asyncio.to_thread(mailbox.close)

    async def _handle(self, uid: str, raw: bytes | None) -> str:
        """The folder the message goes to once its effects are written."""
        failed = self._account.failed_folder
        if raw is None:
            log.warning("bounce mailbox: message too large uid=%s", uid)
            return failed
        try:
            report = await asyncio.to_thread(parse, raw)  # up to 10 MB: off the event loop
        except ReportError as exc:
            log.warning("bounce mailbox: not a report uid=%s reason=%s", uid, exc)
            return failed
        ref = self._verp.find(report.references)
        if ref is None:
            log.warning(
                "bounce mailbox: report names no delivery of ours uid=%s kind=%s",
                uid,
                report.kind,
            )
            return failed
        applied = await self._effects.apply(report, ref)
        log.info(
            "bounce read kind=%s status=%s delivery_id=%s announcement_id=%s subscriber_id=%s "
            "suppressed=%s unsubscribed=%s duplicate=%s",
            report.kind,
            report.status,
            ref.delivery_id,
            applied.announcement_id,
            applied.subscriber_id,
            applied.suppressed,
            applied.unsubscribed,
            applied.duplicate,
        )
        return self._account.processed_folder

    @property
    def _host(self) -> str:
        return self._account.host


def bounce_reader(settings: Settings, engine: AsyncEngine) -> BounceReader | None:
    """The reader ``serve`` runs, or None while no ``bounces.imap_host`` is configured."""
    b = settings.bounces
    if not b.imap_host:
        return None
    if not b.imap_username or b.imap_password is None:
        missing = "imap_username" if not b.imap_username else "imap_password"
        raise ConfigError(
            _(
                "bounces.{key}: fehlt, obwohl bounces.imap_host gesetzt ist (oder {variable})"
            ).format(key=missing, variable=f"BZI_BOUNCES_{missing.upper()}_FILE")
        )
    account = ImapAccount(
        host=b.imap_host,
        port=b.imap_port,
        security=b.imap_security,
        username=b.imap_username,
        password=b.imap_password.get_secret_value(),
        folder=b.imap_folder,
        processed_folder=b.processed_folder,
        failed_folder=b.failed_folder,
        timeout=b.timeout,
        verify_tls=b.verify_tls,
    )
    key = settings.security.signing_key()
    rule = SoftBounceRule(
        limit=settings.email.soft_bounce_limit, days=settings.email.soft_bounce_days
    )
    return BounceReader(
        lambda: ImapMailbox(account),
        Verp(key),
        Effects(engine, key=key, soft=rule),
        account=account,
        poll_seconds=b.poll_seconds,
    )


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _text(data: object) -> str:
    if isinstance(data, list) and data and isinstance(data[0], bytes):
        return data[0].decode("utf-8", "replace")[:200]
    return str(data)[:200]
