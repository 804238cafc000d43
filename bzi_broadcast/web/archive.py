"""The public archive (``/archiv``) and the Atom feed (``/feed.atom``) of sent announcements.

Only what went out and was not opted out (``archive: false``) appears, newest first, 20 a page;
each announcement's page is its web rendering. Nothing personal is on these pages.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from markupsafe import Markup
from sqlalchemy import Select, and_, func, or_, select, true

from bzi_broadcast.content.model import Announcement
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.store.schema import announcements
from bzi_broadcast.web.app import context_of, page

PAGE_SIZE = 20
LARGEST_ID = 2**63 - 1  # a BIGINT; a larger number in the address is no announcement (404)
FEED_SIZE = 20
CACHE = "public, max-age=300"


def setup(app: web.Application) -> None:
    app.router.add_get("/archiv", _list)
    app.router.add_get(r"/archiv/{id:\d+}", _show)
    app.router.add_get("/feed.atom", _feed)


def _published() -> Any:
    opted_out = announcements.c.content["archive"].as_boolean()
    return and_(
        announcements.c.status.in_(
            [str(AnnouncementStatus.SENT), str(AnnouncementStatus.PARTIALLY_FAILED)]
        ),
        or_(opted_out.is_(None), opted_out == true()),
    )


def _newest_first(query: Select[Any]) -> Select[Any]:
    return query.where(_published()).order_by(
        announcements.c.released_at.desc(), announcements.c.id.desc()
    )


async def _list(request: web.Request) -> web.Response:
    try:
        number = max(1, int(request.query.get("seite", "1")))
    except ValueError:
        number = 1
    engine = context_of(request).engine
    async with engine.connect() as conn:
        total = (
            await conn.execute(select(func.count()).select_from(announcements).where(_published()))
        ).scalar_one()
        pages = max(1, -(-total // PAGE_SIZE))
        if number > pages:  # before the offset is computed: a huge page number is just absent
            raise web.HTTPNotFound(text=_("Diese Seite des Archivs gibt es nicht."))
        rows = (
            await conn.execute(
                _newest_first(
                    select(announcements.c.id, announcements.c.title, announcements.c.released_at)
                )
                .limit(PAGE_SIZE)
                .offset((number - 1) * PAGE_SIZE)
            )
        ).all()
    response = page(
        request,
        "archiv.html.j2",
        entries=[(row.id, row.title, row.released_at) for row in rows],
        number=number,
        pages=pages,
    )
    response.headers["Cache-Control"] = CACHE
    return response


async def _show(request: web.Request) -> web.Response:
    context = context_of(request)
    digits = request.match_info["id"].lstrip("0") or "0"
    # compared as text first: int() refuses more than 4,300 digits (a ValueError, a 500)
    if len(digits) > len(str(LARGEST_ID)) or int(digits) > LARGEST_ID:
        raise web.HTTPNotFound(text=_("Diese Ankündigung gibt es im Archiv nicht."))
    wanted = int(digits)
    async with context.engine.connect() as conn:
        row = (
            await conn.execute(
                select(announcements.c.content, announcements.c.released_at).where(
                    announcements.c.id == wanted, _published()
                )
            )
        ).first()
    if row is None:
        raise web.HTTPNotFound(text=_("Diese Ankündigung gibt es im Archiv nicht."))
    announcement = Announcement.model_validate(row.content)
    rendition = context.renderer.web(announcement, updated=row.released_at)
    response = page(
        request,
        "archiv_eintrag.html.j2",
        title=announcement.title,
        article=Markup(rendition.html),  # noqa: S704 - our own rendering, escaped throughout
    )
    response.headers["Cache-Control"] = CACHE
    return response


async def _feed(request: web.Request) -> web.Response:
    context = context_of(request)
    settings = context.settings
    async with context.engine.connect() as conn:
        rows = (
            await conn.execute(
                _newest_first(
                    select(announcements.c.id, announcements.c.content, announcements.c.released_at)
                ).limit(FEED_SIZE)
            )
        ).all()
    domain = settings.organisation.feed_domain
    entries = []
    for row in rows:
        moment = row.released_at or datetime(1970, 1, 1, tzinfo=UTC)
        rendition = context.renderer.web(
            Announcement.model_validate(row.content),
            entry_id=f"tag:{domain},{moment.date().isoformat()}:archiv-{row.id}",
            updated=moment,
        )
        entries.append(Markup(rendition.atom_entry))  # noqa: S704 - rendered and escaped by us
    updated = rows[0].released_at if rows else datetime(1970, 1, 1, tzinfo=UTC)
    if request.if_modified_since and updated.replace(microsecond=0) <= request.if_modified_since:
        raise web.HTTPNotModified()
    base = settings.email.public_url.rstrip("/")
    xml = context.renderer.environment.get_template("web/feed.atom.j2").render(
        organisation=settings.organisation,
        feed_id=f"tag:{domain},2025:feed",
        self_url=f"{base}/feed.atom",
        archive_url=f"{base}/archiv",
        updated=updated,
        entries=entries,
    )
    response = web.Response(text=xml, content_type="application/atom+xml", charset="utf-8")
    response.headers["Cache-Control"] = CACHE
    response.last_modified = updated
    return response
