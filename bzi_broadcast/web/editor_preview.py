"""The editor's preview: every channel as it will look, with the counts that decide splitting.

The Mastodon thread is split with the instance's own limits (``/api/v2/instance``, else v1; read
at most hourly; a failed read is retried after a minute, meanwhile the defaults apply and the
preview says so). Telegram messages are parsed as the Bot API parses them and drawn again from the
parsed text and entities, so the bubble shows exactly what Telegram would, and nothing the parser
would not accept can reach the staff page.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import aiohttp
from markupsafe import Markup, escape

from bzi_broadcast.channels.mastodon_instance import fetch_instance
from bzi_broadcast.config import MastodonSettings
from bzi_broadcast.content.model import Announcement
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.render import Renderer, ThreadLimits, telegram_html
from bzi_broadcast.render.renditions import (
    PREFERENCES_PLACEHOLDER,
    UNSUBSCRIBE_PLACEHOLDER,
    EmailRendition,
    MastodonRendition,
)
from bzi_broadcast.render.social import TELEGRAM_CAPTION_LIMIT, TELEGRAM_MESSAGE_LIMIT

log = logging.getLogger(__name__)

LIMITS_MAX_AGE = 3600.0
RETRY_AFTER_FAILURE = 60.0
INSTANCE_TIMEOUT = 3.0
_TAGS = {
    "bold": "b",
    "italic": "i",
    "underline": "u",
    "strikethrough": "s",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
}


class MastodonLimits:
    """The instance's thread limits when it answers, else the defaults; cached."""

    def __init__(self, settings: MastodonSettings) -> None:
        self._settings = settings
        self._limits = ThreadLimits()
        self._from_instance = False
        self._next_read = 0.0

    async def get(self) -> tuple[ThreadLimits, bool]:
        """The limits, and whether they are the instance's own."""
        if self._settings.enabled and time.monotonic() >= self._next_read:
            await self._read()
        share = self._settings.content_warning_share
        return replace(self._limits, spoiler_share=share), self._from_instance

    async def _read(self) -> None:
        url = self._settings.base_url
        try:
            timeout = aiohttp.ClientTimeout(total=INSTANCE_TIMEOUT)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                limits = await fetch_instance(http, url, {"User-Agent": "bzi-broadcast"})
            self._limits = replace(
                limits.thread, spoiler_share=self._settings.content_warning_share
            )
            self._from_instance = True
            self._next_read = time.monotonic() + LIMITS_MAX_AGE
        except (aiohttp.ClientError, TimeoutError, ValueError, BroadcastError) as exc:
            log.warning("mastodon instance limits unavailable url=%s error=%s", url, exc)
            self._limits, self._from_instance = ThreadLimits(), False
            self._next_read = time.monotonic() + RETRY_AFTER_FAILURE


@dataclass(frozen=True, kw_only=True)
class Bubble:
    html: Markup
    length: int
    limit: int
    photo: str | None
    photo_alt: str


@dataclass(frozen=True, kw_only=True)
class Preview:
    email: EmailRendition | None = None
    email_html: str = ""
    mastodon: MastodonRendition | None = None
    telegram: tuple[Bubble, ...] = ()
    instance_limits: bool = False
    problems: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return self.email is not None


def render(
    renderer: Renderer, announcement: Announcement, limits: ThreadLimits, from_instance: bool
) -> Preview:
    """Every channel's rendition; a rendering failure becomes a problem shown in its place."""
    try:
        email = renderer.email(announcement)
        mastodon = renderer.mastodon(announcement, limits)
        telegram = renderer.telegram(announcement)
    except (BroadcastError, ValueError) as exc:
        message = exc.message if isinstance(exc, BroadcastError) else str(exc)
        return Preview(
            problems=(_("Die Vorschau ist nicht möglich: {reason}").format(reason=message),)
        )
    html = email.html.replace(UNSUBSCRIBE_PLACEHOLDER, "#").replace(PREFERENCES_PLACEHOLDER, "#")
    bubbles = tuple(
        Bubble(
            html=bubble_html(message.text),
            length=message.length,
            limit=TELEGRAM_CAPTION_LIMIT if message.photo else TELEGRAM_MESSAGE_LIMIT,
            photo=message.photo,
            photo_alt=announcement.image.alt if announcement.image else "",
        )
        for message in telegram.messages
    )
    return Preview(
        email=email,
        email_html=html,
        mastodon=mastodon,
        telegram=bubbles,
        instance_limits=from_instance,
    )


def bubble_html(source: str) -> Markup:
    """Telegram HTML drawn again from what Telegram's parser makes of it: text escaped, only
    formatting tags, links only to http(s)."""
    try:
        parsed = telegram_html.parse(source)
    except telegram_html.TelegramHTMLError as exc:
        return Markup('<span class="over">{}</span>').format(str(exc))
    units = parsed.text.encode("utf-16-le")
    out: list[Markup] = []
    open_ends: list[tuple[int, Markup]] = []
    position = 0

    def text(end: int) -> None:
        nonlocal position
        out.append(escape(units[2 * position : 2 * end].decode("utf-16-le")))
        position = end

    for entity in sorted(parsed.entities, key=lambda e: (e.offset, -e.length)):
        while open_ends and open_ends[-1][0] <= entity.offset:
            end, closing = open_ends.pop()
            text(end)
            out.append(closing)
        text(entity.offset)
        opening, closing = _tag(entity.type, entity.url)
        out.append(opening)
        open_ends.append((entity.offset + entity.length, closing))
    while open_ends:
        end, closing = open_ends.pop()
        text(end)
        out.append(closing)
    text(len(units) // 2)
    return Markup("").join(out)


def _tag(kind: str, url: str | None) -> tuple[Markup, Markup]:
    if kind == "text_link" and url and url.lower().startswith(("https://", "http://")):
        return Markup('<a href="{}" rel="noopener noreferrer">').format(url), Markup("</a>")
    if kind == "spoiler":
        return Markup('<span class="spoiler">'), Markup("</span>")
    tag = _TAGS.get(kind, "span")  # a fixed name from the table, never from the message
    return Markup("<{}>").format(tag), Markup("</{}>").format(tag)
