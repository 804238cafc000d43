"""Problem details (RFC 9457) for the REST API: every error under /api/v1 is one of these.

Handlers raise ``ApiProblem`` or let a domain error through; the API's middleware turns both, and
aiohttp's own HTTP errors (unknown route, wrong method, oversized body), into
``application/problem+json``. Titles and details speak the caller's language (``Accept-Language``;
German by default). An unexpected error is logged with its traceback and answered with a plain
500 problem that shows none of it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bzi_broadcast.errors import BroadcastError, ContentError, NotFoundError
from bzi_broadcast.i18n import N_
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff.workflow import NotAllowed, StaleEdit
from bzi_broadcast.store.announcements import TransitionError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "tag:bzi-broadcast,2026:problem/"  # RFC 9457 §3.1.1: a stable, non-resolvable URI

_TITLES = {
    400: N_("Ungültige Anfrage"),
    401: N_("Anmeldung erforderlich"),
    403: N_("Keine Berechtigung"),
    404: N_("Nicht gefunden"),
    405: N_("Methode nicht erlaubt"),
    409: N_("Schritt nicht möglich"),
    412: N_("Veraltete Fassung"),
    413: N_("Anfrage zu groß"),
    415: N_("Inhaltstyp nicht unterstützt"),
    422: N_("Ungültige Angaben"),
    428: N_("If-Match fehlt"),
    500: N_("Interner Fehler"),
}
_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    412: "stale-version",
    413: "too-large",
    415: "unsupported-media-type",
    422: "validation",
    428: "precondition-required",
    500: "internal",
}
# Every status a problem may carry; the OpenAPI document lists the same set.
STATUSES = tuple(sorted(_TITLES))


@dataclass(frozen=True, kw_only=True)
class FieldProblem:
    """One wrong value: a JSON pointer into the body (or a query parameter) and what is wrong."""

    detail: str
    pointer: str | None = None
    field: str | None = None  # the same place as the CLI names it, e.g. ``blocks[1].speaker``
    parameter: str | None = None
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        values = {
            "pointer": self.pointer,
            "field": self.field,
            "parameter": self.parameter,
            "line": self.line,
        }
        return {"detail": self.detail} | {k: v for k, v in values.items() if v is not None}


class ApiProblem(Exception):
    """An answer with an HTTP error status, raised anywhere below a handler."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        errors: Sequence[FieldProblem] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = tuple(errors)
        self.headers = dict(headers or {})


def from_error(error: BaseException) -> ApiProblem:
    """The problem a domain error or an aiohttp HTTP error stands for (500 for anything else)."""
    if isinstance(error, ApiProblem):
        return error
    if isinstance(error, web.HTTPException):
        return _from_http(error)
    if isinstance(error, ContentError):
        return ApiProblem(422, _("Die Ankündigung ist ungültig."), errors=content_errors(error))
    if isinstance(error, BroadcastError):
        return ApiProblem(_status_of(error), error.message)
    return ApiProblem(500, _("Ein interner Fehler ist aufgetreten."))


def _status_of(error: BroadcastError) -> int:
    for kind, status in (
        (NotAllowed, 403),
        (NotFoundError, 404),
        (TransitionError, 409),
        (StaleEdit, 412),
    ):
        if isinstance(error, kind):
            return status
    return 422


def _from_http(error: web.HTTPException) -> ApiProblem:
    status = error.status if error.status in _TITLES else 400
    headers = {}
    if isinstance(error, web.HTTPMethodNotAllowed):
        headers["Allow"] = ", ".join(sorted(error.allowed_methods))
    detail = {
        404: _("Diese Adresse gibt es in der API nicht."),
        405: _("Diese Methode ist hier nicht erlaubt."),
        413: _("Der Inhalt der Anfrage ist zu groß."),
    }.get(error.status)
    return ApiProblem(status, detail, headers=headers)


def content_errors(error: ContentError) -> list[FieldProblem]:
    return [
        FieldProblem(
            detail=problem.message,
            pointer=pointer_of(problem.path),
            field=problem.path or None,
            line=problem.line,
        )
        for problem in error.problems
    ]


def pointer_of(path: str) -> str:
    """``blocks[1].speaker`` → ``/blocks/1/speaker`` (RFC 6901); the whole document is ``""``."""
    parts: list[str] = []
    for dotted in path.split(".") if path else ():
        name, _sep, indexes = dotted.partition("[")
        if name:
            parts.append(name)
        parts.extend(index.rstrip("]") for index in indexes.split("[") if index)
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def problem_response(request: web.Request, problem: ApiProblem) -> web.Response:
    body: dict[str, Any] = {
        "type": TYPE_BASE + _SLUGS[problem.status],
        "title": _(_TITLES[problem.status]),
        "status": problem.status,
        "detail": problem.detail or _(_TITLES[problem.status]),
        "instance": request.path,
    }
    if problem.errors:
        body["errors"] = [error.to_json() for error in problem.errors]
    response = json_response(body, status=problem.status, content_type=PROBLEM_JSON)
    response.headers.update(problem.headers)
    return response


def json_response(
    data: Any,
    *,
    status: int = 200,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    text = json.dumps(data, ensure_ascii=False)
    try:
        raw = text.encode()
    except UnicodeEncodeError:  # a lone surrogate somewhere: escaped JSON is still JSON
        raw = json.dumps(data).encode()
    return web.Response(
        body=raw, status=status, content_type=content_type, charset="utf-8", headers=headers
    )


def log_unexpected(request: web.Request, error: BaseException) -> None:
    log.error(
        "api request failed method=%s path=%s",
        request.method,
        request.path,
        exc_info=(type(error), error, error.__traceback__),
    )
