"""Mastodon threads and Telegram messages: render once, then split to each network's limits."""

from __future__ import annotations

import bzi_broadcast.render.telegram_html as telegram_html
from bzi_broadcast.content.model import Announcement
from bzi_broadcast.render.context import RenderContext, tidy
from bzi_broadcast.render.counting import mastodon_length
from bzi_broadcast.render.renditions import (
    LinkPreview,
    MastodonPost,
    MastodonRendition,
    TelegramMessage,
    TelegramRendition,
)
from bzi_broadcast.render.thread import ThreadLimits, split_thread

TELEGRAM_MESSAGE_LIMIT = 4096
TELEGRAM_CAPTION_LIMIT = 1024


def render_mastodon(
    ctx: RenderContext, announcement: Announcement, limits: ThreadLimits
) -> MastodonRendition:
    options = announcement.channels.mastodon
    spoiler = options.content_warning or ""
    text = tidy(ctx.render("mastodon/thread.txt.j2", announcement))
    parts = split_thread(text, limits=limits, spoiler_text=spoiler, hashtags=announcement.hashtags)
    image = announcement.image
    posts = tuple(
        MastodonPost(
            text=part,
            spoiler_text=spoiler,
            language=str(announcement.language),
            visibility=options.visibility,
            length=mastodon_length(part, url_length=limits.url_length, spoiler_text=spoiler),
            media=(image.src,) if image and index == 0 else (),
            media_description=image.alt if image and index == 0 else None,
        )
        for index, part in enumerate(parts)
    )
    return MastodonRendition(
        posts=posts, max_characters=limits.max_characters, url_length=limits.url_length
    )


def render_telegram(ctx: RenderContext, announcement: Announcement) -> TelegramRendition:
    html = tidy(ctx.render("telegram/message.html.j2", announcement))
    preview = _link_preview(announcement)
    image = announcement.image
    if image is None:
        texts = telegram_html.split_message(html, limit=TELEGRAM_MESSAGE_LIMIT)
        return TelegramRendition(messages=tuple(_message(t, preview) for t in texts))
    caption, rest = telegram_html.split_caption(
        html, caption_limit=TELEGRAM_CAPTION_LIMIT, limit=TELEGRAM_MESSAGE_LIMIT
    )
    first = TelegramMessage(
        text=caption,
        length=telegram_html.visible_length(caption),
        photo=image.src,
        link_preview=preview,
    )
    return TelegramRendition(messages=(first, *(_message(t, preview) for t in rest)))


def _message(text: str, preview: LinkPreview) -> TelegramMessage:
    return TelegramMessage(
        text=text, length=telegram_html.visible_length(text), link_preview=preview
    )


def _link_preview(announcement: Announcement) -> LinkPreview:
    options = announcement.channels.telegram
    return LinkPreview(
        is_disabled=not options.link_preview,
        url=options.preview_url,
        prefer_small_media=options.prefer_small_media,
        show_above_text=options.show_above_text,
    )
