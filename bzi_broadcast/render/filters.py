"""Jinja2 filters for German-first typography: dates, quotation marks, partner roles."""

from __future__ import annotations

import re
from datetime import date, datetime

from babel.dates import format_date, format_time
from markupsafe import Markup, escape

from bzi_broadcast.content.model import LOCAL_TZ, EventBlock, PartnerRole
from bzi_broadcast.i18n import N_, current_locale
from bzi_broadcast.i18n import gettext as _

_ROLE_LABELS = {
    PartnerRole.IMPLEMENTED_BY: N_("Umgesetzt von"),
    PartnerRole.IN_COOPERATION_WITH: N_("In Kooperation mit"),
    PartnerRole.FUNDED_BY: N_("Gefördert von"),
}
_WHITESPACE = re.compile(r"\s+")
# CLDR's primary quotation marks (Babel does not expose them).
_QUOTES = {"de": ("„", "“"), "en": ("“", "”")}


def date_long(value: date) -> str:
    """„Mittwoch, 5. November 2025“ / “Wednesday, November 5, 2025”."""
    return format_date(value, format="full", locale=current_locale())


def datetime_long(value: datetime) -> str:
    local = value.astimezone(LOCAL_TZ)
    return _("{date}, {time} Uhr").format(date=date_long(local.date()), time=_time(local))


def event_when(block: EventBlock) -> str:
    """The event's date or date range, with times where given, in the current locale."""
    start, end = block.start, block.end
    if isinstance(start, datetime):
        return _datetime_range(start, end if isinstance(end, datetime) else None)
    if end is None or end == start:
        return date_long(start)
    return f"{date_long(start)} – {date_long(end)}"


def _datetime_range(start: datetime, end: datetime | None) -> str:
    start = start.astimezone(LOCAL_TZ)
    if end is None:
        return datetime_long(start)
    end = end.astimezone(LOCAL_TZ)
    if end.date() == start.date():
        return _("{date}, {start}–{end} Uhr").format(
            date=date_long(start.date()), start=_time(start), end=_time(end)
        )
    return f"{datetime_long(start)} – {datetime_long(end)}"


def _time(value: datetime) -> str:
    return format_time(value, format="short", locale=current_locale())


def quote_marks() -> tuple[str, str]:
    """The locale's opening and closing quotation marks: „…“ in German, “…” in English."""
    return _QUOTES.get(current_locale(), _QUOTES["en"])


def quoted(text: str) -> str:
    start, end = quote_marks()
    return f"{start}{text}{end}"


def paragraphs(text: str) -> list[str]:
    return [part for part in text.split("\n\n") if part.strip()]


def nl2br(text: str) -> Markup:
    return Markup("<br>").join(escape(line) for line in text.splitlines())


def partner_role(role: str) -> str:
    label = _ROLE_LABELS.get(role)  # type: ignore[call-overload]
    return _(label) if label else role


def one_line(text: str) -> str:
    """Collapse every whitespace run (CR/LF included) to one space: safe for headers."""
    return _WHITESPACE.sub(" ", text).strip()


def iso8601(value: datetime) -> str:
    return value.isoformat(timespec="seconds")
