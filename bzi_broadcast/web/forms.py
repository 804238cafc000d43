"""A form body no browser would send answers 400, whichever handler reads it.

Handlers read their forms with ``await request.post()`` (the editor with its streaming
``read_form``, which guards itself). aiohttp raises ``ValueError``, ``LookupError`` or its own
``BadHttpMessage`` for bodies it cannot parse: a multipart body with an empty or no boundary,
without its opening boundary, with a part that has no name, a malformed part header, or in a
character set that does not exist. Left alone, the error
middleware turns those into a 500 and a logged traceback. This middleware sits innermost and turns
exactly those into 400: an error is the body's when aiohttp's form reader is on its traceback, so
an error in a handler's own code still counts as ours (a 500).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable

from aiohttp import web

from bzi_broadcast.i18n import gettext as _

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_FORM_READER = web.BaseRequest.post.__code__


def malformed() -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=_("Das Formular ist unvollständig oder fehlerhaft angekommen."))


@web.middleware
async def malformed_forms(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise  # 413 for a body over the limit, and every answer a handler chose
    except Exception as exc:
        if not _raised_reading_form(exc):
            raise
        log.info(
            "malformed form body method=%s path=%s error=%s", request.method, request.path, exc
        )
        raise malformed() from None


def _raised_reading_form(error: BaseException) -> bool:
    return any(
        frame.f_code is _FORM_READER for frame, _line in traceback.walk_tb(error.__traceback__)
    )
