"""Subscribers and the audit log for staff: search, counts, growth, export, erase, consent proof.

Addresses are personal data, so the figures are for every staff member, while the list, a
person's page and the export are for publishers and admins, and erasing for admins only. The audit
log records that someone exported or erased, never whose address.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from bzi_broadcast.content.model import LOCAL_TZ
from bzi_broadcast.i18n import N_, current_locale
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff.permissions import Action, may, staff_role
from bzi_broadcast.staff.workflow import audit
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import subscribers
from bzi_broadcast.subscribers import directory, gdpr
from bzi_broadcast.subscribers.consent import history
from bzi_broadcast.web import journal
from bzi_broadcast.web.admin import require, staff_page
from bzi_broadcast.web.app import check_csrf, client_ip, context_of
from bzi_broadcast.web.charts import Chart, Series, svg
from bzi_broadcast.web.display import Page, detail_text, label, local_date, local_time

STATUS_LABELS = {
    "pending": N_("unbestätigt"),
    "active": N_("aktiv"),
    "unsubscribed": N_("abgemeldet"),
    "bounced": N_("unzustellbar"),
}
CHANNEL_LABELS = {"email": N_("E-Mail"), "telegram": "Telegram"}
CONSENT_LABELS = {
    "signed_up": N_("Angemeldet"),
    "confirmation_sent": N_("Bestätigungslink gesendet"),
    "confirmed": N_("Bestätigt"),
    "preferences_changed": N_("Einstellungen geändert"),
    "unsubscribed": N_("Abgemeldet"),
}
EXPORT_FIELDS = (
    "email",
    "name",
    "telegram_chat_id",
    "language",
    "status",
    "source",
    "created_at",
    "confirmed_at",
    "paused_until",
    "consent_version",
    "topics",
)


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/abonnenten", _subscribers)
    app.router.add_get("/admin/abonnenten/export", _export)
    app.router.add_get(r"/admin/abonnenten/{id:\d+}", _subscriber)
    app.router.add_get(r"/admin/abonnenten/{id:\d+}/loeschen", _erase_form)
    app.router.add_post(r"/admin/abonnenten/{id:\d+}/loeschen", _erase)
    app.router.add_get("/admin/protokoll", journal.audit_log_page)


async def _subscribers(request: web.Request) -> web.Response:
    user = await require(request, staff_role(Action.SUBSCRIBER_FIGURES))
    may_list = may(user, Action.READ_SUBSCRIBERS)
    topics = _topic_names(request)
    filters = directory.Filters(
        text=request.query.get("q", "")[:200],
        status=_choice(request, "status", STATUS_LABELS),
        topic=_choice(request, "thema", topics),
        channel=_choice(request, "kanal", CHANNEL_LABELS),
    )
    async with context_of(request).engine.connect() as conn:
        counts = await directory.counts(conn)
        growth = await directory.growth(conn, today=utcnow().astimezone(LOCAL_TZ).date())
        listing = await _listing(request, conn, filters) if may_list else {}
    notice = (
        _("Die Person wurde gelöscht.") if request.query.get("meldung") == "geloescht" else None
    )
    return staff_page(
        request,
        "admin_abonnenten.html.j2",
        user,
        wide=True,
        may_list=may_list,
        filters=filters,
        statuses=_labelled(STATUS_LABELS),
        channels=_labelled(CHANNEL_LABELS),
        topics=sorted(topics.items(), key=lambda item: item[1]),
        **_count_tables(counts, topics),
        **_growth_view(growth),
        **listing,
        notice=notice,
    )


async def _listing(
    request: web.Request, conn: AsyncConnection, filters: directory.Filters
) -> dict[str, Any]:
    """One page of the people who match ``filters``, with the links to the other pages."""
    matching = await directory.count_matching(conn, filters)
    pages = Page.of(request.query.get("seite"), matching)
    found = await directory.search(conn, filters, offset=pages.offset, limit=pages.size)
    return {
        "found": [_found(row) for row in found],
        "matching": matching,
        "pages": pages,
        "query": {
            "q": filters.text,
            "status": filters.status,
            "thema": filters.topic,
            "kanal": filters.channel,
        },
    }


def _count_tables(counts: directory.Counts, topics: dict[str, str]) -> dict[str, Any]:
    unknown = sorted((code, n) for code, n in counts.by_topic.items() if code not in topics)
    return {
        "by_status": [
            (text, counts.by_status.get(code, 0)) for code, text in _labelled(STATUS_LABELS)
        ],
        "by_topic": [(name, counts.by_topic.get(code, 0)) for code, name in topics.items()]
        + unknown,
        "without_topic": counts.without_topic,
        "by_channel": [(text, counts.by_channel[code]) for code, text in _labelled(CHANNEL_LABELS)],
    }


async def _subscriber(request: web.Request) -> web.Response:
    user = await require(request, staff_role(Action.READ_SUBSCRIBERS))
    subscriber_id = int(request.match_info["id"])
    async with context_of(request).engine.connect() as conn:
        row = await _row(conn, subscriber_id)
        topics = await directory.topics_of(conn, subscriber_id)
        proof = await history(conn, subscriber_id)
    names = _topic_names(request)
    return staff_page(
        request,
        "admin_abonnenten_person.html.j2",
        user,
        person=_person(row),
        topics=[names.get(topic, topic) for topic in topics],
        proof=[
            {
                "at": local_time(event.at),
                "event": label(CONSENT_LABELS, event.event),
                "channel": label(CHANNEL_LABELS, event.channel or ""),
                "source": event.source or "",
                "ip": event.ip or "",
                "version": event.consent_version or "",
                "detail": detail_text(event.detail),
            }
            for event in proof
        ],
        may_erase=may(user, Action.ERASE_SUBSCRIBER),
    )


async def _erase_form(request: web.Request) -> web.Response:
    user = await require(request, staff_role(Action.ERASE_SUBSCRIBER))
    async with context_of(request).engine.connect() as conn:
        row = await _row(conn, int(request.match_info["id"]))
    return staff_page(request, "admin_abonnenten_loeschen.html.j2", user, person=_person(row))


async def _erase(request: web.Request) -> web.Response:
    user = await require(request, staff_role(Action.ERASE_SUBSCRIBER))
    form = await request.post()
    check_csrf(request, form)
    subscriber_id = int(request.match_info["id"])
    if form.get("confirm") != "yes":
        raise web.HTTPSeeOther(f"/admin/abonnenten/{subscriber_id}/loeschen")
    context = context_of(request)
    key = context.settings.security.secret_key.get_secret_value().encode()
    if not await gdpr.erase_subscriber(context.engine, subscriber_id, key):
        raise web.HTTPNotFound(text=_("Diese Person gibt es nicht (mehr)."))
    async with context.engine.begin() as conn:  # who erased whom by id: never the address
        await audit(
            conn, user, "subscriber.erased", {"subscriber_id": subscriber_id}, client_ip(request)
        )
    raise web.HTTPSeeOther("/admin/abonnenten?meldung=geloescht")


async def _export(request: web.Request) -> web.StreamResponse:
    """Everyone, as CSV (spreadsheets) or JSON lines (other programs), streamed in batches."""
    user = await require(request, staff_role(Action.READ_SUBSCRIBERS))
    kind = "jsonl" if request.query.get("format") == "jsonl" else "csv"
    context = context_of(request)
    async with context.engine.begin() as conn:
        await audit(conn, user, "subscribers.exported", {"format": kind}, client_ip(request))
    stamp = utcnow().astimezone(LOCAL_TZ).strftime("%Y-%m-%d")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8"
            if kind == "csv"
            else "application/x-ndjson; charset=utf-8",
            "Content-Disposition": f'attachment; filename="abonnenten-{stamp}.{kind}"',
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    if kind == "csv":
        await response.write(_csv_line(EXPORT_FIELDS))
    async for person in gdpr.export_all(context.engine):
        line = (
            json.dumps(person, ensure_ascii=False) + "\n"
            if kind == "jsonl"
            else _csv_line(_csv_values(person))
        )
        await response.write(line.encode() if isinstance(line, str) else line)
    await response.write_eof()
    return response


async def _row(conn: AsyncConnection, subscriber_id: int) -> Row[Any]:
    row = (await conn.execute(select(subscribers).where(subscribers.c.id == subscriber_id))).first()
    if row is None:
        raise web.HTTPNotFound(text=_("Diese Person gibt es nicht (mehr)."))
    return row


def _person(row: Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "email": row.email or "",
        "name": row.name or "",
        "telegram": str(row.telegram_chat_id) if row.telegram_chat_id is not None else "",
        "language": row.language,
        "status": label(STATUS_LABELS, row.status),
        "source": row.source,
        "created_at": local_time(row.created_at),
        "confirmed_at": local_time(row.confirmed_at),
        "paused_until": local_time(row.paused_until),
        "consent_version": row.consent_version or "",
    }


def _found(found: directory.Found) -> dict[str, Any]:
    return {
        "id": found.id,
        "email": found.email or "",
        "name": found.name or "",
        "telegram": found.telegram_chat_id is not None,
        "status": label(STATUS_LABELS, found.status),
        "created_at": local_time(found.created_at),
    }


def _growth_view(growth: directory.Growth) -> dict[str, Any]:
    """Two charts (new per week as bars, the running total as a line) and their table."""
    labels = tuple(local_date(week) for week in growth.weeks)
    new = Chart(
        ident="neu",
        title=_("Neue bestätigte Abonnent·innen je Woche"),
        description=_(
            "Balken: neu bestätigte Anmeldungen in jeder der letzten {n} Wochen; dieselben Zahlen "
            "stehen in der Tabelle."
        ).format(n=len(growth.weeks)),
        labels=labels,
        series=(Series(name=_("neu bestätigt"), values=tuple(float(n) for n in growth.new)),),
        bars=True,
    )
    total = Chart(
        ident="gesamt",
        title=_("Bestätigte Abonnent·innen insgesamt"),
        description=_(
            "Linie: alle bis zum Ende jeder Woche bestätigten Anmeldungen (ohne gelöschte "
            "Personen); dieselben Zahlen stehen in der Tabelle."
        ),
        labels=labels,
        series=(Series(name=_("insgesamt"), values=tuple(float(n) for n in growth.total)),),
    )
    return {
        "new_chart": svg(new),
        "total_chart": svg(total),
        "growth_rows": list(zip(labels, growth.new, growth.total, strict=True)),
    }


def _csv_values(person: dict[str, Any]) -> list[str]:
    values = {**person, "topics": " ".join(person.get("topics", []))}
    return [_cell(values.get(field)) for field in EXPORT_FIELDS]


def _cell(value: Any) -> str:
    """A CSV cell a spreadsheet will not run as a formula (a name may start with „=“)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_line(values: Any) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue().encode()


def _labelled(labels: dict[str, str]) -> list[tuple[str, str]]:
    return [(code, _(label)) for code, label in labels.items()]


def _choice(request: web.Request, name: str, allowed: dict[str, Any]) -> str:
    value = request.query.get(name, "")
    return value if value in allowed else ""


def _topic_names(request: web.Request) -> dict[str, str]:
    language = current_locale()
    return {
        topic.id: topic.en if language == "en" else topic.de
        for topic in context_of(request).settings.subscribers.topics
    }
