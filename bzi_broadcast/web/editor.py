"""The announcement editor: forms for every block, live previews, the four-eyes steps.

``/admin/ankuendigungen/neu`` and ``/admin/ankuendigungen/{id}`` show one form for every field of
the content model. Without JavaScript every change of the form's shape (a block, a format, a
partner added, removed or moved) is a submit button that renders the form again with everything
typed kept; ``/static/admin.js`` only adds the live preview. Saving checks the content with the
model and the version the form was loaded with: someone else's newer edit is never overwritten.
The workflow steps are small forms of their own, each with its CSRF token and the version.
Images go to the media store at once (an upload) or when saving (an https address, fetched
then); ``media_pages`` serves them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bzi_broadcast.content.model import LOCAL_TZ, Announcement
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.errors import BroadcastError, NotFoundError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff import media, workflow
from bzi_broadcast.staff.accounts import User
from bzi_broadcast.staff.permissions import Action, check
from bzi_broadcast.staff.workflow import Draft, NotAllowed, StaleEdit
from bzi_broadcast.store.announcements import TransitionError
from bzi_broadcast.web import editor_form as forms
from bzi_broadcast.web import editor_problems as problems
from bzi_broadcast.web import media_pages
from bzi_broadcast.web.admin import require
from bzi_broadcast.web.app import CONTEXT, check_csrf, client_ip, context_of, page
from bzi_broadcast.web.dashboard import cancelled_url
from bzi_broadcast.web.editor_form import State
from bzi_broadcast.web.editor_page import (
    BASE,
    Notice,
    editor_page,
    redirect_notice,
    telegram_chat,
)
from bzi_broadcast.web.editor_preview import MastodonLimits, Preview, render
from bzi_broadcast.web.editor_problems import Errors
from bzi_broadcast.web.editor_trial import TrialSender
from bzi_broadcast.web.editor_upload import IMAGE_FIELD, Submission, read_form

S = AnnouncementStatus
LIMITS = web.AppKey("editor_limits", MastodonLimits)
TRIAL = web.AppKey("editor_trial", TrialSender)
STEP_ACTIONS = {
    "einreichen": Action.SUBMIT,
    "freigeben": Action.APPROVE,
    "zurueck": Action.EDIT_ANNOUNCEMENT,
    "planen": Action.SCHEDULE,
    "abbrechen": Action.CANCEL,
    "kopieren": Action.WRITE_ANNOUNCEMENT,
    "test": Action.WRITE_ANNOUNCEMENT,
}
STEPS = tuple(STEP_ACTIONS)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_services)
    app.router.add_get(f"{BASE}/neu", _new_form)
    app.router.add_post(f"{BASE}/neu", _new_post)
    app.router.add_post(f"{BASE}/vorschau", _preview)
    app.router.add_get(BASE + r"/{id:\d+}", _edit_form)
    app.router.add_post(BASE + r"/{id:\d+}", _edit_post)
    app.router.add_post(BASE + r"/{id:\d+}/{step:" + "|".join(STEPS) + "}", _step)
    app.router.add_get("/medien/{token}", media_pages.public_image)
    app.router.add_get("/admin/medien/{token}", media_pages.staff_image)


async def _services(app: web.Application) -> AsyncIterator[None]:
    context = app[CONTEXT]
    app[LIMITS] = MastodonLimits(context.settings.mastodon)
    app[TRIAL] = TrialSender(
        context.settings, context.renderer, context.extras["email"], engine=context.engine
    )
    yield
    await app[TRIAL].aclose()


# --- the form -----------------------------------------------------------------------------------


async def _new_form(request: web.Request) -> web.Response:
    user = await require(request)
    state = forms.blank()
    state["language"] = user.language if user.language in ("de", "en") else "de"
    return await editor_page(request, user, state, draft=None, version=None)


async def _edit_form(request: web.Request) -> web.Response:
    user = await require(request)
    draft = await _draft(request)
    state = forms.from_announcement(draft.announcement)
    preview = await _preview_of(request, draft.announcement, {}, state)
    notices = [redirect_notice(request.query.get("hinweis", ""))]
    return await editor_page(
        request,
        user,
        state,
        draft=draft,
        version=draft.version,
        preview=preview,
        notices=[n for n in notices if n],
    )


async def _new_post(request: web.Request) -> web.Response:
    return await _posted(request, await require(request), None)


async def _edit_post(request: web.Request) -> web.Response:
    user = await require(request)
    draft = await _draft(request)
    try:
        check(user, Action.EDIT_ANNOUNCEMENT, draft)
    except NotAllowed as exc:
        raise web.HTTPForbidden(text=exc.message) from None
    return await _posted(request, user, draft)


async def _posted(request: web.Request, user: User, draft: Draft | None) -> web.Response:
    """Every button of the form: change its shape, preview, or save."""
    submission = await read_form(request)
    check_csrf(request, submission.fields)
    state = forms.from_post(submission.fields)
    version = _number(submission.fields.get("version")) if draft else None
    upload_errors = await _take_image(request, user, submission, state)
    action = submission.fields.get("action", "preview")
    values: dict[str, Any] = {"draft": draft, "version": version}
    if action not in ("save", "preview"):
        state, focus = forms.apply(state, action)
        return await editor_page(request, user, state, errors=upload_errors, focus=focus, **values)
    announcement, errors = problems.validate(state)
    errors = _merged(errors, upload_errors)
    if action == "save" and announcement is not None and not errors:
        announcement, errors = await _adopt_image(request, user, announcement, state)
    if action == "preview" or errors or announcement is None:
        preview = await _preview_of(request, announcement, errors, state)
        status = 400 if action == "save" else 200
        return await editor_page(
            request, user, state, errors=errors, preview=preview, status=status, **values
        )
    return await _save(request, user, state, announcement, draft, version)


async def _save(
    request: web.Request,
    user: User,
    state: State,
    announcement: Announcement,
    draft: Draft | None,
    version: int | None,
) -> web.Response:
    engine, ip = context_of(request).engine, client_ip(request)
    if draft is None:
        new_id = await workflow.create(engine, announcement, user, ip=ip)
        raise web.HTTPSeeOther(f"{BASE}/{new_id}?hinweis=angelegt")
    try:
        await workflow.save(engine, draft.id, announcement, user, version=version or 0, ip=ip)
    except (StaleEdit, TransitionError) as exc:
        return await editor_page(
            request,
            user,
            state,
            draft=draft,
            version=version,
            notices=[Notice(text=exc.message, bad=True)],
            stale=isinstance(exc, StaleEdit),
            status=409,
        )
    outcome = "gespeichert" if draft.status == S.DRAFT else "entwurf"
    raise web.HTTPSeeOther(f"{BASE}/{draft.id}?hinweis={outcome}")


async def _take_image(
    request: web.Request, user: User, submission: Submission, state: State
) -> Errors:
    """Store a chosen image at once, so the form keeps it even when something else is wrong."""
    if submission.image_too_large:
        message = _("Das Bild ist größer als {limit} MB.").format(limit=media.MAX_BYTES >> 20)
        return {IMAGE_FIELD: [message]}
    if submission.image is None:
        return {}
    context = context_of(request)
    try:
        stored = await media.store(context.engine, submission.image, user)
    except media.ImageRefused as exc:
        return {IMAGE_FIELD: [exc.message]}
    state["image-src"] = media.media_url(context.settings.email.public_url, stored.token)
    state["image-width"], state["image-height"] = str(stored.width), str(stored.height)
    return {}


async def _adopt_image(
    request: web.Request, user: User, announcement: Announcement, state: State
) -> tuple[Announcement | None, Errors]:
    """Before saving: the image into the media store (an https address is fetched now, once),
    so the channels only ever read it from there; the form shows where it went."""
    context = context_of(request)
    try:
        adopted = await media.adopt_image(
            context.engine,
            announcement,
            public_url=context.settings.email.public_url,
            policy=media_pages.remote_policy(request),
            user=user,
        )
    except media.ImageRefused as exc:
        state |= {"image-src": "", "image-width": "", "image-height": ""}
        return None, {IMAGE_FIELD: [exc.message]}
    if adopted.image is not None:
        state["image-src"] = adopted.image.src
        state["image-width"] = str(adopted.image.width or "")
        state["image-height"] = str(adopted.image.height or "")
    return adopted, {}


def _merged(first: Errors, second: Errors) -> Errors:
    merged = {name: list(messages) for name, messages in first.items()}
    for name, messages in second.items():
        merged.setdefault(name, []).extend(messages)
    return merged


# --- the preview --------------------------------------------------------------------------------


async def _preview(request: web.Request) -> web.Response:
    """The preview fragment for what the form holds now (``admin.js`` asks while one types)."""
    await require(request)
    submission = await read_form(request)
    check_csrf(request, submission.fields)
    state = forms.from_post(submission.fields)
    announcement, errors = problems.validate(state)
    preview = await _preview_of(request, announcement, errors, state)
    response = page(request, "admin_preview.html.j2", preview=preview)
    response.headers["Cache-Control"] = "no-store"
    return response


async def _preview_of(
    request: web.Request, announcement: Announcement | None, errors: Errors, state: State
) -> Preview:
    if announcement is None or errors:
        return Preview(
            problems=tuple(
                f"{problems.where(name, state)}: {message}"
                for name, messages in errors.items()
                for message in messages
            )
        )
    limits, from_instance = await request.app[LIMITS].get()
    context = context_of(request)
    shown = media_pages.staff_view(request, announcement)
    renderer = context.renderer
    return await renderer.off_loop(render, renderer, shown, limits, from_instance)


# --- the workflow steps -------------------------------------------------------------------------


async def _step(request: web.Request) -> web.Response:
    user = await require(request)
    draft = await _draft(request)
    form = await request.post()
    check_csrf(request, form)
    step = request.match_info["step"]
    try:
        check(user, STEP_ACTIONS[step], draft)
        if step == "test":
            return await _send_test(request, user, draft)
        target = await _run_step(request, user, draft, step, form)
    except BroadcastError as exc:
        status = 403 if isinstance(exc, NotAllowed) else 409
        if not isinstance(exc, NotAllowed | StaleEdit | TransitionError):
            status = 400
        return await _saved_page(
            request,
            user,
            draft,
            [Notice(text=exc.message, bad=True)],
            status,
            schedule_at=str(form.get("at", ""))[:40] if step == "planen" else None,
        )
    raise web.HTTPSeeOther(target)


async def _saved_page(
    request: web.Request,
    user: User,
    draft: Draft,
    notices: list[Notice],
    status: int,
    **extra: Any,
) -> web.Response:
    """The editor showing the stored version (after a step, not a form post), with notices."""
    state = forms.from_announcement(draft.announcement)
    return await editor_page(
        request,
        user,
        state,
        draft=draft,
        version=draft.version,
        notices=notices,
        status=status,
        **extra,
    )


async def _run_step(request: web.Request, user: User, draft: Draft, step: str, form: Any) -> str:
    """Do ``step``; where to go next."""
    engine, ip = context_of(request).engine, client_ip(request)
    version = _number(form.get("version")) or 0
    here = f"{BASE}/{draft.id}?hinweis={step}"
    if step == "einreichen":
        await workflow.submit(engine, draft.id, user, version=version, ip=ip)
    elif step == "freigeben":
        await workflow.approve(engine, draft.id, user, version=version, ip=ip)
    elif step == "zurueck":
        await workflow.return_to_draft(engine, draft.id, user, version=version, ip=ip)
    elif step == "planen":
        at, twice = berlin_moment(str(form.get("at", "")))
        await workflow.schedule(engine, draft.id, user, at, version=version, ip=ip)
        return here + ("-doppelt" if twice else "")
    elif step == "abbrechen":
        if form.get("confirm") != "yes":
            raise BroadcastError(_("Bitte bestätigen Sie den Abbruch mit dem Häkchen."))
        report = await workflow.cancel(engine, draft.id, user, ip=ip)
        if report.stopped or report.sent or report.in_flight or report.failed:
            return cancelled_url(draft.id, report)  # the delivery page shows what became of it
    elif step == "kopieren":
        new_id = await workflow.duplicate(engine, draft.id, user, ip=ip)
        return f"{BASE}/{new_id}?hinweis=kopieren"
    return here


def berlin_moment(text: str) -> tuple[datetime, bool]:
    """A ``datetime-local`` value read in Europe/Berlin, in UTC; and whether the wall-clock time
    happens twice (the night summer time ends: the first, still summer time, is taken)."""
    try:
        naive = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BroadcastError(_("Bitte geben Sie Datum und Uhrzeit an.")) from None
    if naive.tzinfo is not None:
        raise BroadcastError(_("Bitte geben Sie Datum und Uhrzeit ohne Zeitzone an."))
    first = naive.replace(tzinfo=LOCAL_TZ, fold=0)
    if first.astimezone(UTC).astimezone(LOCAL_TZ).replace(tzinfo=None) != naive:
        raise BroadcastError(
            _(
                "{time} gibt es in Europe/Berlin nicht: In dieser Nacht wird die Uhr auf "
                "Sommerzeit vorgestellt. Bitte wählen Sie eine andere Uhrzeit."
            ).format(time=naive.strftime("%d.%m.%Y, %H:%M"))
        )
    twice = first.utcoffset() != naive.replace(tzinfo=LOCAL_TZ, fold=1).utcoffset()
    return first.astimezone(UTC), twice


async def _send_test(request: web.Request, user: User, draft: Draft) -> web.Response:
    trial = request.app[TRIAL]
    # the draft's image is private until release: the test mail links it signed for an hour
    outcomes = [await trial.email(media_pages.staff_view(request, draft.announcement), user.email)]
    chat = await telegram_chat(request, user)
    if chat is not None:
        outcomes.append(await trial.telegram(draft.announcement, chat))
    notices = [Notice(text=outcome.message, bad=not outcome.ok) for outcome in outcomes]
    return await _saved_page(
        request, user, draft, notices, 200 if all(o.ok for o in outcomes) else 502
    )


async def _draft(request: web.Request) -> Draft:
    try:
        return await workflow.load(context_of(request).engine, int(request.match_info["id"]))
    except NotFoundError as exc:
        raise web.HTTPNotFound(text=exc.message) from None


def _number(value: object) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None
