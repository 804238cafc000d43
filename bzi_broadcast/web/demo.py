"""``/demo`` (demo mode only): what the local mail, Mastodon and Telegram servers received.

Emails are shown as sent: the HTML part in a sandboxed ``iframe`` (``srcdoc``; no scripts, links
open in a new tab), the text part below it. The Mastodon thread is shown in reply order, each
Telegram chat as message bubbles. "Beispiel jetzt senden" (a CSRF-protected POST) takes the
example through review and schedules it a few seconds ahead. The page reloads itself when
something new arrived (``/static/demo.js``; without JavaScript a slower meta refresh).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from aiohttp import web
from markupsafe import Markup, escape

from bzi_broadcast.demo import DemoState, LocalServers, send_example
from bzi_broadcast.errors import BroadcastError, NotFoundError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff import workflow
from bzi_broadcast.testing.telegram import Sent
from bzi_broadcast.web.app import check_csrf, context_of, csrf_token, page

if TYPE_CHECKING:
    from bzi_broadcast.testing.smtp import Received  # aiosmtpd: a development dependency

BERLIN = ZoneInfo("Europe/Berlin")
SERVERS = web.AppKey("demo_servers", LocalServers)
STATE = web.AppKey("demo_state", DemoState)
TELEGRAM_TAGS = {
    "bold": "strong",
    "italic": "em",
    "underline": "u",
    "strikethrough": "s",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
}


def demo_setup(servers: LocalServers, state: DemoState) -> Callable[[web.Application], None]:
    def setup(app: web.Application) -> None:
        app[SERVERS] = servers
        app[STATE] = state
        app.router.add_get("/demo", _show)
        app.router.add_get("/demo/stand", _stand)
        app.router.add_post("/demo/senden", _send)

    return setup


async def _show(request: web.Request) -> web.Response:
    sent = request.query.get("gesendet", "")
    return await _page(request, sent=int(sent) if sent.isdigit() else None)


async def _page(
    request: web.Request, *, sent: int | None = None, problem: str | None = None, status: int = 200
) -> web.Response:
    servers = request.app[SERVERS]
    holder = web.Response()
    token = csrf_token(request, holder)
    rendered = page(
        request,
        "demo.html.j2",
        status=status,
        csrf=token,
        stand=await _stand_of(request),
        announcement=await _announcement(request),
        sent=sent,
        problem=problem,
        emails=[_email(r) for r in reversed(servers.smtp.received)],
        threads=_threads(servers.mastodon.thread()),
        chats=_chats(servers),
    )
    rendered.cookies.update(holder.cookies)
    rendered.headers["Cache-Control"] = "no-store"
    return rendered


async def _stand(request: web.Request) -> web.Response:
    """A fingerprint of what arrived; demo.js reloads the page when it changes."""
    return web.json_response({"stand": await _stand_of(request)})


async def _stand_of(request: web.Request) -> str:
    servers = request.app[SERVERS]
    announcement = await _announcement(request)
    return "-".join(
        str(part)
        for part in (
            len(servers.smtp.received),
            len(servers.mastodon.statuses),
            len(servers.telegram.sent),
            announcement["status"] if announcement else "",
        )
    )


async def _send(request: web.Request) -> web.Response:
    form = await request.post()
    check_csrf(request, form)
    try:
        announcement_id, _at = await send_example(context_of(request).engine, request.app[STATE])
    except BroadcastError as exc:
        return await _page(request, problem=exc.message, status=409)
    raise web.HTTPSeeOther(f"/demo?gesendet={announcement_id}")


async def _announcement(request: web.Request) -> dict[str, Any] | None:
    draft_id = request.app[STATE].draft_id
    if draft_id is None:
        return None
    try:
        draft = await workflow.load(context_of(request).engine, draft_id)
    except NotFoundError:
        return None
    return {
        "id": draft.id,
        "title": draft.announcement.title,
        "status": str(draft.status),
        "label": workflow.status_label(draft.status),
        "publish_at": _time(draft.publish_at) if draft.publish_at else None,
    }


def _email(received: Received) -> dict[str, Any]:
    message = received.message()
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    return {
        "subject": str(message.get("Subject", "")),
        "to": received.recipient,
        "at": _time(received.at),
        "html": _links_in_new_tab(str(html.get_content())) if html else None,
        "text": str(text.get_content()) if text else "",
    }


def _links_in_new_tab(html: str) -> str:
    """Links in the sandboxed frame open a new tab (the pages refuse to be framed)."""
    base = '<base target="_blank">'
    at = html.lower().find("<head>")
    return html[: at + 6] + base + html[at + 6 :] if at >= 0 else base + html


def _threads(statuses: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Each thread from its first status down its replies (statuses come in creation order)."""
    known = {s["id"] for s in statuses}
    replies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for status in statuses:
        if status.get("in_reply_to_id") in known:
            replies[str(status["in_reply_to_id"])].append(status)
    threads = []
    for root in (s for s in statuses if s.get("in_reply_to_id") not in known):
        thread: list[dict[str, Any]] = []
        todo = [root]
        while todo:
            status = todo.pop(0)
            thread.append(_status(status, len(thread) + 1))
            todo[:0] = replies[str(status["id"])]
        threads.append(thread)
    return threads


def _status(status: dict[str, Any], number: int) -> dict[str, Any]:
    return {
        "number": number,
        "text": str(status.get("text", "")),
        "spoiler": str(status.get("spoiler_text") or ""),
        "visibility": status.get("visibility"),
        "language": status.get("language"),
        "media": [m.get("description") or "" for m in status.get("media_attachments", [])],
        "reply": status.get("in_reply_to_id") is not None,
        "at": _time(datetime.fromisoformat(str(status["created_at"]).replace("Z", "+00:00"))),
    }


def _chats(servers: LocalServers) -> list[dict[str, Any]]:
    by_chat: dict[int, list[Sent]] = defaultdict(list)
    for sent in servers.telegram.sent:
        by_chat[sent.chat_id].append(sent)
    chats = []
    for chat_id, messages in by_chat.items():
        chat = servers.telegram.chats.get(chat_id)
        title = chat.title if chat and chat.title else _("Privatchat {id}").format(id=chat_id)
        chats.append(
            {
                "title": title,
                "channel": chat_id < 0,
                "messages": [
                    {
                        "html": telegram_markup(m.text, m.entities),
                        "photo": m.method == "sendPhoto",
                        "at": _time(datetime.fromtimestamp(m.at, UTC)),
                    }
                    for m in messages
                ],
            }
        )
    return chats


def telegram_markup(text: str, entities: list[dict[str, Any]]) -> Markup:
    """A Telegram message as safe HTML: its text escaped, its entities as tags.

    Entity offsets count UTF-16 code units, as the Bot API does."""
    units = text.encode("utf-16-le")
    opens: dict[int, list[str]] = defaultdict(list)
    closes: dict[int, list[str]] = defaultdict(list)
    for entity in sorted(entities, key=lambda e: (e["offset"], -e["length"])):
        tags = _tags(entity)
        if tags is not None:
            opens[entity["offset"]].append(tags[0])
            closes[entity["offset"] + entity["length"]].insert(0, tags[1])
    end = len(units) // 2
    points = sorted({0, end, *opens, *closes})
    parts: list[str] = []
    for start, stop in zip(points, [*points[1:], end], strict=True):
        parts += closes.pop(start, []) + opens.pop(start, [])
        parts.append(str(escape(units[2 * start : 2 * stop].decode("utf-16-le"))))
    return Markup("".join(parts))  # noqa: S704 - built from escaped text and fixed tags only


def _tags(entity: dict[str, Any]) -> tuple[str, str] | None:
    kind = entity.get("type")
    if kind == "text_link":
        url = str(entity.get("url", ""))
        if not url.startswith(("https://", "http://")):
            return None
        return f'<a href="{escape(url)}" target="_blank" rel="noopener noreferrer">', "</a>"
    tag = TELEGRAM_TAGS.get(str(kind))
    return (f"<{tag}>", f"</{tag}>") if tag else None


def _time(value: datetime) -> str:
    return value.astimezone(BERLIN).strftime("%d.%m.%Y %H:%M:%S")
