"""REST handlers for announcements: write, list, read, replace, preview, and every workflow step.

All changes go through ``staff.workflow`` (four eyes, versions, the audit log); this module only
translates between HTTP and those calls. The version is the ETag; a change based on an older
one is refused with 412.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.content.model import Announcement
from bzi_broadcast.delivery import control
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.delivery.outbox import Outbox
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.render import Renderer, ThreadLimits
from bzi_broadcast.render.renditions import EmailRendition, MastodonRendition, TelegramRendition
from bzi_broadcast.render.social import TELEGRAM_CAPTION_LIMIT, TELEGRAM_MESSAGE_LIMIT
from bzi_broadcast.staff import workflow
from bzi_broadcast.staff.workflow import Draft
from bzi_broadcast.store.schema import announcements, users
from bzi_broadcast.web.api_io import (
    Call,
    adopt_image,
    etag,
    if_match,
    parse_announcement,
    parse_body,
    read_json,
    utc,
)
from bzi_broadcast.web.api_models import (
    AnnouncementPage,
    AnnouncementQuery,
    AnnouncementResource,
    AnnouncementSummary,
    Approval,
    CancelCounts,
    CancelledResource,
    ChannelCounts,
    DeliveryStatusReport,
    EmailPreview,
    MastodonPostPreview,
    MastodonPreview,
    Person,
    Preview,
    ScheduleRequest,
    TelegramMessagePreview,
    TelegramPreview,
)
from bzi_broadcast.web.api_problems import ApiProblem, FieldProblem, json_response
from bzi_broadcast.web.editor import LIMITS

BASE = "/api/v1/announcements"


async def list_announcements(call: Call) -> web.Response:
    query = call.params(AnnouncementQuery)
    where = [] if query.status is None else [announcements.c.status == str(query.status)]
    async with call.context.engine.connect() as conn:
        total = (
            await conn.execute(select(func.count()).select_from(announcements).where(*where))
        ).scalar_one()
        rows = (
            await conn.execute(
                select(announcements, users.c.name.label("author_name"))
                .outerjoin(users, users.c.id == announcements.c.author_id)
                .where(*where)
                .order_by(announcements.c.id.desc())
                .limit(query.per_page)
                .offset((query.page - 1) * query.per_page)
            )
        ).all()
    items = [
        AnnouncementSummary(
            id=row.id,
            title=row.title,
            language=row.language,
            status=AnnouncementStatus(row.status),
            status_label=workflow.status_label(AnnouncementStatus(row.status)),
            version=row.version,
            publish_at=row.publish_at,
            updated_at=row.updated_at,
            author=None
            if row.author_name is None
            else Person(id=row.author_id, name=row.author_name),
        )
        for row in rows
    ]
    page = AnnouncementPage(items=items, page=query.page, per_page=query.per_page, total=total)
    return json_response(page.model_dump(mode="json"))


async def create_announcement(call: Call) -> web.Response:
    announcement = await adopt_image(call, parse_announcement(await read_json(call.request)))
    new_id = await workflow.create(call.context.engine, announcement, call.user, ip=call.ip)
    return await _created(call, new_id)


async def get_announcement(call: Call) -> web.Response:
    return await _answer(call, call.id())


async def _versioned(call: Call, *, required: bool) -> tuple[int, int]:
    """The id in the path and the version the caller acts on (If-Match, else the current)."""
    announcement_id = call.id()
    draft = await workflow.load(call.context.engine, announcement_id)
    return announcement_id, if_match(call.request, draft.version, required=required)


async def replace_announcement(call: Call) -> web.Response:
    """The whole announcement anew; back to draft if it was submitted, approved or scheduled."""
    announcement_id, version = await _versioned(call, required=True)
    announcement = await adopt_image(call, parse_announcement(await read_json(call.request)))
    await workflow.save(
        call.context.engine, announcement_id, announcement, call.user, version=version, ip=call.ip
    )
    return await _answer(call, announcement_id)


async def submit_announcement(call: Call) -> web.Response:
    announcement_id, version = await _versioned(call, required=False)
    await workflow.submit(
        call.context.engine, announcement_id, call.user, version=version, ip=call.ip
    )
    return await _answer(call, announcement_id)


async def approve_announcement(call: Call) -> web.Response:
    """If-Match is required: an approval covers exactly the version the approver read."""
    announcement_id, version = await _versioned(call, required=True)
    await workflow.approve(
        call.context.engine, announcement_id, call.user, version=version, ip=call.ip
    )
    return await _answer(call, announcement_id)


async def schedule_announcement(call: Call) -> web.Response:
    announcement_id, version = await _versioned(call, required=False)
    body = parse_body(await read_json(call.request), ScheduleRequest)
    at = utc(body.publish_at, "publish_at")
    try:
        await workflow.schedule(
            call.context.engine, announcement_id, call.user, at, version=version, ip=call.ip
        )
    except BroadcastError as exc:
        if type(exc) is not BroadcastError:  # not allowed, stale, wrong status: mapped as such
            raise
        where = FieldProblem(detail=exc.message, pointer="/publish_at", field="publish_at")
        raise ApiProblem(422, exc.message, errors=[where]) from None
    return await _answer(call, announcement_id)


async def cancel_announcement(call: Call) -> web.Response:
    """The announcement, and what became of its deliveries once the sends in flight settled."""
    announcement_id = call.id()
    report = await workflow.cancel(call.context.engine, announcement_id, call.user, ip=call.ip)
    draft = await workflow.load(call.context.engine, announcement_id)
    resource = await _resource(call.context.engine, draft)
    counts = CancelCounts(
        stopped=report.stopped, sent=report.sent, in_flight=report.in_flight, failed=report.failed
    )
    cancelled = CancelledResource(**dict(resource), deliveries=counts)
    return json_response(cancelled.model_dump(mode="json"), headers={"ETag": etag(draft.version)})


async def duplicate_announcement(call: Call) -> web.Response:
    new_id = await workflow.duplicate(call.context.engine, call.id(), call.user, ip=call.ip)
    return await _created(call, new_id)


async def preview_announcement(call: Call) -> web.Response:
    draft = await workflow.load(call.context.engine, call.id())
    return await _preview(call, draft.announcement)


async def preview_unsaved(call: Call) -> web.Response:
    announcement = await adopt_image(call, parse_announcement(await read_json(call.request)))
    return await _preview(call, announcement)


async def announcement_status(call: Call) -> web.Response:
    """Per channel: how many deliveries are queued, sending, sent, failed, cancelled."""
    engine = call.context.engine
    draft = await workflow.load(engine, call.id())
    counts = await Outbox(engine, worker_id="api", lease=timedelta(0)).counts(draft.id)
    paused = await control.paused_channels(engine)
    report = DeliveryStatusReport(
        id=draft.id,
        status=draft.status,
        publish_at=draft.publish_at,
        channels={
            name: ChannelCounts(
                queued=c.queued,
                sending=c.sending,
                sent=c.sent,
                failed=c.failed,
                cancelled=c.cancelled,
                total=c.total,
                paused=name in paused,
                pause_reason=paused.get(name),
            )
            for name, c in counts.items()
        },
    )
    return json_response(report.model_dump(mode="json"))


async def _created(call: Call, announcement_id: int) -> web.Response:
    response = await _answer(call, announcement_id, status=201)
    response.headers["Location"] = f"{BASE}/{announcement_id}"
    return response


async def _answer(call: Call, announcement_id: int, *, status: int = 200) -> web.Response:
    draft = await workflow.load(call.context.engine, announcement_id)
    resource = await _resource(call.context.engine, draft)
    return json_response(
        resource.model_dump(mode="json"), status=status, headers={"ETag": etag(draft.version)}
    )


async def _resource(engine: AsyncEngine, draft: Draft) -> AnnouncementResource:
    people = await _people(engine, {draft.author_id, draft.submitted_by, draft.approved_by})
    approval = (
        Approval(by=people.get(draft.approved_by), at=draft.approved_at)
        if draft.approved_at is not None
        else None
    )
    return AnnouncementResource(
        id=draft.id,
        status=draft.status,
        status_label=workflow.status_label(draft.status),
        version=draft.version,
        publish_at=draft.publish_at,
        updated_at=draft.updated_at,
        author=people.get(draft.author_id),
        submitted_by=people.get(draft.submitted_by),
        approval=approval,
        content=draft.announcement,
    )


async def _people(engine: AsyncEngine, ids: set[int | None]) -> dict[int | None, Person]:
    wanted = [i for i in ids if i is not None]
    if not wanted:
        return {}
    async with engine.connect() as conn:
        rows = await conn.execute(select(users.c.id, users.c.name).where(users.c.id.in_(wanted)))
        return {row.id: Person(id=row.id, name=row.name) for row in rows}


async def _preview(call: Call, announcement: Announcement) -> web.Response:
    """Split for Mastodon by the instance's own limits, as the editor's preview does."""
    renderer = call.context.renderer
    instance = call.request.config_dict.get(LIMITS)  # the editor's, on the main app
    limits, from_instance = await instance.get() if instance else (ThreadLimits(), False)
    try:
        email, mastodon, telegram = await renderer.off_loop(
            _renditions, renderer, announcement, limits
        )
    except (ValueError, BroadcastError) as exc:  # e.g. a hashtag longer than a post
        message = exc.message if isinstance(exc, BroadcastError) else str(exc)
        raise ApiProblem(
            422, _("Die Vorschau ist nicht möglich: {reason}").format(reason=message)
        ) from exc
    preview = Preview(
        email=EmailPreview(**email.to_json()),
        mastodon=MastodonPreview(
            max_characters=mastodon.max_characters,
            url_length=mastodon.url_length,
            from_instance=from_instance,
            posts=[
                MastodonPostPreview(
                    **post.to_json(),
                    length=post.length,
                    limit=mastodon.max_characters,
                    media_description=post.media_description,
                )
                for post in mastodon.posts
            ],
        ),
        telegram=TelegramPreview(
            messages=[
                TelegramMessagePreview(
                    **message.to_json(),
                    length=message.length,
                    limit=TELEGRAM_CAPTION_LIMIT if message.photo else TELEGRAM_MESSAGE_LIMIT,
                    photo=message.photo,
                )
                for message in telegram.messages
            ]
        ),
    )
    return json_response(preview.model_dump(mode="json"))


def _renditions(
    renderer: Renderer, announcement: Announcement, limits: ThreadLimits
) -> tuple[EmailRendition, MastodonRendition, TelegramRendition]:
    """Every channel's rendition (in the renderer's thread pool: splitting is CPU work)."""
    return (
        renderer.email(announcement),
        renderer.mastodon(announcement, limits),
        renderer.telegram(announcement),
    )
