"""How staff pages show values: times in Europe/Berlin, masked recipients, pages of a long list."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import urlencode

from babel.dates import format_date, format_time

from bzi_broadcast.content.model import LOCAL_TZ
from bzi_broadcast.i18n import current_locale
from bzi_broadcast.i18n import gettext as _

PAGE_SIZE = 50


def local_time(value: datetime | None) -> str:
    """„05.11.2025, 14:30“ (German) or “Nov 5, 2025, 2:30 PM”, always in Europe/Berlin."""
    if value is None:
        return ""
    local = value.astimezone(LOCAL_TZ)
    return f"{local_date(local.date())}, {format_time(local, 'short', locale=current_locale())}"


def label(labels: dict[str, str], code: str) -> str:
    """The translated label of ``code`` (marked with ``N_``), or the code itself if unknown."""
    text = labels.get(code)
    return _(text) if text else code


def detail_text(detail: dict[str, Any] | None) -> str:
    """A JSON detail of the audit or consent log as one line: „id: 5 · requeued: 2“."""
    if not detail:
        return ""
    return " · ".join(f"{key}: {value}" for key, value in sorted(detail.items()))


def mask_recipient(channel: str, recipient: str) -> str:
    """Enough to recognise a recipient in a list of failures, not enough to copy it.

    ``anna.schmidt@example.org`` → ``a…@example.org``; a Telegram chat ``123456789`` → ``…789``;
    the Mastodon account (the council's own) is shown as it is.
    """
    if channel == "mastodon":
        return recipient
    if recipient.startswith("erased:"):
        return recipient
    if "@" in recipient:
        local, _at, domain = recipient.rpartition("@")
        return f"{local[:1]}…@{domain}"
    return f"…{recipient[-3:]}" if len(recipient) > 3 else "…"


def local_date(value: date) -> str:
    """„03.11.2025“ / “Nov 3, 2025”."""
    return format_date(value, "medium", locale=current_locale())


@dataclass(frozen=True, kw_only=True)
class Page:
    """One page of a list: which rows to fetch and the links to its neighbours."""

    number: int
    total: int
    size: int = PAGE_SIZE

    @classmethod
    def of(cls, raw: str | None, total: int, size: int = PAGE_SIZE) -> Page:
        try:
            wanted = int(raw or 1)
        except ValueError:
            wanted = 1
        last = max(1, math.ceil(total / size))
        return cls(number=min(max(wanted, 1), last), total=total, size=size)

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    def link(self, number: int, query: dict[str, str]) -> str:
        """The query string of page ``number`` with the list's other filters kept."""
        kept = {key: value for key, value in query.items() if value and key != "seite"}
        return "?" + urlencode({**kept, "seite": str(number)})
