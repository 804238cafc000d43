"""The announcement model: validated, immutable values.

Validation lives here and in the loader (the edge); everything downstream trusts these objects.
Single-line fields are normalised (every whitespace run, CR/LF included, becomes one space), so no
title or name can smuggle a line break into a mail header or a Mastodon post.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

import regex
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from bzi_broadcast.content import markdown
from bzi_broadcast.i18n import N_

LOCAL_TZ = ZoneInfo("Europe/Berlin")
MAX_CONTENT_WARNING = 250  # grapheme clusters; named in the message below
# Caps per field (characters) and per list (entries), checked before any other validation of the
# field, so no field can make a check or a rendering slow: generous for real announcements, and
# together small enough that the largest announcement renders in about a second.
MAX_TITLE = 200  # the title and the mail's subject
MAX_LINE = 300  # names, places, roles, labels, kinds, a preheader
MAX_URL = 2048
MAX_ALT = 1500
MAX_HASHTAG = 40  # with MAX_HASHTAGS: all of them fit in one 500-character post
MAX_SUMMARY = 2000
MAX_PROSE = 5000  # a quote, a thanks block's intro and closing
MAX_MARKDOWN = 20_000  # a text block, an event's description
MAX_BLOCKS = 50
MAX_PARTNERS = 50
MAX_FORMATS = 30
MAX_NAMES = 30  # an event's organisers
MAX_TOPICS = 20
MAX_HASHTAGS = 10
_WHITESPACE = re.compile(r"\s+")
_HASHTAG = re.compile(r"^#?(\w+)$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_URL = re.compile(
    r"^https?://[^\s/?#]+\.[^\s/?#]+(?:[/?#]\S*)?$|^https?://localhost(?::\d+)?(?:[/?#]\S*)?$"
)


def _single_line(value: str) -> str:
    value = _WHITESPACE.sub(" ", value).strip()
    if not value:
        raise ValueError(N_("darf nicht leer sein"))
    return value


def _multi_line(value: str) -> str:
    """Trim, unify line endings, drop trailing spaces; keep paragraphs (blank lines)."""
    lines = [line.rstrip() for line in value.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    if not text:
        raise ValueError(N_("darf nicht leer sein"))
    return text


def _prose(value: str) -> str:
    """Paragraphs separated by blank lines; line breaks inside a paragraph are reflowed."""
    paragraphs = (_WHITESPACE.sub(" ", part).strip() for part in _multi_line(value).split("\n\n"))
    return "\n\n".join(part for part in paragraphs if part)


def _content_warning(value: str) -> str:
    """A warning, not a post: at most half of Mastodon's default 500 characters (graphemes, as
    Mastodon counts), so every post of the thread keeps room for its text. The channel checks
    again against the instance's own limit before the first post."""
    if len(regex.findall(r"\X", value)) > MAX_CONTENT_WARNING:
        raise ValueError(
            N_(
                "ist zu lang für eine Inhaltswarnung (höchstens 250 Zeichen, damit jeder Beitrag "
                "Platz für seinen Text behält)"
            )
        )
    return value


def _url(value: str) -> str:
    value = value.strip()
    if not _URL.match(value):
        raise ValueError(N_("ist keine gültige http(s)-Adresse"))
    return value


def _hashtag(value: str) -> str:
    match = _HASHTAG.match(value.strip())
    if not match:
        raise ValueError(N_("ist kein gültiger Hashtag (nur Buchstaben, Ziffern und _)"))
    return match.group(1)


def _slug(value: str) -> str:
    if not _SLUG.match(value):
        raise ValueError(N_("ist kein gültiges Thema (Kleinbuchstaben, Ziffern, - und _)"))
    return value


def _valid_markdown(value: str) -> str:
    value = _multi_line(value)
    markdown.parse(value)
    return value


SingleLine = Annotated[str, Field(max_length=MAX_LINE), AfterValidator(_single_line)]
Title = Annotated[str, Field(max_length=MAX_TITLE), AfterValidator(_single_line)]
AltText = Annotated[str, Field(max_length=MAX_ALT), AfterValidator(_single_line)]
Summary = Annotated[str, Field(max_length=MAX_SUMMARY), AfterValidator(_prose)]
Text = Annotated[str, Field(max_length=MAX_PROSE), AfterValidator(_prose)]
Markdown = Annotated[str, Field(max_length=MAX_MARKDOWN), AfterValidator(_valid_markdown)]
Url = Annotated[str, Field(max_length=MAX_URL), AfterValidator(_url)]
Source = Annotated[str, Field(max_length=MAX_URL), AfterValidator(_single_line)]
Hashtag = Annotated[str, Field(max_length=MAX_HASHTAG), AfterValidator(_hashtag)]
ContentWarning = Annotated[  # counted in graphemes; an emoji family is 7 code points
    str,
    Field(max_length=8 * MAX_CONTENT_WARNING),
    AfterValidator(_single_line),
    AfterValidator(_content_warning),
]
Topic = Annotated[str, AfterValidator(_slug)]


def localize(moment: datetime) -> datetime:
    """Attach Europe/Berlin to a naive local time; reject times the DST change skips."""
    if moment.tzinfo is not None:
        return moment
    aware = moment.replace(tzinfo=LOCAL_TZ)
    try:
        round_trip = aware.astimezone(ZoneInfo("UTC")).astimezone(LOCAL_TZ)
    except OverflowError:  # the first or last hours of the years 1 and 9999
        raise ValueError(
            N_("dieser Zeitpunkt liegt außerhalb des darstellbaren Bereichs")
        ) from None
    if round_trip.replace(tzinfo=None) != moment:
        raise ValueError(N_("diese Uhrzeit gibt es in Europe/Berlin nicht (Zeitumstellung)"))
    return aware


LocalDateTime = Annotated[datetime, AfterValidator(localize)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class Language(StrEnum):
    DE = "de"
    EN = "en"


class Visibility(StrEnum):
    PUBLIC = "public"
    UNLISTED = "unlisted"
    PRIVATE = "private"
    DIRECT = "direct"


class PartnerRole(StrEnum):
    IMPLEMENTED_BY = "implemented_by"
    IN_COOPERATION_WITH = "in_cooperation_with"
    FUNDED_BY = "funded_by"


class Image(Frozen):
    src: Source = Field(
        description="Path relative to the announcement file, or an https URL; either is fetched "
        "once when saved into the media store and replaced by its own /medien/ address"
    )
    alt: AltText
    width: Annotated[int, Field(gt=0, le=10000)] | None = None
    height: Annotated[int, Field(gt=0, le=10000)] | None = None

    @property
    def is_remote(self) -> bool:
        return self.src.startswith(("http://", "https://"))


class EventFormat(Frozen):
    kind: SingleLine = Field(description="e.g. Diskussionsforum, Workshop")
    title: SingleLine
    led_by: SingleLine | None = None


class EventBlock(Frozen):
    type: Literal["event"]
    name: SingleLine
    start: date | LocalDateTime
    end: date | LocalDateTime | None = None
    place: SingleLine | None = None
    organisers: Annotated[tuple[SingleLine, ...], Field(max_length=MAX_NAMES)] = ()
    formats: Annotated[tuple[EventFormat, ...], Field(max_length=MAX_FORMATS)] = ()
    description: Markdown | None = None

    @model_validator(mode="after")
    def _check_range(self) -> EventBlock:
        if self.end is None:
            return self
        if isinstance(self.start, datetime) != isinstance(self.end, datetime):
            raise ValueError(
                N_("start und end müssen beide Datum oder beide Datum mit Uhrzeit sein")
            )
        if self.end < self.start:
            raise ValueError(N_("end liegt vor start"))
        return self

    @property
    def has_time(self) -> bool:
        return isinstance(self.start, datetime)


class QuoteBlock(Frozen):
    type: Literal["quote"]
    speaker: SingleLine
    role: SingleLine | None = None
    text: Text

    @property
    def paragraphs(self) -> list[str]:
        return self.text.split("\n\n")


class Partner(Frozen):
    name: SingleLine
    role: PartnerRole | SingleLine
    url: Url | None = None


class ThanksBlock(Frozen):
    type: Literal["thanks"]
    intro: Text | None = None
    partners: Annotated[tuple[Partner, ...], Field(min_length=1, max_length=MAX_PARTNERS)]
    closing: Text | None = None


class TextBlock(Frozen):
    type: Literal["text"]
    text: Markdown


class LinkBlock(Frozen):
    type: Literal["link"]
    label: SingleLine
    url: Url
    description: SingleLine | None = None


Block = Annotated[
    EventBlock | QuoteBlock | ThanksBlock | TextBlock | LinkBlock, Field(discriminator="type")
]
BLOCK_TYPES = ("event", "quote", "thanks", "text", "link")


class EmailOptions(Frozen):
    subject: Title | None = None
    preheader: SingleLine | None = None


class MastodonOptions(Frozen):
    visibility: Visibility = Visibility.PUBLIC
    content_warning: ContentWarning | None = None


class TelegramOptions(Frozen):
    link_preview: bool = True
    preview_url: Url | None = None
    prefer_small_media: bool = False
    show_above_text: bool = False


class ChannelOptions(Frozen):
    email: EmailOptions = EmailOptions()
    mastodon: MastodonOptions = MastodonOptions()
    telegram: TelegramOptions = TelegramOptions()


class Announcement(Frozen):
    title: Title
    language: Language = Language.DE
    archive: bool = Field(
        default=True,
        description="false: nicht im öffentlichen Archiv und nicht im Atom-Feed",
    )
    translation_group: (
        Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")] | None
    ) = Field(
        default=None,
        description="Verbindet Sprachfassungen derselben Ankündigung: jede Person erhält die "
        "Fassung in ihrer Sprache, sonst die deutsche.",
    )
    summary: Summary | None = None
    topics: Annotated[tuple[Topic, ...], Field(max_length=MAX_TOPICS)] = ()
    publish_at: LocalDateTime | None = None
    expires_at: LocalDateTime | None = None
    link: Url | None = None
    hashtags: Annotated[tuple[Hashtag, ...], Field(max_length=MAX_HASHTAGS)] = ()
    image: Image | None = None
    channels: ChannelOptions = ChannelOptions()
    blocks: Annotated[tuple[Block, ...], Field(min_length=1, max_length=MAX_BLOCKS)]

    @model_validator(mode="after")
    def _check_times(self) -> Announcement:
        if self.publish_at and self.expires_at and self.expires_at <= self.publish_at:
            raise ValueError(N_("expires_at muss nach publish_at liegen"))
        return self

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


__all__ = [
    "BLOCK_TYPES",
    "Announcement",
    "Block",
    "ChannelOptions",
    "EventBlock",
    "EventFormat",
    "Image",
    "Language",
    "LinkBlock",
    "Partner",
    "PartnerRole",
    "QuoteBlock",
    "TextBlock",
    "ThanksBlock",
    "Visibility",
]
