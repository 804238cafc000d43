"""Admins manage the staff accounts: add a colleague, change a role, lift a lockout, remove."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import LOCALES
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff.accounts import Role, User, add_user, change_user, remove_user
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import users
from bzi_broadcast.web.admin import require, role_label, staff_page
from bzi_broadcast.web.app import check_csrf, client_ip, context_of
from bzi_broadcast.web.display import local_time

PATH = "/admin/benutzer"


def setup(app: web.Application) -> None:
    app.router.add_get(PATH, _list)
    app.router.add_post(PATH, _add)
    app.router.add_post(PATH + r"/{id:\d+}", _change)


async def _list(request: web.Request) -> web.Response:
    user = await require(request, Role.ADMIN)
    return await _page(request, user, notice=_notice(request.query.get("hinweis")))


async def _add(request: web.Request) -> web.Response:
    user = await require(request, Role.ADMIN)
    form = await request.post()
    check_csrf(request, form)
    typed = {key: str(form.get(key, "")).strip()[:320] for key in ("email", "name", "role")}
    typed["language"] = str(form.get("language", "de"))
    problem = _check_new(typed)
    if problem is None:
        try:
            await add_user(
                context_of(request).engine,
                email=typed["email"],
                name=typed["name"],
                role=Role(typed["role"]),
                password=str(form.get("password", ""))[:1000],
                language=typed["language"],
                actor=user,
            )
        except BroadcastError as refused:
            problem = refused.message
    if problem is not None:
        return await _page(request, user, status=422, problem=problem, typed=typed)
    raise web.HTTPSeeOther(f"{PATH}?hinweis=angelegt")


async def _change(request: web.Request) -> web.Response:
    user = await require(request, Role.ADMIN)
    form = await request.post()
    check_csrf(request, form)
    user_id = int(request.match_info["id"])
    engine, ip = context_of(request).engine, client_ip(request)
    try:
        if form.get("action") == "remove":
            await remove_user(engine, user, user_id, ip)
        else:
            role = str(form.get("role", ""))
            await change_user(
                engine,
                user,
                user_id,
                role=Role(role) if role in set(Role) else None,
                unlock=form.get("action") == "unlock",
                ip=ip,
            )
    except BroadcastError as refused:
        return await _page(request, user, status=409, problem=refused.message)
    raise web.HTTPSeeOther(f"{PATH}?hinweis=gespeichert")


def _check_new(typed: dict[str, str]) -> str | None:
    if "@" not in typed["email"] or any(c.isspace() for c in typed["email"]):
        return _("Bitte eine gültige E-Mail-Adresse angeben.")
    if not typed["name"]:
        return _("Bitte einen Namen angeben.")
    if typed["role"] not in set(Role) or typed["language"] not in LOCALES:
        return _("Bitte Rolle und Sprache aus der Liste wählen.")
    return None


def _notice(code: str | None) -> str | None:
    return {"angelegt": _("Konto angelegt."), "gespeichert": _("Gespeichert.")}.get(code or "")


async def _page(
    request: web.Request,
    user: User,
    *,
    status: int = 200,
    problem: str | None = None,
    notice: str | None = None,
    typed: dict[str, str] | None = None,
) -> web.Response:
    async with context_of(request).engine.connect() as conn:
        rows = (await conn.execute(select(users).order_by(users.c.email))).all()
    people: list[dict[str, Any]] = [
        {
            "id": row.id,
            "email": row.email,
            "name": row.name,
            "role": row.role,
            "locked_until": local_time(row.locked_until)
            if row.locked_until and row.locked_until > utcnow()
            else None,
            "me": row.id == user.id,
        }
        for row in rows
    ]
    return staff_page(
        request,
        "admin_benutzer.html.j2",
        user,
        status=status,
        people=people,
        roles=[(str(role), role_label(role)) for role in Role],
        problem=problem,
        notice=notice,
        typed=typed or {"email": "", "name": "", "role": "editor", "language": "de"},
    )
