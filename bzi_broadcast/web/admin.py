"""The staff workspace's doors: login, logout, the overview, the user list (admins).

Server-rendered; every state-changing request needs the CSRF token; the session cookie is
HttpOnly, SameSite=Strict, Secure over HTTPS and scoped to ``/admin``; a new session id at every
login. The editor, approval and dashboard views build on ``require``.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff.accounts import (
    LoginRefused,
    Role,
    User,
    authenticate,
    end_session,
    session_user,
    start_session,
)
from bzi_broadcast.store.schema import announcements, users
from bzi_broadcast.web.app import check_csrf, client_ip, context_of, csrf_token, page

SESSION_COOKIE = "bzi_session"
USER = "user"


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/anmelden", _login_form)
    app.router.add_post("/admin/anmelden", _login)
    app.router.add_post("/admin/abmelden", _logout)
    app.router.add_get("/admin", _overview)
    app.router.add_get("/admin/benutzer", _users)


async def require(request: web.Request, role: Role = Role.EDITOR) -> User:
    """The logged-in user with at least ``role``; else to the login page, or 403."""
    context = context_of(request)
    user = await session_user(context.engine, request.cookies.get(SESSION_COOKIE))
    if user is None:
        raise web.HTTPSeeOther("/admin/anmelden")
    if not user.role.allows(role):
        raise web.HTTPForbidden(text=_("Dafür fehlt Ihrer Rolle die Berechtigung."))
    request[USER] = user
    return user


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
        response = web.Response(status=401)
        token = csrf_token(request, response)
        rendered = page(
            request,
            "admin_anmelden.html.j2",
            status=401,
            csrf=token,
            email=email,
            problem=refused.message,
        )
        rendered.cookies.update(response.cookies)
        return rendered
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
    user = await require(request)
    async with context_of(request).engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    announcements.c.id,
                    announcements.c.title,
                    announcements.c.status,
                    announcements.c.publish_at,
                )
                .order_by(announcements.c.id.desc())
                .limit(50)
            )
        ).all()
    response = web.Response()
    token = csrf_token(request, response)
    rendered = page(
        request, "admin_start.html.j2", user=user, csrf=token, entries=[tuple(r) for r in rows]
    )
    rendered.cookies.update(response.cookies)
    return rendered


async def _users(request: web.Request) -> web.Response:
    user = await require(request, Role.ADMIN)
    async with context_of(request).engine.connect() as conn:
        rows = (
            await conn.execute(
                select(users.c.email, users.c.name, users.c.role, users.c.locked_until).order_by(
                    users.c.email
                )
            )
        ).all()
    return page(request, "admin_benutzer.html.j2", user=user, people=[tuple(r) for r in rows])
