"""Who may do what: one table for the web workspace, the REST API and the command line.

Every door asks here. ``LEAST`` gives each action the least role that may take it (``None``:
anyone, no login); roles are ranked, so a publisher may all an editor may and an admin all a
publisher may. A few actions also depend on the announcement they touch; those rules are the
small functions below (``may_edit``, ``may_cancel``, ``may_approve``). ``ROUTES`` names the action
behind every route of the web app and the API, so a route without an entry is a test failure,
not a silent default.

The command line runs on the server, as someone who holds the database anyway: it acts as the
``Operator``, with every right, and its steps are audited like anyone's.

    action                    anonymous  editor  publisher  admin
    public pages, sign-up     yes        yes     yes        yes
    workspace, own account    –          yes     yes        yes
    write, preview, submit    –          yes     yes        yes
    edit / return to draft    –          (1)     yes        yes
    cancel                    –          (2)     yes        yes
    approve                   –          –       (3)        (3)
    schedule                  –          –       yes        yes
    follow the sending        –          yes     yes        yes
    retry, pause, threads     –          –       yes        yes
    subscriber figures        –          yes     yes        yes
    subscriber list, export   –          –       yes        yes
    import subscribers        –          –       yes        yes
    audit log                 –          –       yes        yes
    erase a subscriber        –          –       –          yes
    staff accounts            –          –       –          yes

(1) not once it is scheduled or sending: an edit returns it to draft, which stops the send.
(2) only their own (they wrote it) while it is a draft or in review.
(3) four eyes: not what they wrote or submitted themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff.accounts import Role, User

S = AnnouncementStatus


class NotAllowed(BroadcastError):
    """Dafür fehlt Ihrer Rolle die Berechtigung."""


class Action(StrEnum):
    READ_PUBLIC = "public.read"  # archive, feed, images, health, static files
    SUBSCRIBE = "public.subscribe"  # sign up, confirm, unsubscribe, preferences (token links)
    SIGN_IN = "staff.sign_in"
    OPERATIONS = "operations.read"  # /readyz, /metrics: guarded by their own setting, not a role
    USE_WORKSPACE = "workspace.use"  # the overview, one's own account, signing out
    READ_ANNOUNCEMENT = "announcement.read"
    WRITE_ANNOUNCEMENT = "announcement.write"  # create, preview, duplicate, test send
    SUBMIT = "announcement.submit"
    EDIT_ANNOUNCEMENT = "announcement.edit"  # save, return to draft: see ``may_edit``
    CANCEL = "announcement.cancel"  # see ``may_cancel``
    APPROVE = "announcement.approve"  # see ``may_approve``
    SCHEDULE = "announcement.schedule"
    FOLLOW_SENDING = "delivery.read"
    MANAGE_SENDING = "delivery.manage"  # retry failed, pause, resume, incomplete threads
    SUBSCRIBER_FIGURES = "subscribers.figures"
    READ_SUBSCRIBERS = "subscribers.read"  # the list, a person, the export
    IMPORT_SUBSCRIBERS = "subscribers.import"
    ERASE_SUBSCRIBER = "subscribers.erase"
    READ_AUDIT_LOG = "audit.read"
    MANAGE_STAFF = "staff.manage"


E, P, A = Role.EDITOR, Role.PUBLISHER, Role.ADMIN
LEAST: Final[Mapping[Action, Role | None]] = {
    Action.READ_PUBLIC: None,
    Action.SUBSCRIBE: None,
    Action.SIGN_IN: None,
    Action.OPERATIONS: None,
    Action.USE_WORKSPACE: E,
    Action.READ_ANNOUNCEMENT: E,
    Action.WRITE_ANNOUNCEMENT: E,
    Action.SUBMIT: E,
    Action.EDIT_ANNOUNCEMENT: E,
    Action.CANCEL: E,
    Action.APPROVE: P,
    Action.SCHEDULE: P,
    Action.FOLLOW_SENDING: E,
    Action.MANAGE_SENDING: P,
    Action.SUBSCRIBER_FIGURES: E,
    Action.READ_SUBSCRIBERS: P,
    Action.IMPORT_SUBSCRIBERS: P,
    Action.ERASE_SUBSCRIBER: A,
    Action.READ_AUDIT_LOG: P,
    Action.MANAGE_STAFF: A,
}


@dataclass(frozen=True, kw_only=True)
class Operator:
    """Whoever runs the command line on the server: every right; audited by this name."""

    name: str

    def __repr__(self) -> str:
        return f"Operator({self.name!r})"


Actor = User | Operator


class Subject(Protocol):
    """The part of an announcement the rules look at."""

    @property
    def status(self) -> AnnouncementStatus: ...
    @property
    def author_id(self) -> int | None: ...
    @property
    def submitted_by(self) -> int | None: ...


def least_role(action: Action) -> Role | None:
    """The least role that may take ``action`` (None: anyone)."""
    return LEAST[action]


def staff_role(action: Action) -> Role:
    """The least role for ``action``, which needs a login (for ``require`` in the workspace)."""
    role = LEAST[action]
    if role is None:
        raise ValueError(f"{action} needs no login")
    return role


def allows(role: Role | None, action: Action) -> bool:
    """Whether ``role`` (None: not logged in) may take ``action`` at all."""
    needed = LEAST[action]
    return needed is None or (role is not None and role.allows(needed))


def may_edit(actor: Actor, subject: Subject) -> bool:
    """Editing returns an announcement to draft; once it is scheduled that stops the send, which
    is cancelling: a publisher's step."""
    if subject.status in (S.SCHEDULED, S.SENDING):
        return _rank(actor, P)
    return _rank(actor, E)


def may_cancel(actor: Actor, subject: Subject) -> bool:
    """Publishers cancel anything; an editor only their own draft or submission."""
    if _rank(actor, P):
        return True
    own = isinstance(actor, User) and subject.author_id == actor.id
    return _rank(actor, E) and own and subject.status in (S.DRAFT, S.IN_REVIEW)


def may_approve(actor: Actor, subject: Subject) -> bool:
    """Four eyes: a publisher who neither wrote nor submitted it."""
    if isinstance(actor, Operator):
        return True
    return _rank(actor, P) and actor.id not in (subject.author_id, subject.submitted_by)


RULES: Final = {
    Action.EDIT_ANNOUNCEMENT: may_edit,
    Action.CANCEL: may_cancel,
    Action.APPROVE: may_approve,
}


def may(actor: Actor | None, action: Action, subject: Subject | None = None) -> bool:
    """Whether ``actor`` (None: not logged in) may take ``action``, on ``subject`` if given."""
    if isinstance(actor, Operator):
        return True
    if not allows(actor.role if actor else None, action):
        return False
    rule = RULES.get(action)
    return rule is None or subject is None or (actor is not None and rule(actor, subject))


def check(actor: Actor, action: Action, subject: Subject | None = None) -> None:
    """Raise ``NotAllowed`` (with the reason) unless ``actor`` may take ``action``."""
    if may(actor, action, subject):
        return
    if action == Action.APPROVE and isinstance(actor, User) and allows(actor.role, action):
        raise NotAllowed(
            _("Vier-Augen-Prinzip: Eine andere Person muss Ihre eigene Ankündigung freigeben.")
        )
    if action == Action.CANCEL and allows(_role(actor), Action.CANCEL):
        raise NotAllowed(
            _(
                "Abbrechen darf die Redaktion nur eigene Entwürfe und Einreichungen; "
                "alles andere bricht eine Person mit Veröffentlichungsrecht ab."
            )
        )
    if action == Action.EDIT_ANNOUNCEMENT and allows(_role(actor), action):
        raise NotAllowed(
            _(
                "Die Ankündigung ist geplant: Eine Änderung würde den Versand stoppen. Das darf "
                "nur eine Person mit Veröffentlichungsrecht."
            )
        )
    raise NotAllowed()


def actor_id(actor: Actor) -> int | None:
    """The staff account behind ``actor`` (none for the operator)."""
    return actor.id if isinstance(actor, User) else None


def actor_label(actor: Actor) -> str:
    """How the announcement's history names ``actor``."""
    return f"user:{actor.id}" if isinstance(actor, User) else f"operator:{actor.name}"


def _role(actor: Actor) -> Role:
    return actor.role if isinstance(actor, User) else Role.ADMIN


def _rank(actor: Actor, needed: Role) -> bool:
    return _role(actor).allows(needed)


# --- every route of the web app and the API, and the action it is -------------------------------

_W = "/admin/ankuendigungen/{id}"
_V = _W + "/versand"
_API = "/api/v1"
ROUTES: Final[Mapping[str, Action]] = {
    # public
    "GET /healthz": Action.OPERATIONS,
    "GET /readyz": Action.OPERATIONS,
    "GET /metrics": Action.OPERATIONS,
    "GET /static": Action.READ_PUBLIC,
    "GET /archiv": Action.READ_PUBLIC,
    "GET /archiv/{id}": Action.READ_PUBLIC,
    "GET /feed.atom": Action.READ_PUBLIC,
    "GET /medien/{token}": Action.READ_PUBLIC,  # only once released (``staff.media``)
    "GET /medien/{id}": Action.READ_PUBLIC,  # the sequential ids before media tokens
    "GET /admin/medien/{token}": Action.READ_ANNOUNCEMENT,
    "GET /demo": Action.READ_PUBLIC,  # --demo only
    "GET /demo/stand": Action.READ_PUBLIC,
    "POST /demo/senden": Action.READ_PUBLIC,
    "GET /anmelden": Action.SUBSCRIBE,
    "POST /anmelden": Action.SUBSCRIBE,
    "GET /bestaetigen/{token}": Action.SUBSCRIBE,
    "POST /bestaetigen/{token}": Action.SUBSCRIBE,
    "GET /abmelden/{token}": Action.SUBSCRIBE,
    "POST /abmelden/{token}": Action.SUBSCRIBE,
    "GET /einstellungen/{token}": Action.SUBSCRIBE,
    "POST /einstellungen/{token}": Action.SUBSCRIBE,
    # the workspace
    "GET /admin/anmelden": Action.SIGN_IN,
    "POST /admin/anmelden": Action.SIGN_IN,
    "POST /admin/abmelden": Action.SIGN_IN,
    "GET /admin": Action.USE_WORKSPACE,
    "GET /admin/konto": Action.USE_WORKSPACE,
    "POST /admin/konto": Action.USE_WORKSPACE,
    "POST /admin/konto/telegram": Action.USE_WORKSPACE,
    "POST /admin/konto/passwort": Action.USE_WORKSPACE,
    "GET /admin/benutzer": Action.MANAGE_STAFF,
    "POST /admin/benutzer": Action.MANAGE_STAFF,
    "POST /admin/benutzer/{id}": Action.MANAGE_STAFF,
    "GET /admin/ankuendigungen/neu": Action.WRITE_ANNOUNCEMENT,
    "POST /admin/ankuendigungen/neu": Action.WRITE_ANNOUNCEMENT,
    "POST /admin/ankuendigungen/vorschau": Action.WRITE_ANNOUNCEMENT,
    "GET " + _W: Action.READ_ANNOUNCEMENT,
    "POST " + _W: Action.EDIT_ANNOUNCEMENT,
    "POST " + _W + "/einreichen": Action.SUBMIT,
    "POST " + _W + "/freigeben": Action.APPROVE,
    "POST " + _W + "/zurueck": Action.EDIT_ANNOUNCEMENT,
    "POST " + _W + "/planen": Action.SCHEDULE,
    "POST " + _W + "/abbrechen": Action.CANCEL,
    "POST " + _W + "/kopieren": Action.WRITE_ANNOUNCEMENT,
    "POST " + _W + "/test": Action.WRITE_ANNOUNCEMENT,
    "GET " + _V: Action.FOLLOW_SENDING,
    "GET " + _V + ".json": Action.FOLLOW_SENDING,
    "POST " + _V + "/wiederholen": Action.MANAGE_SENDING,
    "POST " + _V + "/pausieren": Action.MANAGE_SENDING,
    "POST " + _V + "/fortsetzen": Action.MANAGE_SENDING,
    "POST " + _V + "/thread/rest": Action.MANAGE_SENDING,
    "POST " + _V + "/thread/loeschen": Action.MANAGE_SENDING,
    "GET /admin/abonnenten": Action.SUBSCRIBER_FIGURES,
    "GET /admin/abonnenten/export": Action.READ_SUBSCRIBERS,
    "GET /admin/abonnenten/{id}": Action.READ_SUBSCRIBERS,
    "GET /admin/abonnenten/{id}/loeschen": Action.ERASE_SUBSCRIBER,
    "POST /admin/abonnenten/{id}/loeschen": Action.ERASE_SUBSCRIBER,
    "GET /admin/protokoll": Action.READ_AUDIT_LOG,
    # the REST API
    f"GET {_API}/openapi.json": Action.READ_PUBLIC,
    f"GET {_API}/announcements": Action.READ_ANNOUNCEMENT,
    f"POST {_API}/announcements": Action.WRITE_ANNOUNCEMENT,
    f"POST {_API}/announcements/preview": Action.WRITE_ANNOUNCEMENT,
    f"GET {_API}/announcements/{{id}}": Action.READ_ANNOUNCEMENT,
    f"PUT {_API}/announcements/{{id}}": Action.EDIT_ANNOUNCEMENT,
    f"POST {_API}/announcements/{{id}}/preview": Action.READ_ANNOUNCEMENT,
    f"POST {_API}/announcements/{{id}}/submit": Action.SUBMIT,
    f"POST {_API}/announcements/{{id}}/approve": Action.APPROVE,
    f"POST {_API}/announcements/{{id}}/schedule": Action.SCHEDULE,
    f"POST {_API}/announcements/{{id}}/cancel": Action.CANCEL,
    f"POST {_API}/announcements/{{id}}/duplicate": Action.WRITE_ANNOUNCEMENT,
    f"GET {_API}/announcements/{{id}}/status": Action.FOLLOW_SENDING,
    f"GET {_API}/subscribers": Action.READ_SUBSCRIBERS,
    f"POST {_API}/subscribers/import": Action.IMPORT_SUBSCRIBERS,
    f"GET {_API}/subscribers/export": Action.READ_SUBSCRIBERS,
    f"POST {_API}/subscribers/erase": Action.ERASE_SUBSCRIBER,
    f"DELETE {_API}/subscribers/{{id}}": Action.ERASE_SUBSCRIBER,
}


def route_action(method: str, path: str) -> Action:
    """The action behind a route (``path`` as its pattern, e.g. ``/archiv/{id}``)."""
    return ROUTES[f"{method} {path}"]
