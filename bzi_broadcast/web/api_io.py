"""What every REST API handler reads: the caller, query parameters, JSON bodies, ids, ``If-Match``.

Input is checked here, at the edge, before any of it reaches the database: control characters
and lone surrogates (PostgreSQL refuses NUL in text; nothing legitimate needs them), numbers out
of the 64-bit id range, times that cannot be expressed in UTC.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from bzi_broadcast.content.loader import dotted_path, error_message, validate_announcement
from bzi_broadcast.content.model import Announcement
from bzi_broadcast.i18n import N_
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff import media
from bzi_broadcast.staff.accounts import User
from bzi_broadcast.web.api_models import MAX_ID
from bzi_broadcast.web.api_problems import ApiProblem, FieldProblem
from bzi_broadcast.web.app import WebContext, client_ip, context_of
from bzi_broadcast.web.media_pages import remote_policy

M = TypeVar("M", bound=BaseModel)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ETAG = re.compile(r'^"(\d{1,18})"$')


@dataclass(frozen=True, kw_only=True)
class Call:
    """One API request with its authenticated caller (``None`` only for public operations)."""

    request: web.Request
    caller: User | None
    query: BaseModel | None = None

    @property
    def context(self) -> WebContext:
        return context_of(self.request)

    @property
    def user(self) -> User:
        if self.caller is None:
            raise ApiProblem(401)
        return self.caller

    @property
    def ip(self) -> str | None:
        return client_ip(self.request)

    def params(self, model: type[M]) -> M:
        if not isinstance(self.query, model):
            raise TypeError(f"{model.__name__} is not this operation's query model")
        return self.query

    def id(self, name: str = "id") -> int:
        """A path id; anything that cannot be one is simply not found."""
        raw = self.request.match_info.get(name, "")
        digits = raw.lstrip("0") if raw.isascii() and raw.isdigit() else ""
        if not digits or len(digits) > len(str(MAX_ID)) or int(digits) > MAX_ID:
            raise ApiProblem(404, _("Diese Adresse gibt es in der API nicht."))
        return int(digits)


def parse_query(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        errors = [
            FieldProblem(detail=_message(error), parameter=str(error["loc"][0]))
            for error in exc.errors()
        ]
        raise ApiProblem(400, _("Ungültige Parameter."), errors=errors) from None


async def read_json(request: web.Request) -> Any:
    """The JSON body: 415 for another media type, 400 when it is no JSON, 422 for bad text."""
    if request.content_type != "application/json" and not request.content_type.endswith("+json"):
        raise ApiProblem(415, _("Erwartet wird application/json."))
    try:
        data = json.loads((await request.read()).decode("utf-8"))
    except UnicodeDecodeError as exc:
        detail = _("Der Inhalt ist nicht UTF-8-kodiert (Byte {offset}).").format(offset=exc.start)
        raise ApiProblem(400, detail) from None
    except json.JSONDecodeError as exc:
        detail = _("Kein gültiges JSON: {problem} (Zeile {line}, Spalte {column}).").format(
            problem=exc.msg, line=exc.lineno, column=exc.colno
        )
        raise ApiProblem(400, detail) from None
    except (ValueError, RecursionError):  # too deeply nested, or a number with 5000 digits
        raise ApiProblem(400, _("Kein gültiges JSON.")) from None
    check_text(data)
    return data


def check_text(data: Any) -> None:
    errors = [
        FieldProblem(
            detail=_("enthält Steuerzeichen oder ungültige Zeichen"),
            pointer=_pointer(path),
            field=dotted_path(path) or None,
        )
        for path in _bad_strings(data)
    ]
    if errors:
        raise ApiProblem(422, _("Die Angaben enthalten ungültige Zeichen."), errors=errors)


def _bad_strings(data: Any) -> Iterator[tuple[str | int, ...]]:
    """Where text holds control characters or lone surrogates (iterative: nesting is unbounded)."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if _bad(key):
                    yield path
                else:
                    stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in enumerate(value))
        elif isinstance(value, str) and _bad(value):
            yield path


def _bad(text: str) -> bool:
    if _CONTROL.search(text):
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_body(data: Any, model: type[M]) -> M:
    """A small request body; 422 naming each wrong field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            FieldProblem(
                detail=_message(error),
                pointer=_pointer(tuple(error["loc"])),
                field=dotted_path(tuple(error["loc"])) or None,
            )
            for error in exc.errors()
        ]
        raise ApiProblem(422, _("Die Angaben sind ungültig."), errors=errors) from None


def parse_announcement(data: Any) -> Announcement:
    """An announcement as the files give it: validated by the loader, so the field paths match
    the CLI's; then what only the API refuses."""
    announcement = validate_announcement(data)
    problems = [*_local_image(announcement), *_outside_utc(announcement)]
    if problems:
        raise ApiProblem(422, _("Die Ankündigung ist ungültig."), errors=problems)
    return announcement


async def adopt_image(call: Call, announcement: Announcement) -> Announcement:
    """The image into the media store and named by our own ``/medien/`` address: an https
    address is fetched now, once (never at send time); 422 naming ``image.src`` if it cannot be."""
    try:
        return await media.adopt_image(
            call.context.engine,
            announcement,
            public_url=call.context.settings.email.public_url,
            policy=remote_policy(call.request),
            user=call.caller,
        )
    except media.ImageRefused as exc:
        where = FieldProblem(detail=exc.message, pointer="/image/src", field="image.src")
        raise ApiProblem(
            422, _("Das Bild (image.src) lässt sich nicht übernehmen."), errors=[where]
        ) from None


def _local_image(announcement: Announcement) -> list[FieldProblem]:
    """A file path would be read from the server's disk; only an https address is fetched."""
    if announcement.image is None or announcement.image.is_remote:
        return []
    detail = _("Über die API nur als https-Adresse; Dateipfade sind nicht erlaubt")
    return [FieldProblem(detail=detail, pointer="/image/src", field="image.src")]


def _outside_utc(announcement: Announcement) -> list[FieldProblem]:
    detail = _("dieser Zeitpunkt liegt außerhalb des darstellbaren Bereichs")
    return [
        FieldProblem(detail=detail, pointer=_pointer(path), field=dotted_path(path))
        for path, moment in _datetimes(announcement, ())
        if not _fits_utc(moment)
    ]


def _datetimes(
    value: Any, path: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], datetime]]:
    if isinstance(value, datetime):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _datetimes(getattr(value, name), (*path, name))
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            yield from _datetimes(item, (*path, index))


def _fits_utc(moment: datetime) -> bool:
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return False
    return True


def utc(moment: datetime, field: str) -> datetime:
    if not _fits_utc(moment):
        detail = _("dieser Zeitpunkt liegt außerhalb des darstellbaren Bereichs")
        raise ApiProblem(
            422, detail, errors=[FieldProblem(detail=detail, pointer=f"/{field}", field=field)]
        )
    return moment.astimezone(UTC)


def if_match(request: web.Request, current: int, *, required: bool) -> int:
    """The version the caller's change is based on: ``If-Match: "<version>"`` (or ``*``).

    Missing: 428 when ``required``, else the current version. A value that is not the current
    version is a failed precondition (412), as RFC 9110 asks."""
    header = request.headers.get("If-Match")
    if header is None:
        if required:
            raise ApiProblem(
                428,
                _('Senden Sie die Fassung, auf der die Änderung beruht: If-Match: "<version>".'),
            )
        return current
    if header.strip() == "*":
        return current
    versions = [m.group(1) for tag in header.split(",") if (m := _ETAG.match(tag.strip()))]
    if str(current) not in versions:
        raise ApiProblem(
            412,
            _(
                "Die Ankündigung wurde inzwischen geändert (aktuelle Fassung {version}). Laden "
                "Sie sie neu und übertragen Sie Ihre Änderungen."
            ).format(version=current),
        )
    return current


def etag(version: int) -> str:
    return f'"{version}"'


def _pointer(path: Sequence[str | int]) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


_INVALID = N_("ungültiger Wert")


def _message(error: ErrorDetails) -> str:
    """The announcement files' messages; times in requests are RFC 3339, not as in YAML."""
    if error["type"].startswith("datetime"):
        return _("kein gültiger Zeitpunkt (RFC 3339 mit Zeitzone, z. B. 2026-05-04T10:30:00+02:00)")
    return error_message(error, fallback=_(_INVALID))
