"""The audit log for publishers and admins: every staff action with who, what in words, the
details, from which address and when (Europe/Berlin); filtered by person and action, in pages."""

from __future__ import annotations

import json

from aiohttp import web
from sqlalchemy import ColumnElement, func, select

from bzi_broadcast.i18n import N_
from bzi_broadcast.staff.accounts import Role
from bzi_broadcast.store.schema import audit_log, users
from bzi_broadcast.web.admin import require, staff_page
from bzi_broadcast.web.app import context_of
from bzi_broadcast.web.display import Page, detail_text, label, local_time

ACTION_LABELS = {
    "login": N_("Im Arbeitsbereich angemeldet"),
    "login.failed": N_("Anmeldung fehlgeschlagen"),
    "login.locked": N_("Anmeldung abgewiesen (Konto gesperrt)"),
    "login.throttled": N_("Anmeldung abgewiesen (zu viele Fehlversuche von dieser Adresse)"),
    "logout": N_("Vom Arbeitsbereich abgemeldet"),
    "user.added": N_("Benutzerkonto angelegt"),
    "user.changed": N_("Benutzerkonto geändert (Rolle oder Sperre)"),
    "user.removed": N_("Benutzerkonto gelöscht"),
    "password.changed": N_("Eigenes Passwort geändert"),
    "password.refused": N_("Passwortänderung abgewiesen (bisheriges Passwort falsch)"),
    "user.language": N_("Sprache geändert"),
    "user.telegram_chat": N_("Telegram-Chat für Tests geändert"),
    "user.telegram_code": N_("Code für den Telegram-Testchat angefordert"),
    "user.telegram_linked": N_("Telegram-Testchat verbunden (/verbinden)"),
    "user.telegram_unlinked": N_("Telegram-Testchat getrennt"),
    "api_token.created": N_("API-Token erstellt"),
    "announcement.created": N_("Ankündigung angelegt"),
    "announcement.edited": N_("Ankündigung bearbeitet"),
    "announcement.duplicated": N_("Ankündigung dupliziert"),
    "announcement.in_review": N_("Zur Freigabe eingereicht"),
    "announcement.approved": N_("Ankündigung freigegeben"),
    "announcement.draft": N_("Zurück an die Redaktion"),
    "announcement.scheduled": N_("Versand geplant"),
    "announcement.cancelled": N_("Ankündigung abgebrochen"),
    "announcement.retry_failed": N_("Fehlgeschlagene erneut gesendet"),
    "channel.paused": N_("Kanal pausiert"),
    "channel.resumed": N_("Kanal fortgesetzt"),
    "subscribers.exported": N_("Abonnent·innen exportiert"),
    "subscribers.imported": N_("Abonnent·innen importiert"),
    "subscriber.erased": N_("Abonnent·in gelöscht"),
}


async def audit_log_page(request: web.Request) -> web.Response:
    """Every staff action, newest first, filterable by person and action."""
    user = await require(request, Role.PUBLISHER)
    chosen_user = request.query.get("benutzer", "")
    chosen_action = request.query.get("aktion", "")[:60]
    conditions: list[ColumnElement[bool]] = []
    if chosen_user.isdigit():
        conditions.append(audit_log.c.user_id == int(chosen_user))
    if chosen_action:
        conditions.append(audit_log.c.action == chosen_action)
    async with context_of(request).engine.connect() as conn:
        total = (
            await conn.execute(select(func.count()).select_from(audit_log).where(*conditions))
        ).scalar() or 0
        pages = Page.of(request.query.get("seite"), total)
        rows = (
            await conn.execute(
                select(audit_log, users.c.name.label("user_name"))
                .outerjoin(users, users.c.id == audit_log.c.user_id)
                .where(*conditions)
                .order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
                .offset(pages.offset)
                .limit(pages.size)
            )
        ).all()
        people = (await conn.execute(select(users.c.id, users.c.name).order_by(users.c.name))).all()
        actions = (await conn.execute(select(audit_log.c.action).distinct())).scalars().all()
    return staff_page(
        request,
        "admin_protokoll.html.j2",
        user,
        wide=True,
        entries=[
            {
                "at": local_time(row.at),
                "user": row.user_name or "",
                "action": label(ACTION_LABELS, row.action),
                "code": row.action,
                "detail": detail_text(json.loads(row.detail) if row.detail else None),
                "ip": row.ip or "",
            }
            for row in rows
        ],
        people=[(str(p.id), p.name) for p in people],
        actions=sorted(((a, label(ACTION_LABELS, a)) for a in actions), key=lambda a: a[1]),
        chosen_user=chosen_user,
        chosen_action=chosen_action,
        pages=pages,
        query={"benutzer": chosen_user, "aktion": chosen_action},
    )
