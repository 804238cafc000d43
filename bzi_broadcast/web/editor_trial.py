"""„Test an mich senden“: one announcement to the staff member's own address and Telegram chat.

The Telegram chat is the private chat the person proved with a one-time code (``/verbinden``,
``staff.telegram_link``); as a second line of defence a test never goes to a channel or group
(negative ids) nor to a configured chat, so an unapproved draft cannot reach the public.

The email goes through the service's own email channel (same server, sender, rate limit and
DKIM as the newsletter), with „[Test] “ before the subject. Telegram uses a channel of its own
with the service's bot token: the service's sending channel lives inside its worker, and a second
``Bot`` for the odd test message is harmless (only receiving updates must be single).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy.ext.asyncio import AsyncEngine
from telegram import Bot
from telegram.request import HTTPXRequest

from bzi_broadcast.channels.email import EmailChannel
from bzi_broadcast.channels.telegram import TelegramChannel, TelegramLimits
from bzi_broadcast.config import Settings
from bzi_broadcast.content.model import Announcement
from bzi_broadcast.delivery.outbox import Claimed
from bzi_broadcast.errors import DeliveryError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.i18n import ngettext
from bzi_broadcast.render import Renderer
from bzi_broadcast.render.renditions import (
    PREFERENCES_PLACEHOLDER,
    UNSUBSCRIBE_PLACEHOLDER,
    TelegramRendition,
)
from bzi_broadcast.render.social import TELEGRAM_CAPTION_LIMIT, TELEGRAM_MESSAGE_LIMIT
from bzi_broadcast.staff.media import MediaLibrary

PREFIX = "[Test] "


@dataclass(frozen=True, kw_only=True)
class Outcome:
    ok: bool
    message: str


class TrialSender:
    def __init__(
        self,
        settings: Settings,
        renderer: Renderer,
        email: EmailChannel,
        *,
        engine: AsyncEngine | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._renderer = renderer
        self._email = email
        self._telegram: TelegramChannel | None = None

    async def email(self, announcement: Announcement, to: str) -> Outcome:
        rendition = self._renderer.email(announcement)
        home = self._settings.email.public_url
        html = rendition.html.replace(UNSUBSCRIBE_PLACEHOLDER, home)
        text = rendition.text.replace(UNSUBSCRIBE_PLACEHOLDER, home)
        html = html.replace(PREFERENCES_PLACEHOLDER, home)
        text = text.replace(PREFERENCES_PLACEHOLDER, home)
        try:
            await self._email.send_single(to, PREFIX + rendition.subject, html, text)
        except DeliveryError as exc:
            return Outcome(
                ok=False,
                message=_("E-Mail an {to} nicht gesendet: {reason}").format(
                    to=to, reason=exc.message
                ),
            )
        return Outcome(ok=True, message=_("E-Mail an {to} gesendet.").format(to=to))

    async def telegram(self, announcement: Announcement, chat_id: int) -> Outcome:
        if not self.private_chat(chat_id):
            return Outcome(
                ok=False,
                message=_(
                    "Telegram-Test nicht gesendet: Er geht nur an Ihren eigenen privaten Chat. "
                    "Verbinden Sie ihn unter „Mein Konto“."
                ),
            )
        channel = self._telegram_channel()
        if channel is None:
            return Outcome(ok=False, message=_("Telegram ist in der Konfiguration nicht aktiv."))
        rendition = _marked(self._renderer.telegram(announcement))
        delivery = Claimed(
            id=0,
            announcement_id=0,
            channel="telegram",
            recipient=str(chat_id),
            subscriber_id=None,
            attempts=0,
        )
        try:
            await channel.send(rendition, delivery)
        except DeliveryError as exc:
            return Outcome(
                ok=False,
                message=_("Telegram-Nachricht nicht gesendet: {reason}").format(reason=exc.message),
            )
        count = len(rendition.messages)
        return Outcome(
            ok=True,
            message=ngettext(
                "Telegram: {count} Nachricht an Chat {chat} gesendet.",
                "Telegram: {count} Nachrichten an Chat {chat} gesendet.",
                count,
            ).format(count=count, chat=chat_id),
        )

    def private_chat(self, chat_id: int) -> bool:
        """A person's private chat has their (positive) user id; groups and channels are
        negative. The configured chats are the public's, whatever their id."""
        return chat_id > 0 and chat_id not in self._settings.telegram.chats

    def _telegram_channel(self) -> TelegramChannel | None:
        t = self._settings.telegram
        if not t.enabled or t.token is None:
            return None
        if self._telegram is None:
            request = HTTPXRequest(
                connection_pool_size=2,
                read_timeout=t.timeout,
                connect_timeout=t.timeout,
                write_timeout=t.timeout,
            )
            bot = Bot(t.token.get_secret_value(), base_url=t.base_url, request=request)
            limits = TelegramLimits(
                per_second=t.per_second,
                per_chat_per_second=t.per_chat_per_second,
                per_group_per_minute=t.per_group_per_minute,
            )
            # a draft's image is private until release: it is uploaded from the store
            images = (
                MediaLibrary(self._engine, self._settings.email.public_url)
                if self._engine
                else None
            )
            self._telegram = TelegramChannel(
                bot, self._renderer, limits, concurrency=1, media=images
            )
        return self._telegram

    async def aclose(self) -> None:
        if self._telegram is not None:
            await self._telegram.aclose()


def _marked(rendition: TelegramRendition) -> TelegramRendition:
    """„[Test]“ before the first message, where it still fits Telegram's limit."""
    if not rendition.messages:
        return rendition
    first = rendition.messages[0]
    limit = TELEGRAM_CAPTION_LIMIT if first.photo else TELEGRAM_MESSAGE_LIMIT
    if first.length + len(PREFIX) > limit:
        return rendition
    marked = replace(first, text=PREFIX + first.text, length=first.length + len(PREFIX))
    return TelegramRendition(messages=(marked, *rendition.messages[1:]))
