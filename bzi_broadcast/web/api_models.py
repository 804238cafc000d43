"""The REST API's JSON shapes: query parameters, small request bodies and every response.

The handlers build their answers through these models and the OpenAPI document is generated
from them, so a response cannot leave its documented schema without a test noticing. The
announcement itself is ``content.model.Announcement``, the same model the files use.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, RootModel
from pydantic_core import PydanticCustomError

from bzi_broadcast.content.model import Announcement
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.subscribers.store import SubscriberStatus

MAX_ID = 2**63 - 1  # the databases' 64-bit ids
PLAIN_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"  # no control characters
PerPage = Annotated[int, Field(ge=1, le=100, description="Entries per page")]
PageNumber = Annotated[int, Field(ge=1, le=100_000, description="Page, from 1")]


def _text_only(value: Any) -> Any:
    """JSON gives a time as text; a number would otherwise pass as a Unix timestamp."""
    if not isinstance(value, str):
        raise PydanticCustomError("datetime_type", "a time in RFC 3339 expected")
    return value


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Output(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- query parameters --------------------------------------------------------------------------


class AnnouncementQuery(_Query):
    status: AnnouncementStatus | None = Field(default=None, description="Only this status")
    page: PageNumber = 1
    per_page: PerPage = 20


class SubscriberQuery(_Query):
    status: SubscriberStatus | None = Field(default=None, description="Only this status")
    q: Annotated[str, Field(max_length=200, pattern=PLAIN_TEXT)] | None = Field(
        default=None, description="Part of the address or name"
    )
    page: PageNumber = 1
    per_page: PerPage = 20


class ImportQuery(_Query):
    consent_proven: (
        Annotated[str, Field(min_length=1, max_length=500, pattern=PLAIN_TEXT)] | None
    ) = Field(
        default=None,
        description="Why no confirmation mail is needed (recorded in each consent proof); "
        "without it everyone imported gets a confirmation link first",
    )


class ExportQuery(_Query):
    format: str = Field(
        default="json",
        pattern="^(json|jsonl)$",
        description="json: one array; jsonl: one object per line",
    )


# --- request bodies ----------------------------------------------------------------------------


class ScheduleRequest(_Input):
    publish_at: Annotated[AwareDatetime, BeforeValidator(_text_only)] = Field(
        description="RFC 3339 with an offset, e.g. 2026-05-04T10:30:00+02:00"
    )


class EraseRequest(_Input):
    email: Annotated[str, Field(min_length=3, max_length=320, pattern=PLAIN_TEXT)]


# --- responses ---------------------------------------------------------------------------------


class Person(_Output):
    id: int
    name: str


class Approval(_Output):
    by: Person | None
    at: datetime


class AnnouncementResource(_Output):
    id: int
    status: AnnouncementStatus
    status_label: str
    version: int = Field(description="Raised by every edit; also the ETag")
    publish_at: datetime | None
    updated_at: datetime
    author: Person | None
    submitted_by: Person | None
    approval: Approval | None
    content: Announcement


class CancelCounts(_Output):
    """The announcement's deliveries once the sends in flight settled, as stored."""

    stopped: int = Field(description="Cancelled: never sent")
    sent: int = Field(description="Accepted by a server before the cancel reached them")
    in_flight: int = Field(description="Still with a worker when the wait ran out: may be sent")
    failed: int


class CancelledResource(AnnouncementResource):
    deliveries: CancelCounts


class AnnouncementSummary(_Output):
    id: int
    title: str
    language: str
    status: AnnouncementStatus
    status_label: str
    version: int
    publish_at: datetime | None
    updated_at: datetime
    author: Person | None


class AnnouncementPage(_Output):
    items: list[AnnouncementSummary]
    page: int
    per_page: int
    total: int


class EmailPreview(_Output):
    subject: str
    preheader: str
    html: str
    text: str


class MastodonPostPreview(_Output):
    text: str
    spoiler_text: str
    language: str
    visibility: str
    length: int = Field(description="As Mastodon counts: links 23, content warning included")
    limit: int
    media_description: str | None


class MastodonPreview(_Output):
    max_characters: int
    url_length: int
    from_instance: bool = Field(description="The limits are the instance's own, not defaults")
    posts: list[MastodonPostPreview]


class TelegramMessagePreview(_Output):
    text: str
    parse_mode: str
    length: int = Field(description="UTF-16 code units after entity parsing, as Telegram counts")
    limit: int
    photo: str | None


class TelegramPreview(_Output):
    messages: list[TelegramMessagePreview]


class Preview(_Output):
    email: EmailPreview
    mastodon: MastodonPreview
    telegram: TelegramPreview


class ChannelCounts(_Output):
    queued: int
    sending: int
    sent: int
    failed: int
    cancelled: int
    total: int
    paused: bool
    pause_reason: str | None


class DeliveryStatusReport(_Output):
    id: int
    status: AnnouncementStatus
    publish_at: datetime | None
    channels: dict[str, ChannelCounts]


class Subscriber(_Output):
    id: int
    email: str | None
    name: str | None
    language: str
    status: SubscriberStatus
    source: str
    created_at: datetime
    confirmed_at: datetime | None
    paused_until: datetime | None
    consent_version: str | None
    topics: list[str]
    telegram: bool = Field(description="Receives the Telegram bot's messages")


class SubscriberPage(_Output):
    items: list[Subscriber]
    page: int
    per_page: int
    total: int


class ImportProblem(_Output):
    line: int
    detail: str


class ImportResult(_Output):
    imported: int
    skipped: int
    problems: list[ImportProblem]


class SubscriberRecord(_Output):
    """One line of the export: what the GDPR export of ``bzi-broadcast subscribers export``
    gives per person."""

    email: str | None
    name: str | None
    telegram_chat_id: int | None
    language: str
    status: str
    source: str
    created_at: str | None
    confirmed_at: str | None
    paused_until: str | None
    consent_version: str | None
    topics: list[str]


class SubscriberExport(RootModel[list[SubscriberRecord]]):
    pass


class ProblemError(_Output):
    detail: str
    pointer: str | None = Field(default=None, description="JSON pointer into the request body")
    field: str | None = Field(default=None, description="The same place as the CLI names it")
    parameter: str | None = Field(default=None, description="A query parameter")
    line: int | None = None


class Problem(_Output):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[ProblemError] | None = Field(
        default=None, description="Each wrong value, for validation problems"
    )
