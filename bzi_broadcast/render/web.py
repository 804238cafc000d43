"""The public archive's HTML fragment and the Atom entry for the feed."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime

from markupsafe import Markup

from bzi_broadcast.content.model import Announcement
from bzi_broadcast.render.context import RenderContext, tidy
from bzi_broadcast.render.email import EmailImage
from bzi_broadcast.render.renditions import WebRendition


def render_web(
    ctx: RenderContext,
    announcement: Announcement,
    *,
    entry_id: str | None = None,
    updated: datetime | None = None,
) -> WebRendition:
    image = announcement.image
    web_image = (
        EmailImage(url=image.src, alt=image.alt, width=image.width or 0, height=image.height)
        if image
        else None
    )
    fragment = tidy(ctx.render("web/article.html.j2", announcement, image=web_image))
    moment = updated or announcement.publish_at or datetime(1970, 1, 1, tzinfo=UTC)
    entry = ctx.render(
        "web/entry.atom.j2",
        announcement,
        fragment=Markup(fragment),  # noqa: S704 - our own rendered, escaped fragment
        entry_id=entry_id or _tag_uri(ctx.organisation.feed_domain, announcement, moment),
        updated=moment,
    )
    return WebRendition(html=fragment, atom_entry=tidy(entry))


def _tag_uri(domain: str, announcement: Announcement, moment: datetime) -> str:
    """An RFC 4151 tag URI: stable for the same title and publication day."""
    return f"tag:{domain},{moment.date().isoformat()}:{_slug(announcement.title)}"


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-") or "announcement"
