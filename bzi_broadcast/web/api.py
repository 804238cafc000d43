"""The REST API under /api/v1: bearer tokens, problem+json errors, the OpenAPI 3.1 document.

A sub-application with its own error middleware, so every answer under /api/v1 — an unknown
route, a wrong method and an oversized body included — is ``application/problem+json``. Callers
authenticate with ``Authorization: Bearer <token>`` only (``bzi-broadcast users token``); a
session cookie is never enough, so no CSRF token is needed. ``ROUTES`` is the one list that both
the router and the OpenAPI document are built from.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from bzi_broadcast.content.model import Announcement
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff.accounts import Role, User, token_user
from bzi_broadcast.staff.permissions import least_role, route_action
from bzi_broadcast.web import openapi
from bzi_broadcast.web.admin import SESSION_COOKIE
from bzi_broadcast.web.api_announcements import (
    announcement_status,
    approve_announcement,
    cancel_announcement,
    create_announcement,
    duplicate_announcement,
    get_announcement,
    list_announcements,
    preview_announcement,
    preview_unsaved,
    replace_announcement,
    schedule_announcement,
    submit_announcement,
)
from bzi_broadcast.web.api_io import Call, parse_query
from bzi_broadcast.web.api_models import (
    AnnouncementPage,
    AnnouncementQuery,
    AnnouncementResource,
    CancelledResource,
    DeliveryStatusReport,
    EraseRequest,
    ExportQuery,
    ImportQuery,
    ImportResult,
    Preview,
    ScheduleRequest,
    SubscriberExport,
    SubscriberPage,
    SubscriberQuery,
)
from bzi_broadcast.web.api_problems import (
    ApiProblem,
    from_error,
    json_response,
    log_unexpected,
    problem_response,
)
from bzi_broadcast.web.api_subscribers import (
    JSON_LINES,
    delete_subscriber,
    erase_subscriber,
    export_subscribers,
    import_subscribers,
    list_subscribers,
)
from bzi_broadcast.web.app import CONTEXT, Handler, context_of
from bzi_broadcast.web.openapi import Operation, Reply

PREFIX = "/api/v1"
OPENAPI = web.AppKey[dict[str, Any]]("openapi", dict)
API = web.AppKey("api", web.Application)  # the sub-application, on the main app
REALM = 'Bearer realm="bzi-broadcast"'


async def openapi_document(call: Call) -> web.Response:
    return json_response(call.request.app[OPENAPI])


_RESOURCE = Reply(description="The announcement", model=AnnouncementResource, headers=("ETag",))
_CREATED = Reply(
    description="The new draft",
    status=201,
    model=AnnouncementResource,
    headers=("ETag", "Location"),
)
_PREVIEW = Reply(description="Every channel's rendering", model=Preview)
_ERASED = Reply(description="Erased; only a keyed hash of the address remains", status=204)

_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        method="GET",
        path="/openapi.json",
        handler=openapi_document,
        summary="This document",
        replies=(Reply(description="OpenAPI 3.1"),),
    ),
    Operation(
        method="GET",
        path="/announcements",
        handler=list_announcements,
        summary="Announcements, newest first",
        query=AnnouncementQuery,
        replies=(Reply(description="One page", model=AnnouncementPage),),
    ),
    Operation(
        method="POST",
        path="/announcements",
        handler=create_announcement,
        summary="A new draft (the same JSON as an announcement file)",
        body=Announcement,
        replies=(_CREATED,),
    ),
    Operation(
        method="POST",
        path="/announcements/preview",
        handler=preview_unsaved,
        summary="Render unsaved content for every channel",
        body=Announcement,
        replies=(_PREVIEW,),
    ),
    Operation(
        method="GET",
        path="/announcements/{id}",
        handler=get_announcement,
        summary="Content, status, version, author, approval",
        replies=(_RESOURCE,),
    ),
    Operation(
        method="PUT",
        path="/announcements/{id}",
        handler=replace_announcement,
        summary="Replace the content; a submitted or approved one goes back to draft",
        body=Announcement,
        if_match="required",
        problems=(409,),
        replies=(_RESOURCE,),
    ),
    Operation(
        method="POST",
        path="/announcements/{id}/preview",
        handler=preview_announcement,
        summary="Render the stored content for every channel",
        replies=(_PREVIEW,),
    ),
    Operation(
        method="POST",
        path="/announcements/{id}/submit",
        handler=submit_announcement,
        summary="Submit a draft for approval",
        if_match="optional",
        problems=(409,),
        replies=(_RESOURCE,),
    ),
    Operation(
        method="POST",
        path="/announcements/{id}/approve",
        handler=approve_announcement,
        summary="Approve (four eyes: not by its author or submitter)",
        if_match="required",
        problems=(409,),
        replies=(_RESOURCE,),
    ),
    Operation(
        method="POST",
        path="/announcements/{id}/schedule",
        handler=schedule_announcement,
        summary="Schedule an approved announcement, or move a scheduled one",
        body=ScheduleRequest,
        if_match="optional",
        problems=(409,),
        replies=(_RESOURCE,),
    ),
    Operation(
        method="POST",
        path="/announcements/{id}/cancel",
        handler=cancel_announcement,
        summary="Cancel (an editor only their own draft or submission); answers once the sends "
        "in flight have settled, with what was stopped, sent and is still under way",
        problems=(409,),
        replies=(
            Reply(
                description="The announcement and its deliveries",
                model=CancelledResource,
                headers=("ETag",),
            ),
        ),
    ),
    Operation(
        method="POST",
        path="/announcements/{id}/duplicate",
        handler=duplicate_announcement,
        summary="A new draft with the same content, without its times",
        replies=(_CREATED,),
    ),
    Operation(
        method="GET",
        path="/announcements/{id}/status",
        handler=announcement_status,
        summary="Deliveries per channel: queued, sending, sent, failed, cancelled",
        replies=(Reply(description="Delivery counts", model=DeliveryStatusReport),),
    ),
    Operation(
        method="GET",
        path="/subscribers",
        handler=list_subscribers,
        summary="Subscribers, oldest first",
        query=SubscriberQuery,
        replies=(Reply(description="One page", model=SubscriberPage),),
    ),
    Operation(
        method="POST",
        path="/subscribers/import",
        handler=import_subscribers,
        summary="Import CSV: email,consent_source[,name][,language][,topics] with a header",
        query=ImportQuery,
        body="text/csv",
        replies=(Reply(description="What was imported; each skipped line", model=ImportResult),),
    ),
    Operation(
        method="GET",
        path="/subscribers/export",
        handler=export_subscribers,
        summary="Everyone with their topics (GDPR Art. 20)",
        query=ExportQuery,
        replies=(
            Reply(
                description="A JSON array, or JSON lines with format=jsonl",
                model=SubscriberExport,
                media_types=("application/json", JSON_LINES),
            ),
        ),
    ),
    Operation(
        method="POST",
        path="/subscribers/erase",
        handler=erase_subscriber,
        summary="Erase a person by address (GDPR Art. 17)",
        body=EraseRequest,
        problems=(404,),
        replies=(_ERASED,),
    ),
    Operation(
        method="DELETE",
        path="/subscribers/{id}",
        handler=delete_subscriber,
        summary="Erase a person (GDPR Art. 17), also one who only uses the Telegram bot",
        replies=(_ERASED,),
    ),
)

# Each operation needs the least role the permission table gives its action: one table for every
# door (an operation missing from it fails here, at import).
ROUTES: tuple[Operation, ...] = tuple(
    replace(op, role=least_role(route_action(op.method, PREFIX + op.path))) for op in _OPERATIONS
)


def setup(app: web.Application) -> None:
    api = web.Application(middlewares=[_problems])
    api[CONTEXT] = app[CONTEXT]
    api[OPENAPI] = openapi.document(ROUTES)
    for operation in ROUTES:
        api.router.add_route(
            operation.method,
            operation.path,
            _endpoint(operation),
            name=operation.operation_id,
        )
    app.add_subapp(PREFIX, api)
    app[API] = api


def _endpoint(operation: Operation) -> Handler:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        caller = None if operation.role is None else await _caller(request, operation.role)
        query = None if operation.query is None else parse_query(request, operation.query)
        return await operation.handler(Call(request=request, caller=caller, query=query))

    return endpoint


async def _caller(request: web.Request, role: Role) -> User:
    """The token's owner with at least ``role``: 401 without a valid token, 403 below the role."""
    scheme, _sep, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        detail = (
            _("Die API nimmt keine Anmelde-Cookies an, nur Authorization: Bearer <token>.")
            if SESSION_COOKIE in request.cookies
            else _("Senden Sie einen API-Token als Authorization: Bearer <token>.")
        )
        raise ApiProblem(401, detail, headers={"WWW-Authenticate": REALM})
    user = await token_user(context_of(request).engine, token.strip())
    if user is None:
        raise ApiProblem(
            401,
            _("Dieser API-Token ist unbekannt oder widerrufen."),
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    if not user.role.allows(role):
        raise ApiProblem(403, _("Dafür fehlt Ihrer Rolle die Berechtigung."))
    return user


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as error:
        if isinstance(error, web.HTTPException) and error.status < 400:
            raise
        problem = from_error(error)
        if problem.status == 500:
            log_unexpected(request, error)
        return problem_response(request, problem)
