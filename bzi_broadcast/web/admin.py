"""The staff workspace's doors: login, logout, the overview, the user list (admins).

Server-rendered; every state-changing request needs the CSRF token; the session cookie is
HttpOnly, SameSite=Strict, Secure over HTTPS and scoped to ``/admin``; a new session id at every
login. The editor, approval and dashboard views build on ``require``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import LOCALES, adopt_locale
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff import telegram_link
from bzi_broadcast.staff.accounts import (
    LoginRefused,
    Role,
    User,
    authenticate,
    change_password,
    end_session,
    session_user,
    start_session,
)
from bzi_broadcast.staff.workflow import audit, status_label
from bzi_broadcast.store.schema import announcements, users
from bzi_broadcast.web.app import LANGUAGE, check_csrf, client_ip, context_of, csrf_token, page
from bzi_broadcast.web.display import Page, local_time

SESSION_COOKIE = "bzi_session"


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/anmelden", _login_form)
    app.router.add_post("/admin/anmelden", _login)
    app.router.add_post("/admin/abmelden", _logout)
    app.router.add_get("/admin", _overview)
    app.router.add_get("/admin/konto", _account)
    app.router.add_post("/admin/konto", _set_language)
    app.router.add_post("/admin/konto/telegram", _telegram_chat)
    app.router.add_post("/admin/konto/passwort", _set_password)


async def require(request: web.Request, role: Role = Role.EDITOR) -> User:
    """The logged-in user with at least ``role``; else to the login page, or 403.

    From here on the request speaks the user's own language (unless ``?lang=`` chose one).
    """
    context = context_of(request)
    user = await session_user(context.engine, request.cookies.get(SESSION_COOKIE))
    if user is None:
        raise web.HTTPSeeOther("/admin/anmelden")
    if "lang" not in request.query:
        request[LANGUAGE] = user.language
        adopt_locale(user.language)
    if not user.role.allows(role):
        raise web.HTTPForbidden(text=_("Dafür fehlt Ihrer Rolle die Berechtigung."))
    return user


def staff_page(
    request: web.Request, template: str, user: User, *, status: int = 200, **values: Any
) -> web.Response:
    """A page in the staff frame (``admin_base.html.j2``), with a CSRF token for its forms."""
    holder = web.Response()
    token = csrf_token(request, holder)
    rendered = page(request, template, status=status, user=user, csrf=token, **values)
    rendered.cookies.update(holder.cookies)
    return rendered


async def _login_form(request: web.Request) -> web.Response:
    response = web.Response()
    token = csrf_token(request, response)
    rendered = page(request, "admin_anmelden.html.j2", csrf=token, email="", problem=None)
    rendered.cookies.update(response.cookies)
    return rendered


async def _login(request: web.Request) -> web.Response:
    form = await request.post()
    check_csrf(request, form)
    context = context_of(request)
    email = str(form.get("email", ""))[:320]
    try:
        user = await authenticate(
            context.engine,
            context.settings.security,
            email,
            str(form.get("password", ""))[:1000],
            client_ip(request),
        )
    except LoginRefused as refused:
        return _refused_login(request, email, refused)
    await end_session(context.engine, request.cookies.get(SESSION_COOKIE), None)
    raw = await start_session(context.engine, user, context.settings.security.session_hours)
    response = web.HTTPSeeOther("/admin")
    response.set_cookie(
        SESSION_COOKIE,
        raw,
        path="/admin",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        max_age=context.settings.security.session_hours * 3600,
    )
    raise response


def _refused_login(request: web.Request, email: str, refused: LoginRefused) -> web.Response:
    """401 alike for unknown, wrong and locked; 429 with Retry-After for a busy client network."""
    status = 401 if refused.retry_after is None else 429
    response = web.Response(status=status)
    token = csrf_token(request, response)
    rendered = page(
        request,
        "admin_anmelden.html.j2",
        status=status,
        csrf=token,
        email=email,
        problem=refused.message,
    )
    rendered.cookies.update(response.cookies)
    if refused.retry_after is not None:
        rendered.headers["Retry-After"] = str(refused.retry_after)
    return rendered


async def _logout(request: web.Request) -> web.Response:
    form = await request.post()
    check_csrf(request, form)
    await end_session(
        context_of(request).engine, request.cookies.get(SESSION_COOKIE), client_ip(request)
    )
    response = web.HTTPSeeOther("/admin/anmelden")
    response.del_cookie(SESSION_COOKIE, path="/admin")
    raise response


async def _overview(request: web.Request) -> web.Response:
    """Announcements newest first, with a status filter; publishers see what awaits them."""
    user = await require(request)
    chosen = request.query.get("status", "")
    status = AnnouncementStatus(chosen) if chosen in set(AnnouncementStatus) else None
    async with context_of(request).engine.connect() as conn:
        listing = _announcement_list(status)
        total = (await conn.execute(select(func.count()).select_from(listing.subquery()))).scalar()
        pages = Page.of(request.query.get("seite"), total or 0)
        rows = (await conn.execute(listing.limit(pages.size).offset(pages.offset))).all()
        waiting = await _awaiting_approval(conn, user) if user.role.allows(Role.PUBLISHER) else 0
    return staff_page(
        request,
        "admin_start.html.j2",
        user,
        entries=[_entry(row) for row in rows],
        statuses=[(str(s), status_label(s)) for s in AnnouncementStatus],
        chosen=str(status) if status else "",
        waiting=waiting,
        pages=pages,
        query={"status": chosen if status else ""},
    )


def _announcement_list(status: AnnouncementStatus | None) -> Select[Any]:
    query = (
        select(
            announcements.c.id,
            announcements.c.title,
            announcements.c.status,
            announcements.c.publish_at,
            announcements.c.released_at,
            users.c.name.label("author"),
        )
        .outerjoin(users, users.c.id == announcements.c.author_id)
        .order_by(announcements.c.created_at.desc(), announcements.c.id.desc())
    )
    return query if status is None else query.where(announcements.c.status == str(status))


async def _awaiting_approval(conn: AsyncConnection, user: User) -> int:
    """Submitted announcements this publisher may approve (not written or submitted by them)."""
    query = select(func.count()).where(
        announcements.c.status == str(AnnouncementStatus.IN_REVIEW),
        or_(announcements.c.author_id.is_(None), announcements.c.author_id != user.id),
        or_(announcements.c.submitted_by.is_(None), announcements.c.submitted_by != user.id),
    )
    return int((await conn.execute(query)).scalar() or 0)


def _entry(row: Row[Any]) -> dict[str, Any]:
    status = AnnouncementStatus(row.status)
    return {
        "id": row.id,
        "title": row.title,
        "status": str(status),
        "status_label": status_label(status),
        "publish_at": local_time(row.publish_at),
        "author": row.author or "",
        "released": row.released_at is not None,
    }


async def _account(
    request: web.Request,
    *,
    status: int = 200,
    problem: str | None = None,
    telegram_code: str | None = None,
    telegram_problem: str | None = None,
) -> web.Response:
    user = await require(request)
    context = context_of(request)
    chat = await telegram_link.linked_chat(context.engine, user)
    telegram = context.settings.telegram
    return staff_page(
        request,
        "admin_konto.html.j2",
        user,
        status=status,
        role_label=role_label(user.role),
        telegram_bot=telegram.enabled and telegram.bot,
        telegram_chat=chat.chat_id if chat else None,
        telegram_linked=local_time(chat.linked_at) if chat and chat.linked_at else None,
        telegram_code=telegram_code,
        telegram_problem=telegram_problem,
        telegram_minutes=int(telegram_link.CODE_LIFETIME.total_seconds() // 60),
        password_problem=problem,
        password_changed=request.query.get("hinweis") == "passwort",
    )


async def _set_password(request: web.Request) -> web.Response:
    """A new password, proven by the current one; the user's other sessions end."""
    user = await require(request)
    form = await request.post()
    check_csrf(request, form)
    new = str(form.get("new", ""))[:1000]
    if new != str(form.get("repeat", ""))[:1000]:
        return await _account(
            request, status=422, problem=_("Die Passwörter stimmen nicht überein.")
        )
    try:
        await change_password(
            context_of(request).engine,
            user,
            str(form.get("current", ""))[:1000],
            new,
            keep_session=request.cookies.get(SESSION_COOKIE),
            ip=client_ip(request),
        )
    except BroadcastError as refused:
        return await _account(request, status=422, problem=refused.message)
    raise web.HTTPSeeOther("/admin/konto?hinweis=passwort")


async def _telegram_chat(request: web.Request) -> web.Response:
    """„Code anzeigen“: a one-time code to send to the bot from one's own private chat (nobody
    types a chat id: a channel's would post drafts to the public); „Trennen“ unlinks it."""
    user = await require(request)
    form = await request.post()
    check_csrf(request, form)
    context, ip = context_of(request), client_ip(request)
    action = form.get("action")
    if action == "trennen":
        await telegram_link.unlink(context.engine, user, ip)
        raise web.HTTPSeeOther("/admin/konto")
    if action != "code":
        raise web.HTTPBadRequest(text=_("Diese Aktion gibt es nicht."))
    try:
        code = await telegram_link.new_code(
            context.engine, context.settings.security.secret_key, user, ip
        )
    except BroadcastError as refused:
        return await _account(request, status=503, telegram_problem=refused.message)
    return await _account(request, telegram_code=code)


async def _set_language(request: web.Request) -> web.Response:
    """Each staff member reads the workspace in their own language."""
    user = await require(request)
    form = await request.post()
    check_csrf(request, form)
    language = str(form.get("language", ""))
    if language not in LOCALES:
        raise web.HTTPBadRequest(text=_("Diese Sprache gibt es nicht."))
    async with context_of(request).engine.begin() as conn:
        await conn.execute(update(users).where(users.c.id == user.id).values(language=language))
        await audit(conn, user, "user.language", {"language": language}, client_ip(request))
    raise web.HTTPSeeOther("/admin/konto")


def role_label(role: Role) -> str:
    return {
        Role.EDITOR: _("Redaktion"),
        Role.PUBLISHER: _("Veröffentlichung"),
        Role.ADMIN: _("Administration"),
    }[role]
