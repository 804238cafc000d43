"""The delivery dashboard: progress, rate and ETA, sends over time, failures, channel health.

``GET /admin/ankuendigungen/{id}/versand`` shows one announcement's delivery to every staff
member; ``…/versand.json`` gives the same figures to ``/static/dashboard.js``, which refreshes the
bars every two seconds while sending (the page works without it). Publishers re-queue the failed
deliveries and pause or resume a channel; each action is audited. A pause is written to
``channel_state``: the running service's workers adopt it at their next sweep
(``delivery.sweep_interval``) and hand back what they had claimed but not yet sent. A Mastodon
thread that stopped for good half-way is shown as incomplete, with links to the posted parts and
two ways out for publishers: publish the rest, or delete what was posted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from bzi_broadcast.bounces.effects import tally as bounce_tally
from bzi_broadcast.bounces.parse import Kind
from bzi_broadcast.delivery import control, progress
from bzi_broadcast.delivery.control import Cancellation
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.delivery.progress import CHANNELS, ChannelProgress, Timeline
from bzi_broadcast.i18n import N_, ngettext
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff import threads, workflow
from bzi_broadcast.staff.accounts import User
from bzi_broadcast.staff.permissions import Action, may, staff_role
from bzi_broadcast.staff.threads import Removal, StatusRemover
from bzi_broadcast.staff.workflow import NotAllowed, audit, status_label
from bzi_broadcast.store.announcements import TransitionError, utcnow
from bzi_broadcast.store.parts import Parts, Thread
from bzi_broadcast.store.schema import announcements
from bzi_broadcast.web.admin import require, staff_page
from bzi_broadcast.web.app import CONTEXT, check_csrf, client_ip, context_of
from bzi_broadcast.web.charts import Chart, Series, legend, svg
from bzi_broadcast.web.display import local_time, mask_recipient

S = AnnouncementStatus
STATES = ("sent", "failed", "cancelled", "sending", "queued")
CHANNEL_LABELS = {"email": N_("E-Mail"), "mastodon": "Mastodon", "telegram": "Telegram"}
STATE_LABELS = {
    "queued": N_("wartend"),
    "sending": N_("in Arbeit"),
    "sent": N_("gesendet"),
    "failed": N_("fehlgeschlagen"),
    "cancelled": N_("abgebrochen"),
}
REPORT_LABELS = {  # what came back to the bounce mailbox (bzi_broadcast/bounces/)
    Kind.HARD: N_("unzustellbar (dauerhaft)"),
    Kind.SOFT: N_("unzustellbar (vorübergehend)"),
    Kind.COMPLAINT: N_("Beschwerden"),
}
RETRYABLE = (S.SENDING, S.PARTIALLY_FAILED)
CANCEL_COUNTS = {  # in the URL after a cancel: numbers only, never text
    "gestoppt": "stopped",
    "gesendet": "sent",
    "unterwegs": "in_flight",
    "fehlgeschlagen": "failed",
}
REMOVER = "mastodon_remover"  # key in the web context's extras: the channel staff delete with


def setup(app: web.Application) -> None:
    base = r"/admin/ankuendigungen/{id:\d+}/versand"
    app.router.add_get(base, _dashboard)
    app.router.add_get(base + ".json", _figures_json)
    app.router.add_post(base + "/wiederholen", _retry_failed)
    app.router.add_post(base + "/pausieren", _pause)
    app.router.add_post(base + "/fortsetzen", _resume)
    app.router.add_post(base + "/thread/rest", _publish_rest)
    app.router.add_post(base + "/thread/loeschen", _delete_published)
    app.on_cleanup.append(_close_remover)


async def _dashboard(request: web.Request) -> web.Response:
    user = await require(request)
    return await _show(request, user, _notice(request))


async def _show(request: web.Request, user: User, notice: str | None) -> web.Response:
    announcement_id = int(request.match_info["id"])
    async with context_of(request).engine.connect() as conn:
        row = await _announcement(conn, announcement_id)
        channels = await _channels(request, conn, row)
        reasons, latest = await progress.failures(conn, announcement_id)
        timeline = await progress.timeline(conn, announcement_id)
        reported = await bounce_tally(conn, announcement_id)
    threads = await Parts(context_of(request).engine).threads(announcement_id)
    chart = _chart(timeline)
    return staff_page(
        request,
        "admin_versand.html.j2",
        user,
        wide=True,
        item=_summary(row),
        channels=[_channel_view(c) for c in channels],
        states=[(state, _(STATE_LABELS[state])) for state in STATES],
        may_act=may(user, Action.MANAGE_SENDING),
        retryable=row.status in RETRYABLE,
        reasons=[(_channel_label(r.channel), r.reason, r.count) for r in reasons],
        reported=[(str(kind), _(REPORT_LABELS[kind]), count) for kind, count in reported.items()],
        latest=[
            (
                _channel_label(f.channel),
                mask_recipient(f.channel, f.recipient),
                f.reason,
                f.attempts,
            )
            for f in latest
        ],
        chart=svg(chart) if chart else None,
        chart_legend=legend(chart) if chart else [],
        chart_rows=_chart_rows(timeline),
        chart_channels=[_channel_label(name) for name in sorted(timeline.counts)]
        if timeline
        else [],
        thread=[
            (part.part + 1, _web_url(part.url), part.remote_id or "")
            for t in threads
            for part in t.posted
        ],
        incomplete=[_incomplete_view(t) for t in threads if t.incomplete],
        may_delete=context_of(request).settings.mastodon.enabled,
        notice=notice,
        live=row.status in (S.SCHEDULED, S.SENDING),
    )


async def _figures_json(request: web.Request) -> web.Response:
    """The figures ``dashboard.js`` refreshes the page with."""
    await require(request)
    announcement_id = int(request.match_info["id"])
    async with context_of(request).engine.connect() as conn:
        row = await _announcement(conn, announcement_id)
        channels = await _channels(request, conn, row)
    status = row.status
    return web.json_response(
        {
            "id": announcement_id,
            "status": str(status),
            "status_label": status_label(status),
            "live": status in (S.SCHEDULED, S.SENDING),
            "channels": [_channel_view(c) for c in channels],
        },
        headers={"Cache-Control": "no-store"},
    )


async def _retry_failed(request: web.Request) -> web.Response:
    user, announcement_id, _form = await _action(request)
    engine = context_of(request).engine
    try:
        requeued = await workflow.retry_failed(engine, announcement_id, user, ip=client_ip(request))
    except TransitionError as exc:
        raise web.HTTPConflict(text=exc.message) from None
    raise web.HTTPSeeOther(f"{_url(announcement_id)}?meldung=erneut&anzahl={requeued}")


def cancelled_url(announcement_id: int, report: Cancellation) -> str:
    """Where a cancel with deliveries goes: this page, saying what became of them."""
    counts = "&".join(f"{key}={getattr(report, name)}" for key, name in CANCEL_COUNTS.items())
    return f"{_url(announcement_id)}?meldung=abgebrochen&{counts}"


async def _pause(request: web.Request) -> web.Response:
    return await _set_paused(request, paused=True)


async def _resume(request: web.Request) -> web.Response:
    return await _set_paused(request, paused=False)


async def _set_paused(request: web.Request, *, paused: bool) -> web.Response:
    user, announcement_id, form = await _action(request)
    channel = str(form.get("channel", ""))
    if channel not in CHANNELS:
        raise web.HTTPBadRequest(text=_("Diesen Kanal gibt es nicht."))
    reason = _("pausiert von {name}").format(name=user.name) if paused else None
    await control.set_paused(context_of(request).engine, channel, paused, reason)
    action = "channel.paused" if paused else "channel.resumed"
    await _audit(request, user, action, {"channel": channel, "id": announcement_id})
    outcome = "pausiert" if paused else "fortgesetzt"
    raise web.HTTPSeeOther(f"{_url(announcement_id)}?meldung={outcome}&kanal={channel}")


async def _publish_rest(request: web.Request) -> web.Response:
    user, announcement_id, form = await _action(request)
    engine = context_of(request).engine
    delivery_id = _delivery_id(form)
    try:
        await threads.publish_rest(
            engine, announcement_id, delivery_id, user, ip=client_ip(request)
        )
    except NotAllowed as exc:
        raise web.HTTPForbidden(text=exc.message) from None
    except TransitionError as exc:
        raise web.HTTPConflict(text=exc.message) from None
    raise web.HTTPSeeOther(f"{_url(announcement_id)}?meldung=thread-fortgesetzt")


async def _delete_published(request: web.Request) -> web.Response:
    """Delete the posted parts; when one fails, the page says which and why (no redirect: the
    reasons are the server's words, which never travel in a URL)."""
    user, announcement_id, form = await _action(request)
    engine = context_of(request).engine
    try:
        removal = await threads.delete_published(
            engine,
            announcement_id,
            _delivery_id(form),
            user,
            _remover(request),
            ip=client_ip(request),
        )
    except NotAllowed as exc:
        raise web.HTTPForbidden(text=exc.message) from None
    except TransitionError as exc:
        raise web.HTTPConflict(text=exc.message) from None
    if removal.failed:
        return await _show(request, user, _removal_notice(removal))
    count = len(removal.deleted)
    raise web.HTTPSeeOther(f"{_url(announcement_id)}?meldung=thread-geloescht&anzahl={count}")


def _delivery_id(form: MultiDictProxy[Any]) -> int:
    raw = str(form.get("delivery", ""))
    if not raw.isdigit():
        raise web.HTTPBadRequest(text=_("Welche Zustellung? Die Angabe fehlt."))
    return int(raw)


def _remover(request: web.Request) -> StatusRemover:
    """The Mastodon channel staff delete with, made on first use (closed with the app)."""
    context = context_of(request)
    if not context.settings.mastodon.enabled:
        raise web.HTTPConflict(text=_("Mastodon ist nicht eingerichtet."))
    remover: StatusRemover | None = context.extras.get(REMOVER)
    if remover is None:
        # Imported here: the service imports this module (for its routes).
        from bzi_broadcast.service import mastodon_channel

        remover = context.extras[REMOVER] = mastodon_channel(
            context.settings, context.renderer, context.engine
        )
    return remover


async def _close_remover(app: web.Application) -> None:
    channel = app[CONTEXT].extras.pop(REMOVER, None)
    if channel is not None:
        await channel.aclose()


def _incomplete_view(thread: Thread) -> dict[str, Any]:
    return {
        "delivery_id": thread.delivery_id,
        "headline": _("Thread unvollständig ({posted} von {total} veröffentlicht)").format(
            posted=len(thread.posted), total=thread.total
        ),
    }


def _removal_notice(removal: Removal) -> str:
    deleted = ngettext("{n} Teil gelöscht.", "{n} Teile gelöscht.", len(removal.deleted)).format(
        n=len(removal.deleted)
    )
    failed = "; ".join(
        _("Teil {n} nicht gelöscht: {reason}").format(n=n, reason=reason)
        for n, reason in removal.failed
    )
    return f"{deleted} {failed}"


async def _action(request: web.Request) -> tuple[User, int, Any]:
    """A publisher's POST with a valid CSRF token, about an announcement that exists."""
    user = await require(request, staff_role(Action.MANAGE_SENDING))
    form = await request.post()
    check_csrf(request, form)
    announcement_id = int(request.match_info["id"])
    async with context_of(request).engine.connect() as conn:
        await _announcement(conn, announcement_id)
    return user, announcement_id, form


async def _audit(request: web.Request, user: User, action: str, detail: dict[str, Any]) -> None:
    async with context_of(request).engine.begin() as conn:
        await audit(conn, user, action, detail, client_ip(request))


@dataclass(frozen=True, kw_only=True)
class Item:
    """The announcement whose delivery the dashboard shows."""

    id: int
    title: str
    status: AnnouncementStatus
    publish_at: datetime | None
    released_at: datetime | None
    finished_at: datetime | None


async def _announcement(conn: AsyncConnection, announcement_id: int) -> Item:
    row = (
        await conn.execute(
            select(
                announcements.c.id,
                announcements.c.title,
                announcements.c.status,
                announcements.c.publish_at,
                announcements.c.released_at,
                announcements.c.finished_at,
            ).where(announcements.c.id == announcement_id)
        )
    ).one_or_none()
    if row is None:
        raise web.HTTPNotFound(text=_("Ankündigung {id} gibt es nicht").format(id=announcement_id))
    return Item(**{**row._mapping, "status": row.status})


async def _channels(
    request: web.Request, conn: AsyncConnection, row: Item
) -> list[ChannelProgress]:
    settings = context_of(request).settings
    enabled = tuple(
        name
        for name, on in (
            ("email", True),
            ("mastodon", settings.mastodon.enabled),
            ("telegram", settings.telegram.enabled),
        )
        if on
    )
    return await progress.channels(
        conn, row.id, enabled=enabled, sending=row.status == S.SENDING, now=utcnow()
    )


def _summary(row: Item) -> dict[str, Any]:
    status = row.status
    return {
        "id": row.id,
        "title": row.title,
        "status": str(status),
        "status_label": status_label(status),
        "publish_at": local_time(row.publish_at),
        "released_at": local_time(row.released_at),
        "finished_at": local_time(row.finished_at),
    }


def _channel_view(c: ChannelProgress) -> dict[str, Any]:
    """One channel's figures as the page and the JSON show them (shares in percent)."""
    total = c.counts.total
    counts = {state: getattr(c.counts, state) for state in STATES}
    return {
        "channel": c.channel,
        "label": _channel_label(c.channel),
        **counts,
        "total": total,
        "done": c.done,
        "shares": {state: round(100 * n / total, 2) if total else 0 for state, n in counts.items()},
        "summary": _("{done} von {total} erledigt").format(done=c.done, total=total),
        "per_minute": c.per_minute,
        "eta_seconds": c.eta_seconds,
        "eta": eta_text(c.eta_seconds),
        "paused": c.paused,
        "pause_reason": c.pause_reason or "",
        "paused_since": local_time(c.paused_since) if c.paused else "",
        "last_error": c.last_error or "",
    }


def eta_text(seconds: float | None) -> str:
    """„noch etwa 4 Minuten“ – rounded up, in minutes or hours."""
    if seconds is None:
        return ""
    if seconds < 60:
        return _("weniger als eine Minute")
    minutes = int(-(-seconds // 60))
    if minutes < 120:
        return ngettext("noch etwa {n} Minute", "noch etwa {n} Minuten", minutes).format(n=minutes)
    hours = round(minutes / 60)
    return ngettext("noch etwa {n} Stunde", "noch etwa {n} Stunden", hours).format(n=hours)


def _chart(timeline: Timeline | None) -> Chart | None:
    if timeline is None:
        return None
    names = sorted(timeline.counts)
    minutes = int(timeline.width.total_seconds() // 60)
    per = (
        _("pro Minute")
        if minutes == 1
        else ngettext("pro {n} Minute", "pro {n} Minuten", minutes).format(n=minutes)
    )
    return Chart(
        ident="sends",
        title=_("Sendungen im Zeitverlauf ({per})").format(per=per),
        description=_(
            "Gesendete Nachrichten je Zeitabschnitt und Kanal von {start} bis {end}; dieselben "
            "Zahlen stehen in der Tabelle darunter."
        ).format(
            start=local_time(timeline.starts[0]),
            end=local_time(timeline.starts[-1] + timeline.width),
        ),
        labels=tuple(_clock(moment, timeline) for moment in timeline.starts),
        series=tuple(
            Series(name=_channel_label(n), values=tuple(float(v) for v in timeline.counts[n]))
            for n in names
        ),
    )


def _chart_rows(timeline: Timeline | None) -> list[tuple[str, list[int]]]:
    if timeline is None:
        return []
    names = sorted(timeline.counts)
    return [
        (local_time(moment), [timeline.counts[n][i] for n in names])
        for i, moment in enumerate(timeline.starts)
    ]


def _clock(moment: datetime, timeline: Timeline) -> str:
    """The axis label: the time of day, with the date when the send spans several days."""
    text = local_time(moment)
    spans_days = (timeline.starts[-1] - timeline.starts[0]).days >= 1
    return text if spans_days else text.rsplit(", ", 1)[-1]


def _notice(request: web.Request) -> str | None:
    """The outcome of the action that redirected here (codes only: no text from the URL)."""
    kind = request.query.get("meldung")
    channel = request.query.get("kanal", "")
    if kind == "erneut":
        raw = request.query.get("anzahl", "")
        count = int(raw) if raw.isdigit() else 0
        return ngettext(
            "{n} fehlgeschlagene Zustellung wird erneut gesendet.",
            "{n} fehlgeschlagene Zustellungen werden erneut gesendet.",
            count,
        ).format(n=count)
    if kind in ("pausiert", "fortgesetzt") and channel in CHANNELS:
        message = (
            _("{channel} ist pausiert; was gerade gesendet wird, hält in wenigen Sekunden an.")
            if kind == "pausiert"
            else _("{channel} sendet wieder.")
        )
        return message.format(channel=_channel_label(channel))
    if kind == "abgebrochen":
        return _cancel_notice(request)
    if kind == "thread-fortgesetzt":
        return _("Der Rest des Mastodon-Threads wird veröffentlicht.")
    if kind == "thread-geloescht":
        raw = request.query.get("anzahl", "")
        count = int(raw) if raw.isdigit() else 0
        return ngettext(
            "{n} veröffentlichter Teil des Threads wurde gelöscht.",
            "{n} veröffentlichte Teile des Threads wurden gelöscht.",
            count,
        ).format(n=count)
    return None


def _cancel_notice(request: web.Request) -> str:
    """„Abgebrochen: 2400 Zustellungen gestoppt, 600 bereits gesendet, 0 noch unterwegs.“"""
    numbers = {
        name: int(raw) if (raw := request.query.get(key, "")).isdigit() else 0
        for key, name in CANCEL_COUNTS.items()
    }
    report = Cancellation(**numbers)
    text = _("Abgebrochen: {summary}.").format(summary=report.summary())
    if report.in_flight:
        text += " " + _(
            "Was noch unterwegs ist, kann noch ankommen; die Balken zeigen den aktuellen Stand."
        )
    return text


def _channel_label(channel: str) -> str:
    label = CHANNEL_LABELS.get(channel)
    return _(label) if label else channel


def _web_url(url: str | None) -> str:
    """A link the server returned, if it is one a browser should follow."""
    return url if url and url.startswith(("https://", "http://")) else ""


def _url(announcement_id: int) -> str:
    return f"/admin/ankuendigungen/{announcement_id}/versand"
