"""The email newsletter channel: MIME built once per announcement, filled per recipient, sent
through the SMTP pool under the server's rate limit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path

from bzi_broadcast.bounces.verp import Verp
from bzi_broadcast.channels.base import Receipt
from bzi_broadcast.channels.dkim import DkimSigner
from bzi_broadcast.channels.email_mime import MessageTemplate, Sender
from bzi_broadcast.channels.images import read_local_image
from bzi_broadcast.channels.smtp import PIPELINE_DEPTH, SmtpPool, SmtpServer
from bzi_broadcast.delivery.outbox import Claimed
from bzi_broadcast.delivery.ratelimit import Limiter, pace
from bzi_broadcast.render import Renderer
from bzi_broadcast.store.announcements import AnnouncementRecord
from bzi_broadcast.tokens import TokenSigner, link_subject

UNSUBSCRIBE_TTL = timedelta(days=400)  # links in old newsletters keep working for a year and more
PREFERENCES_TTL = timedelta(days=400)


@dataclass(frozen=True, kw_only=True)
class EmailSettings:
    sender: Sender
    public_url: str  # where the unsubscribe and preferences pages live
    list_id: str
    unsubscribe_mailto: str | None = None
    dkim: DkimSigner | None = None
    image_root: Path | None = None  # local announcement images are read from here
    # The delivery's signed token in the Message-ID and, with a bounce domain, in the envelope
    # sender (VERP): a bounce or complaint names the delivery it is about (bzi_broadcast/bounces/).
    verp: Verp | None = None
    bounce_domain: str | None = None


class EmailChannel:
    name = "email"

    def __init__(
        self,
        server: SmtpServer,
        settings: EmailSettings,
        renderer: Renderer,
        signer: TokenSigner,
        limiter: Limiter,
    ) -> None:
        # sends in flight: with PIPELINING each connection carries two (channels/smtp.py)
        self.concurrency = server.pool_size * PIPELINE_DEPTH
        self._pool = SmtpPool(server)
        self._settings = settings
        self._renderer = renderer
        self._signer = signer
        self.limiter = limiter  # the server's rate and daily cap, shared by every replica
        domain = settings.sender.address.rpartition("@")[2] or "localhost"
        self._message_id_domain = domain

    def prepare(self, record: AnnouncementRecord) -> MessageTemplate:
        rendition = self._renderer.email(record.announcement())
        image = self._inline_image(rendition.inline_image)
        return MessageTemplate.build(
            rendition,
            sender=self._settings.sender,
            list_id=self._settings.list_id,
            message_id_domain=self._message_id_domain,
            unsubscribe_mailto=self._settings.unsubscribe_mailto,
            inline_image=image,
            inline_image_type=_image_type(rendition.inline_image) if image else None,
            dkim=self._settings.dkim,
        )

    async def send(self, prepared: MessageTemplate, delivery: Claimed) -> Receipt:
        verp = self._settings.verp
        token = verp.token(delivery.id, delivery.subscriber_id) if verp else None
        subject = (
            link_subject(delivery.subscriber_id, delivery.link_key)
            if delivery.subscriber_id
            else delivery.recipient
        )
        data = self._data(
            prepared,
            to=delivery.recipient,
            unsubscribe_url=self._link("unsubscribe", subject, UNSUBSCRIBE_TTL),
            preferences_url=self._link("preferences", subject, PREFERENCES_TTL),
            **self._tracking(token),
        )
        await pace(self.limiter)
        reply = await self._pool.send_data(self._envelope_sender(token), delivery.recipient, data)
        return Receipt(remote_id=reply[:200] or None)

    def _data(self, prepared: MessageTemplate, **recipient: str) -> bytes:
        """One recipient's message in its DATA form; with DKIM keys the template signs it
        (the fixed parts were canonicalised and hashed when it was prepared)."""
        return prepared.fill_data(**recipient)

    async def send_single(self, to: str, subject: str, html: str, text: str) -> None:
        """One service mail (a confirmation link): same server, sender, rate limit and DKIM."""
        message = EmailMessage(policy=SMTP)
        message["From"] = formataddr(
            (self._settings.sender.name or "", self._settings.sender.address)
        )
        message["To"] = to  # the address alone: nothing a visitor typed besides it
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=self._message_id_domain)
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        data = message.as_bytes()
        if self._settings.dkim:
            data = self._settings.dkim.sign(data)
        await pace(self.limiter)
        await self._pool.send(self._settings.sender.address, to, data)

    def _tracking(self, token: str | None) -> dict[str, str]:
        """The Message-ID that names the delivery (reports quote it even without VERP)."""
        return {"message_id": f"{token}@{self._message_id_domain}"} if token else {}

    def _envelope_sender(self, token: str | None) -> str:
        """MAIL FROM: ``bounces+<token>@<bounce domain>``, or the from address without one."""
        verp, domain = self._settings.verp, self._settings.bounce_domain
        if verp is None or token is None or not domain:
            return self._settings.sender.address
        return verp.address(token, domain)

    def _link(self, purpose: str, subject: str, ttl: timedelta) -> str:
        token = self._signer.sign(purpose=purpose, subject=subject, ttl=ttl)
        path = "abmelden" if purpose == "unsubscribe" else "einstellungen"
        return f"{self._settings.public_url.rstrip('/')}/{path}/{token}"

    def _inline_image(self, path: Path | None) -> bytes | None:
        if path is None:
            return None
        return read_local_image(self._settings.image_root or Path.cwd(), path)

    async def check(self) -> None:
        """Fail fast at start when the mail server cannot be reached or refuses the login."""
        await self._pool.check()

    async def aclose(self) -> None:
        await self.limiter.aclose()
        await self._pool.aclose()


def _image_type(path: Path | None) -> str:
    suffix = path.suffix.lower() if path else ""
    return {".png": "image/png", ".gif": "image/gif", ".webp": "image/webp"}.get(
        suffix, "image/jpeg"
    )
