"""The email newsletter: subject, preheader, inlined-CSS HTML and a plain-text part."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import css_inline

from bzi_broadcast.content.model import Announcement
from bzi_broadcast.render.context import RenderContext, tidy
from bzi_broadcast.render.filters import one_line
from bzi_broadcast.render.renditions import (
    PREFERENCES_PLACEHOLDER,
    UNSUBSCRIBE_PLACEHOLDER,
    EmailRendition,
)

CONTENT_WIDTH = 536  # the 600 px container less its padding
INLINE_IMAGE_CID = "announcement-image@bzi-broadcast"
_inliner = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


@dataclass(frozen=True, kw_only=True)
class EmailImage:
    url: str
    alt: str
    width: int
    height: int | None


def render_email(ctx: RenderContext, announcement: Announcement) -> EmailRendition:
    options = announcement.channels.email
    subject = one_line(options.subject or announcement.title)
    preheader = one_line(options.preheader or announcement.summary or "")[:200]
    variables = {
        "preheader": preheader,
        "image": _image(announcement),
        "unsubscribe_url": UNSUBSCRIBE_PLACEHOLDER,
        "preferences_url": PREFERENCES_PLACEHOLDER,
    }
    html = ctx.render("email/newsletter.html.j2", announcement, **variables)
    text = ctx.render("email/newsletter.txt.j2", announcement, **variables)
    image = announcement.image
    local_image = Path(image.src) if image and not image.is_remote else None
    return EmailRendition(
        subject=subject,
        preheader=preheader,
        html=_inliner.inline(html),
        text=tidy(text) + "\n",
        inline_image=local_image,
    )


def _image(announcement: Announcement) -> EmailImage | None:
    image = announcement.image
    if image is None:
        return None
    width = min(image.width or CONTENT_WIDTH, CONTENT_WIDTH)
    height = None
    if image.width and image.height:
        height = round(image.height * width / image.width)
    url = image.src if image.is_remote else f"cid:{INLINE_IMAGE_CID}"
    return EmailImage(url=url, alt=image.alt, width=width, height=height)
