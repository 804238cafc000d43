"""The Telegram channel: one delivery row per chat, sent with python-telegram-bot's ``Bot``.

The Bot API has no idempotency: a message whose answer was lost may arrive twice, so Telegram
delivery is at least once. Limits are kept at the moment of sending, across all workers of all
replicas (``Pacer``): an overall rate, one message per second per chat and 20 per minute per group
(core.telegram.org/bots/faq "My bot is hitting limits"). A photo at our own ``/medien/``
address is uploaded from the media store (it is private until released, and the bytes are here).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

from telegram import Bot, InputFile, LinkPreviewOptions, Message
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)

from bzi_broadcast.channels.base import Receipt
from bzi_broadcast.channels.images import OwnImages, read_local_image
from bzi_broadcast.delivery.outbox import Claimed
from bzi_broadcast.delivery.ratelimit import Limiter, Party, RateLimit, SlotStore, pace
from bzi_broadcast.errors import (
    ChannelAuthError,
    DeliveryError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.render import Renderer
from bzi_broadcast.render.renditions import TelegramMessage, TelegramRendition
from bzi_broadcast.store.announcements import AnnouncementRecord
from bzi_broadcast.store.rate_slots import MemorySlots

# Below Telegram's limits by 5 %: 30 sends at 28.5/s span 1.053 s, so a send may arrive up to 53 ms
# later than the one a second after it (jitter in this host's loop, the network, Telegram's) and
# still no second holds 31. A send that starts more than LATE after its slot would use up most of
# that: it asks for another slot (delivery.ratelimit.pace).
MARGIN = 0.95
LATE = 0.03


@dataclass(frozen=True, kw_only=True)
class TelegramLimits:
    per_second: float = 30.0
    per_chat_per_second: float = 1.0
    per_group_per_minute: float = 20.0


class Pacer:
    """Telegram's limits as asks to one shared limiter: every message takes a slot of the overall
    rate, with its chat as the party (one message a second to a private chat, one every three
    seconds to a group at 20 a minute). ``slots`` shared by the replicas (the database) make the
    limits hold for all of them together; without, they hold in this process. It keeps ``margin``
    below each limit so that jitter cannot make two sends look closer to Telegram than they were
    sent, a send that would start too late gives its slot up (``pace``), and this process never
    puts more sends in one second than the rate does. After a flood answer every send waits out
    its ``retry_after``, as Telegram asks of the whole bot: here at once, in the other replicas
    from their next grant.
    """

    def __init__(
        self,
        limits: TelegramLimits,
        margin: float = MARGIN,
        *,
        slots: SlotStore | None = None,
        key: str = "telegram",
    ) -> None:
        rate = limits.per_second * margin
        self._limiter = Limiter(
            slots or MemorySlots(), key, RateLimit(per_second=rate), name="telegram", late=LATE
        )
        self._chat_gap = 1.0 / (limits.per_chat_per_second * margin)
        self._group_gap = 60.0 / (limits.per_group_per_minute * margin)
        self._in_one_second = math.ceil(rate)  # what evenly spaced sends put in any second
        self._recent: deque[float] = deque()

    def hold(self, seconds: float) -> None:
        self._limiter.hold(seconds)

    async def wait(self, chat_id: int) -> None:
        party = Party(key=f"chat:{chat_id}", gap=self._group_gap if chat_id < 0 else self._chat_gap)
        await pace(self._limiter, party)
        await self._within_one_second()

    async def _within_one_second(self) -> None:
        """Never more sends in one second of this process than the rate puts there, however a
        busy loop bunched them (Telegram counts per second)."""
        while True:
            now = time.monotonic()
            while self._recent and self._recent[0] <= now - 1.0:
                self._recent.popleft()
            if len(self._recent) < self._in_one_second:
                self._recent.append(now)
                return
            await asyncio.sleep(self._recent[0] + 1.0 - now)

    async def aclose(self) -> None:
        await self._limiter.aclose()


class TelegramChannel:
    name = "telegram"

    def __init__(
        self,
        bot: Bot,
        renderer: Renderer,
        limits: TelegramLimits,
        concurrency: int = 32,
        image_root: Path | None = None,
        media: OwnImages | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        """``pacer`` shares the limits with other replicas; without, they hold in this process."""
        self.concurrency = concurrency
        self._own_images = media
        self._bot = bot
        self._renderer = renderer
        self._pacer = pacer or Pacer(limits)
        self._image_root = image_root or Path.cwd()
        self._file_ids: dict[str, str] = {}
        self._uploading: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._started = False

    def prepare(self, record: AnnouncementRecord) -> TelegramRendition:
        return self._renderer.telegram(record.announcement())

    async def send(self, prepared: TelegramRendition, delivery: Claimed) -> Receipt:
        if not self._started:
            try:
                await self._bot.initialize()  # getMe: a revoked token shows here first
            except TelegramError as exc:
                raise _translate(exc) from exc
            self._started = True
        chat_id = int(delivery.recipient)
        migrated: int | None = None
        first_id: str | None = None
        for message in prepared.messages:
            try:
                sent = await self._send_one(chat_id, message)
            except ChatMigrated as exc:  # the group became a supergroup: send there, remember it
                chat_id = migrated = int(exc.new_chat_id)
                sent = await self._send_translated(chat_id, message)
            first_id = first_id or str(sent.message_id)
        return Receipt(remote_id=first_id, new_recipient=str(migrated) if migrated else None)

    async def _send_translated(self, chat_id: int, message: TelegramMessage) -> Message:
        try:
            return await self._send_one(chat_id, message)
        except ChatMigrated as exc:
            raise PermanentError(f"Telegram: {exc.message}") from exc

    async def _send_one(self, chat_id: int, message: TelegramMessage) -> Message:
        await self._pacer.wait(chat_id)
        try:
            return await self._call(chat_id, message)
        except ChatMigrated:
            raise
        except TelegramError as exc:
            error = _translate(exc)
            if isinstance(exc, RetryAfter) and isinstance(error, TransientError):
                self._pacer.hold(error.retry_after or 0.0)
            raise error from exc

    async def _call(self, chat_id: int, message: TelegramMessage) -> Message:
        preview = message.link_preview
        options = LinkPreviewOptions(
            is_disabled=preview.is_disabled,
            url=preview.url,
            prefer_small_media=preview.prefer_small_media,
            show_above_text=preview.show_above_text,
        )
        if message.photo:
            return await self._send_photo(chat_id, message, message.photo)
        return await self._bot.send_message(
            chat_id, message.text, parse_mode=message.parse_mode, link_preview_options=options
        )

    async def _send_photo(self, chat_id: int, message: TelegramMessage, src: str) -> Message:
        """The first send uploads the image (or lets Telegram fetch its URL); every later one
        passes the file id Telegram returned, so an image goes up once, not once per chat."""
        if src not in self._file_ids:
            async with self._uploading[src]:
                if src not in self._file_ids:
                    sent = await self._bot.send_photo(
                        chat_id,
                        await self._photo(src),
                        caption=message.text,
                        parse_mode=message.parse_mode,
                    )
                    if sent.photo:
                        self._file_ids[src] = sent.photo[-1].file_id
                    return sent
        return await self._bot.send_photo(
            chat_id, self._file_ids[src], caption=message.text, parse_mode=message.parse_mode
        )

    async def _photo(self, src: str) -> str | InputFile:
        if self._own_images is not None and self._own_images.owns(src):
            own = await self._own_images.read(src)
            return InputFile(own.content, filename=own.name)
        if src.startswith(("https://", "http://")):
            return src  # Telegram's servers fetch it, not ours (an announcement saved before)
        content = read_local_image(self._image_root, src)
        return InputFile(content, filename=Path(src).name)

    async def aclose(self) -> None:
        await self._pacer.aclose()
        if self._started:
            await self._bot.shutdown()


def _translate(exc: TelegramError) -> DeliveryError:
    """PTB's errors in our terms. Order matters: BadRequest and TimedOut subclass NetworkError."""
    text = f"Telegram: {exc.message}"
    if isinstance(exc, RetryAfter):
        after = exc.retry_after
        seconds = after if isinstance(after, int | float) else after.total_seconds()
        return TransientError(text, retry_after=float(seconds))
    if isinstance(exc, InvalidToken):  # its message quotes the token: keep that out of the rows
        return ChannelAuthError("Telegram: " + _("Der Server hat den Bot-Token abgelehnt."))
    if isinstance(exc, Forbidden):
        return PermanentError(text, suppress_recipient=True)
    if isinstance(exc, BadRequest):
        return PermanentError(text)
    if isinstance(exc, TimedOut | NetworkError):
        return UnknownOutcomeError(text)
    return TransientError(text)
