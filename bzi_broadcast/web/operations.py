"""Operations endpoints: ``/readyz`` (can this process serve?) and ``/metrics`` (Prometheus).

``/healthz`` (in ``app``) only says the process is alive. ``/readyz`` checks the database, that
its schema is current, and reports each channel's health ("needs reconnect" and other pauses);
it answers 503 while the database is unreachable or behind. ``/metrics`` is the text exposition
format 0.0.4, computed from the database at scrape time, so every replica reports the same totals.
"""

from __future__ import annotations

import logging

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from bzi_broadcast.delivery import control
from bzi_broadcast.store.engine import is_current
from bzi_broadcast.store.schema import announcements, deliveries, subscribers
from bzi_broadcast.web.app import context_of

log = logging.getLogger(__name__)


def setup(app: web.Application) -> None:
    app.router.add_get("/readyz", _ready)
    app.router.add_get("/metrics", _metrics)


async def _ready(request: web.Request) -> web.Response:
    engine = context_of(request).engine
    try:
        current = await is_current(engine)
        paused = await control.paused_channels(engine)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("not ready: database unreachable (%s)", type(exc).__name__)
        return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    channels = {name: {"paused": True, "reason": reason} for name, reason in paused.items()}
    body = {
        "status": "ready" if current else "migrating",
        "database": "ok",
        "migrations": "current" if current else "behind",
        "channels": channels,
    }
    return web.json_response(body, status=200 if current else 503)


async def _metrics(request: web.Request) -> web.Response:
    engine = context_of(request).engine
    async with engine.connect() as conn:
        by_state = await conn.execute(
            select(deliveries.c.channel, deliveries.c.status, func.count()).group_by(
                deliveries.c.channel, deliveries.c.status
            )
        )
        delivery_lines = [
            f'bzi_deliveries{{channel="{channel}",state="{state}"}} {count}'
            for channel, state, count in by_state
        ]
        people = await conn.execute(
            select(subscribers.c.status, func.count()).group_by(subscribers.c.status)
        )
        subscriber_lines = [f'bzi_subscribers{{status="{s}"}} {n}' for s, n in people]
        messages = await conn.execute(
            select(announcements.c.status, func.count()).group_by(announcements.c.status)
        )
        announcement_lines = [f'bzi_announcements{{status="{s}"}} {n}' for s, n in messages]
    paused = await control.paused_channels(engine)
    lines = [
        "# HELP bzi_deliveries Delivery rows by channel and state.",
        "# TYPE bzi_deliveries gauge",
        *delivery_lines,
        "# HELP bzi_subscribers Subscribers by status.",
        "# TYPE bzi_subscribers gauge",
        *subscriber_lines,
        "# HELP bzi_announcements Announcements by status.",
        "# TYPE bzi_announcements gauge",
        *announcement_lines,
        "# HELP bzi_channel_paused 1 while a channel is paused (e.g. needs reconnect).",
        "# TYPE bzi_channel_paused gauge",
        *(f'bzi_channel_paused{{channel="{name}"}} 1' for name in sorted(paused)),
    ]
    return web.Response(
        text="\n".join(lines) + "\n",
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )
