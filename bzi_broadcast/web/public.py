"""The subscriber's pages: sign up, confirm, unsubscribe (also RFC 8058 one-click), preferences.

Forms work without JavaScript. A sign-up answers the same page, with the same work done before
answering, for every address: what happens next (a mail, or nothing for an address that is
active or suppressed) runs after the answer, so neither the page nor its timing tells whether an
address is known. Links carry signed, expiring tokens; a confirmation needs the button's POST, so
mail scanners that fetch links confirm no one.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from multidict import MultiDictProxy

from bzi_broadcast.channels.email import EmailChannel
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.i18n import use_locale
from bzi_broadcast.subscribers.lifecycle import Preferences, SignUp, Subscriptions, TokenState
from bzi_broadcast.subscribers.store import normalize_email
from bzi_broadcast.web.app import (
    CONTEXT,
    check_csrf,
    client_ip,
    context_of,
    csrf_token,
    language_of,
    page,
)

log = logging.getLogger(__name__)

SUBSCRIPTIONS = web.AppKey("subscriptions", Subscriptions)
BACKGROUND = web.AppKey("background", set[asyncio.Task[None]])
NAME_LIMIT = 200
ONE_CLICK = "List-Unsubscribe=One-Click"
BERLIN = ZoneInfo("Europe/Berlin")
MAX_PAUSE = timedelta(days=366)  # a pause of up to a year


def setup(app: web.Application) -> None:
    app.on_startup.append(_start)
    app.on_cleanup.append(_finish_background)
    app.router.add_get("/anmelden", _sign_up_form)
    app.router.add_post("/anmelden", _sign_up)
    app.router.add_get("/bestaetigen/{token}", _confirm_form)
    app.router.add_post("/bestaetigen/{token}", _confirm)
    app.router.add_get("/abmelden/{token}", _unsubscribe_form)
    app.router.add_post("/abmelden/{token}", _unsubscribe)
    app.router.add_get("/einstellungen/{token}", _preferences_form)
    app.router.add_post("/einstellungen/{token}", _preferences)


async def _start(app: web.Application) -> None:
    context = app[CONTEXT]
    email: EmailChannel = context.extras["email"]
    environment = context.renderer.environment

    async def mail(to: str, language: str, link: str, name: str) -> None:
        organisation = context.settings.organisation
        values = {"link": link, "name": name, "organisation": organisation, "language": language}
        with use_locale(language):
            subject = _("Bitte bestätigen Sie Ihre Anmeldung")
            html = environment.get_template("email/confirm.html.j2").render(**values)
            text = environment.get_template("email/confirm.txt.j2").render(**values)
        await email.send_single(to, subject, html, text)

    app[SUBSCRIPTIONS] = Subscriptions(context.engine, context.settings, context.signer, mail)
    app[BACKGROUND] = set()


async def _finish_background(app: web.Application) -> None:
    tasks = app[BACKGROUND]
    if tasks:
        await asyncio.wait(tasks, timeout=10)


# --- sign-up --------------------------------------------------------------------------------


async def _sign_up_form(request: web.Request) -> web.Response:
    response = web.Response()
    values = {"language": language_of(request), "topics": []}
    return _with_form(request, response, "anmelden.html.j2", values=values, problems={})


async def _sign_up(request: web.Request) -> web.Response:
    form = await request.post()
    check_csrf(request, form)
    subscriptions = request.app[SUBSCRIPTIONS]
    ip = client_ip(request)
    values, problems, sign_up = _read_sign_up(request, form, ip)
    if problems:
        return _with_form(
            request, web.Response(status=400), "anmelden.html.j2", values=values, problems=problems
        )
    if not await subscriptions.allow_sign_up(ip):
        return page(
            request,
            "hinweis.html.j2",
            status=429,
            heading=_("Zu viele Anmeldungen"),
            message=_(
                "Von Ihrem Anschluss kamen zu viele Anmeldungen. Bitte versuchen Sie es "
                "in einer Stunde erneut."
            ),
        )
    assert sign_up is not None
    _in_background(request.app, subscriptions.sign_up(sign_up))
    return page(
        request,
        "hinweis.html.j2",
        heading=_("Fast geschafft"),
        message=_(
            "Wenn die Adresse noch nicht angemeldet ist, schicken wir Ihnen gleich eine "
            "E-Mail mit einem Bestätigungslink. Erst mit Ihrer Bestätigung ist die "
            "Anmeldung abgeschlossen."
        ),
    )


def _read_sign_up(
    request: web.Request, form: MultiDictProxy[Any], ip: str | None
) -> tuple[dict[str, Any], dict[str, str], SignUp | None]:
    settings = context_of(request).settings
    known_topics = {topic.id for topic in settings.subscribers.topics}
    raw_email = str(form.get("email", "")).strip()
    name = str(form.get("name", "")).strip()
    language = str(form.get("language", "de"))
    topics = [str(t) for t in form.getall("topics", []) if str(t) in known_topics]
    values = {"email": raw_email, "name": name, "language": language, "topics": topics}
    problems: dict[str, str] = {}
    email = normalize_address(raw_email)
    if not raw_email:
        problems["email"] = _("Bitte geben Sie Ihre E-Mail-Adresse an.")
    elif email is None:
        problems["email"] = _("Das ist keine gültige E-Mail-Adresse.")
    if len(name) > NAME_LIMIT or _CONTROL.search(name):
        problems["name"] = _("Der Name darf höchstens 200 Zeichen lang sein.")
    if language not in ("de", "en"):
        problems["language"] = _("Bitte wählen Sie Deutsch oder Englisch.")
    if form.get("consent") != "ja":
        problems["consent"] = _("Ohne Ihre Einwilligung können wir Ihnen keinen Newsletter senden.")
    if problems or email is None:
        return values, problems, None
    return (
        values,
        problems,
        SignUp(
            email=email,
            name=name or None,
            language=language,
            topics=frozenset(topics),
            ip=ip,
        ),
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalize_address(value: str) -> str | None:
    """Lower-case, the domain in IDNA (``anna@bücher.example`` → ``anna@xn--bcher-kva.example``)."""
    local, at, domain = value.strip().rpartition("@")
    if not at or not local or not domain or _CONTROL.search(value) or not local.isascii():
        return None
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return normalize_email(f"{local}@{ascii_domain}")


def _pause_problem(pause: date) -> dict[str, str]:
    """A pause ends tomorrow at the earliest and within ``MAX_PAUSE``: a date in the past means
    nothing, and the calendar's edges (0001-01-01) do not survive the time-zone conversion."""
    today = datetime.now(BERLIN).date()
    latest = today + MAX_PAUSE
    if today < pause <= latest:
        return {}
    message = _("Bitte ein Datum zwischen morgen und dem {latest} angeben.")
    return {"paused_until": message.format(latest=latest.strftime("%d.%m.%Y"))}


def _with_form(
    request: web.Request,
    response: web.Response,
    template: str,
    *,
    values: dict[str, Any],
    problems: dict[str, str],
) -> web.Response:
    settings = context_of(request).settings.subscribers
    language = language_of(request)
    token = csrf_token(request, response)
    rendered = page(
        request,
        template,
        status=response.status,
        csrf=token,
        values=values,
        problems=problems,
        topics=[(t.id, t.en if language == "en" else t.de) for t in settings.topics],
        consent_text=settings.consent_text_en if language == "en" else settings.consent_text_de,
        consent_version=settings.consent_version,
    )
    rendered.cookies.update(response.cookies)
    return rendered


def _in_background(app: web.Application, work: Any) -> None:
    async def run() -> None:
        try:
            await work
        except Exception:
            log.exception("sign-up processing failed")

    task = asyncio.create_task(run())
    app[BACKGROUND].add(task)
    task.add_done_callback(app[BACKGROUND].discard)


# --- confirm --------------------------------------------------------------------------------


async def _confirm_form(request: web.Request) -> web.Response:
    state, _link = await request.app[SUBSCRIPTIONS].resolve(request.match_info["token"], "confirm")
    if state is not TokenState.VALID:
        return _bad_link(request, state)
    return page(request, "bestaetigen.html.j2", action=request.path)


async def _confirm(request: web.Request) -> web.Response:
    subscriptions = request.app[SUBSCRIPTIONS]
    state, link = await subscriptions.resolve(request.match_info["token"], "confirm")
    if state is not TokenState.VALID or link is None:
        return _bad_link(request, state)
    confirmed = await subscriptions.confirm(link.subscriber_id, client_ip(request))
    return page(
        request,
        "hinweis.html.j2",
        heading=_("Anmeldung bestätigt") if confirmed else _("Schon bestätigt"),
        message=(
            _("Vielen Dank! Sie erhalten ab jetzt unseren Newsletter.")
            if confirmed
            else _("Diese Anmeldung war bereits bestätigt. Es ist nichts weiter zu tun.")
        ),
        link=subscriptions.preferences_link(link),
        link_text=_("Themen und Sprache einstellen"),
    )


def _bad_link(request: web.Request, state: TokenState) -> web.Response:
    if state is TokenState.GONE:
        return page(
            request,
            "hinweis.html.j2",
            status=410,
            heading=_("Link nicht mehr gültig"),
            message=_(
                "Zu diesem Link gibt es keine Anmeldung mehr – zum Beispiel, weil die Daten "
                "gelöscht wurden. Sie können sich jederzeit neu anmelden."
            ),
            link="/anmelden",
            link_text=_("Zur Anmeldung"),
        )
    expired = state is TokenState.EXPIRED
    return page(
        request,
        "hinweis.html.j2",
        status=410 if expired else 400,
        heading=_("Link abgelaufen") if expired else _("Link ungültig"),
        message=(
            _("Dieser Link ist nicht mehr gültig. Sie können sich einfach neu anmelden.")
            if expired
            else _(
                "Dieser Link ist unvollständig oder wurde verändert. Bitte verwenden Sie "
                "den Link aus unserer E-Mail oder melden Sie sich neu an."
            )
        ),
        link="/anmelden",
        link_text=_("Zur Anmeldung"),
    )


# --- unsubscribe ----------------------------------------------------------------------------


async def _unsubscribe_form(request: web.Request) -> web.Response:
    state, _link = await request.app[SUBSCRIPTIONS].resolve(
        request.match_info["token"], "unsubscribe"
    )
    if state is not TokenState.VALID:
        return _bad_link(request, state)
    return page(request, "abmelden.html.j2", action=request.path)


async def _unsubscribe(request: web.Request) -> web.Response:
    """The page's button, and the RFC 8058 one-click POST (no cookies, no CSRF token)."""
    subscriptions = request.app[SUBSCRIPTIONS]
    state, link = await subscriptions.resolve(request.match_info["token"], "unsubscribe")
    if state is not TokenState.VALID or link is None:
        return _bad_link(request, state)
    form = await request.post()
    one_click = form.get("List-Unsubscribe") == "One-Click"
    await subscriptions.unsubscribe(link.subscriber_id, "one-click" if one_click else "page")
    if one_click:
        return web.Response(text=_("Abgemeldet."))
    return page(
        request,
        "hinweis.html.j2",
        heading=_("Abgemeldet"),
        message=_("Sie erhalten keinen Newsletter mehr. Schade, dass Sie gehen!"),
        link=subscriptions.preferences_link(link),
        link_text=_("Versehentlich abgemeldet? Wieder anmelden"),
    )


# --- preferences ----------------------------------------------------------------------------


async def _current_preferences(request: web.Request) -> Preferences | web.Response:
    """The preferences the link's token stands for, or the page explaining a bad link."""
    subscriptions = request.app[SUBSCRIPTIONS]
    state, link = await subscriptions.resolve(request.match_info["token"], "preferences")
    if state is not TokenState.VALID or link is None:
        return _bad_link(request, state)
    current = await subscriptions.preferences(link.subscriber_id)
    return current if current is not None else _bad_link(request, TokenState.GONE)


async def _preferences_form(request: web.Request) -> web.Response:
    current = await _current_preferences(request)
    if isinstance(current, web.Response):
        return current
    values = {
        "language": current.language,
        "topics": sorted(current.topics),
        "paused_until": current.paused_until.isoformat() if current.paused_until else "",
        "unsubscribed": current.status == "unsubscribed",
    }
    return _with_form(request, web.Response(), "einstellungen.html.j2", values=values, problems={})


async def _preferences(request: web.Request) -> web.Response:
    current = await _current_preferences(request)
    if isinstance(current, web.Response):
        return current
    form = await request.post()
    check_csrf(request, form)
    known = {t.id for t in context_of(request).settings.subscribers.topics}
    language = str(form.get("language", current.language))
    topics = frozenset(str(t) for t in form.getall("topics", []) if str(t) in known)
    raw_pause = str(form.get("paused_until", "")).strip()
    values = {
        "language": language,
        "topics": sorted(topics),
        "paused_until": raw_pause,
        "unsubscribed": current.status == "unsubscribed",
    }
    problems: dict[str, str] = {}
    pause: date | None = None
    if language not in ("de", "en"):
        problems["language"] = _("Bitte wählen Sie Deutsch oder Englisch.")
    if raw_pause:
        try:
            pause = date.fromisoformat(raw_pause)
        except ValueError:
            problems["paused_until"] = _("Bitte ein Datum im Format JJJJ-MM-TT angeben.")
        else:
            problems.update(_pause_problem(pause))
    if problems:
        return _with_form(
            request,
            web.Response(status=400),
            "einstellungen.html.j2",
            values=values,
            problems=problems,
        )
    subscriptions = request.app[SUBSCRIPTIONS]
    confirm = await subscriptions.update_preferences(
        current.subscriber_id,
        language=language,
        topics=topics,
        paused_until=pause,
        resubscribe=form.get("resubscribe") == "ja",
    )
    if confirm:  # a suppressed address: a fresh double opt-in, mailed after the answer
        _in_background(request.app, subscriptions.send_confirmation(current.subscriber_id))
    return page(
        request,
        "hinweis.html.j2",
        heading=_("Gespeichert"),
        message=(
            _(
                "Ihre Einstellungen sind gespeichert. Damit Sie den Newsletter wieder "
                "erhalten, bestätigen Sie bitte Ihre Adresse: Wir haben Ihnen dazu eine "
                "E-Mail mit einem Bestätigungslink geschickt."
            )
            if confirm
            else _("Ihre Einstellungen sind gespeichert.")
        ),
        link=request.path,
        link_text=_("Zurück zu den Einstellungen"),
    )
