"""Operations endpoints: ``/readyz`` (can this process serve?) and ``/metrics`` (Prometheus).

``/healthz`` (in ``app``) only says the process is alive. ``/readyz`` checks the database, that
its schema is current, and reports each channel's health ("needs reconnect" and other pauses);
it answers 503 while the database is unreachable or behind. ``/metrics`` is the text exposition
format 0.0.4, for a scraper that sends ``web.metrics_token`` as a bearer token; without a token
configured it answers 404 (the demo keeps it open). What the database records (deliveries by
state, queue depth, scheduler lag, failed logins, subscribers, announcements) is counted at scrape
time, so every replica reports the same totals; send latencies and rate-limiter waits are this
process's own (``bzi_broadcast.metrics``).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from bzi_broadcast.config import Settings
from bzi_broadcast.delivery import control
from bzi_broadcast.delivery.lifecycle import DeliveryStatus
from bzi_broadcast.metrics import CONTENT_TYPE, family, process_exposition
from bzi_broadcast.store.engine import is_current
from bzi_broadcast.store.schema import announcements, audit_log, deliveries, subscribers
from bzi_broadcast.web.app import CONTEXT, context_of

log = logging.getLogger(__name__)
LAG_RELEASES = 10  # the scheduler lag is reported over this many most recent releases


OPEN_METRICS = web.AppKey("open_metrics", bool)  # the demo: /metrics without a token
CHALLENGE = 'Bearer realm="metrics"'


def setup(app: web.Application) -> None:
    app.router.add_get("/readyz", _ready)
    app.router.add_get("/metrics", _metrics)
    app.on_startup.append(_warn_if_closed)


def open_metrics(app: web.Application) -> None:
    """For the demo, which has nothing to hide and no scraper to configure."""
    app[OPEN_METRICS] = True


async def _warn_if_closed(app: web.Application) -> None:
    if app[CONTEXT].settings.web.metrics_token is None and not app.get(OPEN_METRICS, False):
        log.warning(
            "metrics disabled: /metrics answers 404 until web.metrics_token "
            "(or BZI_WEB_METRICS_TOKEN_FILE) is set"
        )


def _check_scraper(request: web.Request) -> None:
    """404 while no token is configured (outside the demo); 401 unless the request brings it."""
    if request.app.get(OPEN_METRICS, False):
        return
    token = context_of(request).settings.web.metrics_token
    if token is None:
        raise web.HTTPNotFound()
    scheme, _sep, given = request.headers.get("Authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        error = ', error="invalid_token"' if scheme.lower() == "bearer" else ""
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": CHALLENGE + error})


def enabled_channels(settings: Settings) -> list[str]:
    return [
        name
        for name, on in (
            ("email", True),
            ("mastodon", settings.mastodon.enabled),
            ("telegram", settings.telegram.enabled),
        )
        if on
    ]


async def _ready(request: web.Request) -> web.Response:
    context = context_of(request)
    try:
        current = await is_current(context.engine)
        paused = await control.paused_channels(context.engine)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("not ready: database unreachable (%s)", type(exc).__name__)
        return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    channels: dict[str, dict[str, Any]] = {
        name: {"paused": False} for name in enabled_channels(context.settings)
    }
    channels.update({name: {"paused": True, "reason": why} for name, why in paused.items()})
    body = {
        "status": "ready" if current else "migrating",
        "database": "ok",
        "migrations": "current" if current else "behind",
        "channels": channels,
    }
    return web.json_response(body, status=200 if current else 503)


async def _metrics(request: web.Request) -> web.Response:
    _check_scraper(request)
    context = context_of(request)
    channels = enabled_channels(context.settings)
    try:
        async with context.engine.connect() as conn:
            lines = await _database_families(conn, channels)
        paused = await control.paused_channels(context.engine)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("metrics without database figures: unreachable (%s)", type(exc).__name__)
        lines, paused = [], {}
    lines += family(
        "bzi_channel_paused",
        "1 while a channel is paused (e.g. needs reconnect), else 0.",
        "gauge",
        [({"channel": name}, 1 if name in paused else 0) for name in sorted({*channels, *paused})],
    )
    lines += process_exposition()
    return web.Response(
        body=("\n".join(lines) + "\n").encode(),
        headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
    )


async def _database_families(conn: AsyncConnection, channels: list[str]) -> list[str]:
    by_state = await _grouped(conn, deliveries.c.channel, deliveries.c.status)
    queued = {
        channel: count
        for (channel, state), count in by_state.items()
        if state == str(DeliveryStatus.QUEUED)
    }
    people = await _grouped(conn, subscribers.c.status)
    messages = await _grouped(conn, announcements.c.status)
    failed_logins = (
        await conn.execute(
            select(func.count()).select_from(audit_log).where(audit_log.c.action == "login.failed")
        )
    ).scalar_one()
    lags = await _scheduler_lags(conn)
    return [
        *family(
            "bzi_deliveries",
            "Delivery rows by channel and state.",
            "gauge",
            [({"channel": c, "state": s}, n) for (c, s), n in sorted(by_state.items())],
        ),
        *family(
            "bzi_queue_depth",
            "Deliveries waiting to be sent (state queued), by channel.",
            "gauge",
            [({"channel": c}, queued.get(c, 0)) for c in sorted({*channels, *queued})],
        ),
        *family(
            "bzi_scheduler_lag_seconds",
            "Release time minus publish time of the most recent release.",
            "gauge",
            [({}, lags[0])] if lags else [],
        ),
        *family(
            "bzi_scheduler_lag_max_seconds",
            f"Largest release lag among the last {LAG_RELEASES} releases.",
            "gauge",
            [({}, max(lags))] if lags else [],
        ),
        *family(
            "bzi_failed_logins_total",
            "Failed staff logins (audit log action login.failed).",
            "counter",
            [({}, failed_logins)],
        ),
        *family(
            "bzi_subscribers",
            "Subscribers by status.",
            "gauge",
            [({"status": s}, n) for (s,), n in sorted(people.items())],
        ),
        *family(
            "bzi_announcements",
            "Announcements by status.",
            "gauge",
            [({"status": s}, n) for (s,), n in sorted(messages.items())],
        ),
    ]


async def _grouped(conn: AsyncConnection, *columns: Any) -> dict[tuple[str, ...], int]:
    rows = await conn.execute(select(*columns, func.count()).group_by(*columns))
    return {tuple(str(v) for v in row[:-1]): int(row[-1]) for row in rows}


async def _scheduler_lags(conn: AsyncConnection) -> list[float]:
    """Seconds between publish time and release, most recent release first."""
    rows = await conn.execute(
        select(announcements.c.released_at, announcements.c.publish_at)
        .where(announcements.c.released_at.is_not(None), announcements.c.publish_at.is_not(None))
        .order_by(announcements.c.released_at.desc())
        .limit(LAG_RELEASES)
    )
    return [max(0.0, (released - publish).total_seconds()) for released, publish in rows]
