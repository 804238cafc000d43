"""The editor page: the form as typed, its problems, the preview, and the steps open to the user.

What a step may do is decided by ``staff.workflow``; the page only offers the steps that the
user's role and the announcement's status allow, and says why approval is not offered to its own
author or submitter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy import select

from bzi_broadcast.content.model import LOCAL_TZ, PartnerRole, Visibility
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.i18n import current_locale
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.render.filters import datetime_long, partner_role
from bzi_broadcast.staff.accounts import Role, User
from bzi_broadcast.staff.permissions import Action, may
from bzi_broadcast.staff.workflow import Draft, status_label
from bzi_broadcast.store.schema import users
from bzi_broadcast.web import editor_form as forms
from bzi_broadcast.web import editor_problems as problems
from bzi_broadcast.web.admin import staff_page
from bzi_broadcast.web.app import context_of
from bzi_broadcast.web.editor_form import State
from bzi_broadcast.web.editor_preview import Preview
from bzi_broadcast.web.editor_problems import Errors

S = AnnouncementStatus
BASE = "/admin/ankuendigungen"
DELIVERING = (S.SENDING, S.SENT, S.PARTIALLY_FAILED)


@dataclass(frozen=True, kw_only=True)
class Notice:
    text: str
    bad: bool = False


def redirect_notice(code: str) -> Notice | None:
    """The outcome of the step that redirected here (a code: no text from the URL)."""
    texts = {
        "angelegt": _("Der Entwurf ist angelegt."),
        "gespeichert": _("Gespeichert."),
        "entwurf": _(
            "Gespeichert. Die Ankündigung ist wieder ein Entwurf: Die Freigabe galt der vorigen "
            "Fassung. Bitte reichen Sie sie erneut zur Freigabe ein."
        ),
        "einreichen": _(
            "Zur Freigabe eingereicht. Eine andere Person mit der Rolle Veröffentlichung gibt "
            "sie frei."
        ),
        "freigeben": _("Freigegeben. Jetzt kann der Versand geplant werden."),
        "zurueck": _("Zurück an die Redaktion: Die Ankündigung ist wieder ein Entwurf."),
        "planen": _("Der Versand ist geplant."),
        "planen-doppelt": _(
            "Der Versand ist geplant. Die gewählte Uhrzeit gibt es in dieser Nacht zweimal "
            "(Ende der Sommerzeit); geplant ist das erste Mal, noch in Sommerzeit (MESZ)."
        ),
        "abbrechen": _("Die Ankündigung ist abgebrochen; sie wird nicht (weiter) gesendet."),
        "kopieren": _("Die Kopie ist als neuer Entwurf angelegt. Sie bearbeiten jetzt die Kopie."),
    }
    return Notice(text=texts[code]) if code in texts else None


async def editor_page(
    request: web.Request,
    user: User,
    state: State,
    *,
    draft: Draft | None,
    version: int | None,
    errors: Errors | None = None,
    notices: list[Notice] | None = None,
    preview: Preview | None = None,
    focus: str | None = None,
    stale: bool = False,
    schedule_at: str | None = None,
    status: int = 200,
) -> web.Response:
    errors = errors or {}
    return staff_page(
        request,
        "admin_editor.html.j2",
        user,
        status=status,
        wide=True,
        f=state,
        errors=errors,
        summary=[
            (name, problems.where(name, state), message)
            for name, messages in errors.items()
            for message in messages
        ],
        focus=focus,
        notices=notices or [],
        preview=preview,
        stale=stale,
        version=version,
        item=await _item(request, user, draft, schedule_at) if draft else None,
        action=f"{BASE}/{draft.id}" if draft else f"{BASE}/neu",
        editable=draft is None or draft.editable,
        topics=_topics(request, state),
        label=problems.label,
        block_names={kind: _(name) for kind, name in problems.BLOCK_NAMES.items()},
        block_types=forms.BLOCK_TYPES,
        roles=[(str(role), partner_role(role)) for role in PartnerRole]
        + [(forms.OTHER_ROLE, _("Andere (eigene Bezeichnung)"))],
        visibilities=_visibilities(),
    )


async def _item(
    request: web.Request, user: User, draft: Draft, schedule_at: str | None
) -> dict[str, Any]:
    """The announcement's status, people and the steps this user may take now."""
    names = await _names(request, draft)
    status, publisher = draft.status, user.role.allows(Role.PUBLISHER)
    own = user.id in (draft.author_id, draft.submitted_by)
    planned = draft.publish_at or draft.announcement.publish_at
    return {
        "id": draft.id,
        "title": draft.announcement.title,
        "status": str(status),
        "status_label": status_label(status),
        "author": names.get(draft.author_id, ""),
        "submitter": names.get(draft.submitted_by, ""),
        "approver": names.get(draft.approved_by, ""),
        "scheduled": _moment_text(draft.publish_at) if status == S.SCHEDULED else "",
        "at": forms.local_input(planned) if schedule_at is None else schedule_at,
        "may_submit": status == S.DRAFT,
        "may_approve": status == S.IN_REVIEW and may(user, Action.APPROVE, draft),
        "own_review": status == S.IN_REVIEW and publisher and own,
        "may_return": status in (S.IN_REVIEW, S.APPROVED, S.SCHEDULED)
        and may(user, Action.EDIT_ANNOUNCEMENT, draft),
        "may_schedule": status in (S.APPROVED, S.SCHEDULED) and may(user, Action.SCHEDULE),
        "may_cancel": status in (S.DRAFT, S.IN_REVIEW, S.APPROVED, S.SCHEDULED, S.SENDING)
        and may(user, Action.CANCEL, draft),
        "resets_approval": status in (S.IN_REVIEW, S.APPROVED, S.SCHEDULED),
        "delivering": status in DELIVERING,
        "telegram_chat": await telegram_chat(request, user),
        "telegram_enabled": context_of(request).settings.telegram.enabled,
    }


def _moment_text(moment: datetime | None) -> str:
    if moment is None:
        return ""
    local = moment.astimezone(LOCAL_TZ)
    zone = _("MESZ") if local.dst() else _("MEZ")
    utc = moment.astimezone(UTC).strftime("%H:%M")
    return _("{moment} {zone} ({utc} UTC)").format(moment=datetime_long(moment), zone=zone, utc=utc)


async def _names(request: web.Request, draft: Draft) -> dict[int | None, str]:
    people = {draft.author_id, draft.submitted_by, draft.approved_by} - {None}
    if not people:
        return {}
    async with context_of(request).engine.connect() as conn:
        rows = await conn.execute(select(users.c.id, users.c.name).where(users.c.id.in_(people)))
        return {row.id: row.name for row in rows}


async def telegram_chat(request: web.Request, user: User) -> int | None:
    async with context_of(request).engine.connect() as conn:
        chat = await conn.execute(select(users.c.telegram_chat_id).where(users.c.id == user.id))
        value = chat.scalar()
    return int(value) if value is not None else None


def _topics(request: web.Request, state: State) -> list[tuple[str, str]]:
    """The configured topics, then any the announcement has that are no longer configured."""
    english = current_locale() == "en"
    configured = [
        (topic.id, topic.en if english else topic.de)
        for topic in context_of(request).settings.subscribers.topics
    ]
    known = {topic for topic, _name in configured}
    extra = [(t, _("{topic} (nicht konfiguriert)").format(topic=t)) for t in state["topics"]]
    return configured + [entry for entry in extra if entry[0] not in known]


def _visibilities() -> list[tuple[str, str]]:
    labels = {
        Visibility.PUBLIC: _("Öffentlich"),
        Visibility.UNLISTED: _("Nicht gelistet"),
        Visibility.PRIVATE: _("Nur für Folgende"),
        Visibility.DIRECT: _("Direktnachricht (nur Erwähnte)"),
    }
    return [(str(v), labels[v]) for v in Visibility]
