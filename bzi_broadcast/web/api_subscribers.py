"""REST handlers for subscribers: list, CSV import and export for publishers and admins, erasure
for admins only (as in the workspace; the roles come from ``staff.permissions``).

The import and the export are the CLI's (``subscribers.store``, ``subscribers.gdpr``); the list
shows no secrets (no chat ids, no tokens). Import, export and erasure are audited; the audit
keeps no address of an erased person.
"""

from __future__ import annotations

import csv
import json
from typing import Any

from aiohttp import web
from sqlalchemy import ColumnElement, func, or_, select

from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff.workflow import audit
from bzi_broadcast.store.schema import subscriber_topics, subscribers
from bzi_broadcast.subscribers import gdpr
from bzi_broadcast.subscribers.store import ImportOptions, ImportReport, import_lines, parse_csv
from bzi_broadcast.web.api_io import Call, parse_body, read_json
from bzi_broadcast.web.api_models import (
    EraseRequest,
    ExportQuery,
    ImportProblem,
    ImportQuery,
    ImportResult,
    Subscriber,
    SubscriberPage,
    SubscriberQuery,
)
from bzi_broadcast.web.api_problems import ApiProblem, json_response
from bzi_broadcast.web.app import SECURITY_HEADERS

IMPORT_MAX_BYTES = 8 * 1024 * 1024  # more than the app's 256 KiB: a list of ~80,000 people
JSON_LINES = "application/x-ndjson"


async def list_subscribers(call: Call) -> web.Response:
    query = call.params(SubscriberQuery)
    where = _filters(query)
    async with call.context.engine.connect() as conn:
        total = (
            await conn.execute(select(func.count()).select_from(subscribers).where(*where))
        ).scalar_one()
        rows = (
            await conn.execute(
                select(subscribers)
                .where(*where)
                .order_by(subscribers.c.id)
                .limit(query.per_page)
                .offset((query.page - 1) * query.per_page)
            )
        ).all()
        topics: dict[int, list[str]] = {}
        for subscriber_id, topic in await conn.execute(
            select(subscriber_topics.c.subscriber_id, subscriber_topics.c.topic)
            .where(subscriber_topics.c.subscriber_id.in_([row.id for row in rows]))
            .order_by(subscriber_topics.c.topic)
        ):
            topics.setdefault(subscriber_id, []).append(topic)
    items = [_subscriber(row, topics.get(row.id, [])) for row in rows]
    page = SubscriberPage(items=items, page=query.page, per_page=query.per_page, total=total)
    return json_response(page.model_dump(mode="json"))


def _filters(query: SubscriberQuery) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if query.status is not None:
        where.append(subscribers.c.status == str(query.status))
    if query.q:
        escaped = query.q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        where.append(
            or_(
                func.lower(subscribers.c.email).like(pattern, escape="\\"),
                func.lower(subscribers.c.name).like(pattern, escape="\\"),
            )
        )
    return where


def _subscriber(row: Any, topics: list[str]) -> Subscriber:
    return Subscriber(
        id=row.id,
        email=row.email,
        name=row.name,
        language=row.language,
        status=row.status,
        source=row.source,
        created_at=row.created_at,
        confirmed_at=row.confirmed_at,
        paused_until=row.paused_until,
        consent_version=row.consent_version,
        topics=topics,
        telegram=row.telegram_chat_id is not None,
    )


async def import_subscribers(call: Call) -> web.Response:
    """A CSV file as ``bzi-broadcast subscribers import`` reads it; every line's fate reported."""
    if call.request.content_type != "text/csv":
        raise ApiProblem(415, _("Erwartet wird text/csv."))
    raw = await call.request.clone(client_max_size=IMPORT_MAX_BYTES).read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        detail = _("Der Inhalt ist nicht UTF-8-kodiert (Byte {offset}).").format(offset=exc.start)
        raise ApiProblem(400, detail) from None
    report = ImportReport()
    try:
        lines = list(parse_csv(text, report))
    except csv.Error as exc:
        detail = _("Die CSV-Datei kann nicht gelesen werden: {reason}").format(reason=exc)
        raise ApiProblem(400, detail) from None
    settings = call.context.settings
    options = ImportOptions(
        consent_proven=call.params(ImportQuery).consent_proven,
        file_name="api",
        consent_version=settings.subscribers.consent_version,
    )
    engine = call.context.engine
    await import_lines(engine, lines, report, _key(call), options)
    counts = {"imported": report.imported, "skipped": len(report.problems)}
    async with engine.begin() as conn:
        await audit(conn, call.user, "subscribers.imported", counts, call.ip)
    result = ImportResult(
        imported=report.imported,
        skipped=len(report.problems),
        problems=[ImportProblem(line=line, detail=text) for line, text in sorted(report.problems)],
    )
    return json_response(result.model_dump(mode="json"))


async def export_subscribers(call: Call) -> web.StreamResponse:
    """Everyone, as one JSON array or as JSON lines, streamed (memory stays flat)."""
    lines = call.params(ExportQuery).format == "jsonl"
    engine = call.context.engine
    async with engine.begin() as conn:
        await audit(conn, call.user, "subscribers.exported", None, call.ip)
    response = web.StreamResponse(headers=SECURITY_HEADERS)
    response.content_type = JSON_LINES if lines else "application/json"
    response.charset = "utf-8"
    await response.prepare(call.request)
    first = True
    async for row in gdpr.export_all(engine):
        text = json.dumps(row, ensure_ascii=False)
        await response.write((text + "\n" if lines else ("[" if first else ",") + text).encode())
        first = False
    if not lines:
        await response.write(b"[]" if first else b"]")
    await response.write_eof()
    return response


async def erase_subscriber(call: Call) -> web.Response:
    """GDPR Art. 17 by address: the person is gone, only a keyed hash of the address stays."""
    body = parse_body(await read_json(call.request), EraseRequest)
    async with call.context.engine.connect() as conn:
        row = await gdpr.find(conn, body.email)
    if row is None:
        raise ApiProblem(404, _("Keine Abonnentin und kein Abonnent mit dieser Adresse."))
    return await _erase(call, row.id)


async def delete_subscriber(call: Call) -> web.Response:
    """The same by id: also for someone who only uses the Telegram bot."""
    return await _erase(call, call.id())


async def _erase(call: Call, subscriber_id: int) -> web.Response:
    engine = call.context.engine
    if not await gdpr.erase_subscriber(engine, subscriber_id, _key(call)):
        raise ApiProblem(404, _("Diese Person gibt es nicht."))
    async with engine.begin() as conn:
        await audit(conn, call.user, "subscriber.erased", {"id": subscriber_id}, call.ip)
    return web.Response(status=204)


def _key(call: Call) -> bytes:
    return call.context.settings.security.secret_key.get_secret_value().encode()
