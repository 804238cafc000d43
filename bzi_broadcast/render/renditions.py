"""What rendering produces: one frozen value per channel, ready for delivery or preview."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bzi_broadcast.content.model import Visibility

UNSUBSCRIBE_PLACEHOLDER = "__BZI_UNSUBSCRIBE_URL__"
PREFERENCES_PLACEHOLDER = "__BZI_PREFERENCES_URL__"
"""Per-recipient parts of an email; delivery replaces them in the built message's bytes."""


@dataclass(frozen=True, kw_only=True)
class EmailRendition:
    subject: str
    preheader: str
    html: str
    text: str
    inline_image: Path | None = None  # a local image the HTML references as cid:

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "preheader": self.preheader,
            "html": self.html,
            "text": self.text,
        }


@dataclass(frozen=True, kw_only=True)
class MastodonPost:
    text: str
    spoiler_text: str
    language: str
    visibility: Visibility
    length: int  # as Mastodon counts it, content warning included
    media: tuple[str, ...] = ()
    media_description: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "spoiler_text": self.spoiler_text,
            "language": self.language,
            "visibility": str(self.visibility),
        }


@dataclass(frozen=True, kw_only=True)
class MastodonRendition:
    posts: tuple[MastodonPost, ...]
    max_characters: int
    url_length: int

    def to_json(self) -> dict[str, Any]:
        return {"posts": [post.to_json() for post in self.posts]}


@dataclass(frozen=True, kw_only=True)
class LinkPreview:
    is_disabled: bool = False
    url: str | None = None
    prefer_small_media: bool = False
    show_above_text: bool = False


@dataclass(frozen=True, kw_only=True)
class TelegramMessage:
    text: str
    parse_mode: str = "HTML"
    length: int  # UTF-16 code units after entity parsing, as Telegram counts
    photo: str | None = None  # when set, `text` is the photo's caption (≤ 1024 units)
    link_preview: LinkPreview = field(default_factory=LinkPreview)

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "parse_mode": self.parse_mode}


@dataclass(frozen=True, kw_only=True)
class TelegramRendition:
    messages: tuple[TelegramMessage, ...]

    def to_json(self) -> dict[str, Any]:
        return {"messages": [message.to_json() for message in self.messages]}


@dataclass(frozen=True, kw_only=True)
class WebRendition:
    html: str
    atom_entry: str


@dataclass(frozen=True, kw_only=True)
class Renditions:
    email: EmailRendition | None = None
    mastodon: MastodonRendition | None = None
    telegram: TelegramRendition | None = None
    web: WebRendition | None = None

    def to_json(self) -> dict[str, Any]:
        parts = {"email": self.email, "mastodon": self.mastodon, "telegram": self.telegram}
        return {name: part.to_json() for name, part in parts.items() if part is not None}
