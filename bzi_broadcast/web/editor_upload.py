"""Reading the editor's form, which may carry an image of up to 8 MB.

The app accepts at most 256 KB per request body (``client_max_size``); raising that for the whole
app would let any form or API call send megabytes. The editor's routes instead read the
multipart stream themselves, chunk by chunk, with hard caps of their own: 1 MB for all text fields
together, 8 MB for the image. An image over its cap is read on and thrown away (not kept in
memory) so the form around it survives with a message beside the field; a body over 40 MB in all
is cut off with 413.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDict

from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff.media import MAX_BYTES
from bzi_broadcast.web.forms import malformed

IMAGE_FIELD = "image-file"
MAX_TEXT = 1024 * 1024
MAX_BODY = 40 * 1024 * 1024
CHUNK = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class Submission:
    fields: MultiDict[str]
    image: bytes | None = None  # the chosen file, when one was chosen and within the cap
    image_too_large: bool = False


async def read_form(request: web.Request) -> Submission:
    """The form's fields and image; 400 for a body no browser sends (see ``forms``)."""
    if request.content_type != "multipart/form-data":
        posted = await request.post()  # a small form: the app's own limit applies
        return Submission(fields=MultiDict((k, v) for k, v in posted.items() if isinstance(v, str)))
    if (request.content_length or 0) > MAX_BODY:
        raise _too_large()
    try:
        return await _read_multipart(request)
    except (ValueError, LookupError, HttpProcessingError):  # no boundary, a bad part header …
        raise malformed() from None


async def _read_multipart(request: web.Request) -> Submission:
    reader = await request.multipart()
    fields: MultiDict[str] = MultiDict()
    image: bytes | None = None
    too_large = False
    text_left, body_left = MAX_TEXT, MAX_BODY
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise malformed()  # nested multipart, or a part no field of ours can have sent
        codecs.lookup(part.get_charset("utf-8"))  # LookupError for a made-up one, as post() does
        if part.name == IMAGE_FIELD and part.filename is not None:
            data, size = await _read(part, MAX_BYTES, body_left)
            body_left -= size
            too_large = too_large or (data is None)
            image = data or image
            continue
        data, size = await _read(part, text_left, body_left)
        if data is None:
            raise _too_large()
        text_left, body_left = text_left - size, body_left - size
        fields.add(part.name, data.decode("utf-8", errors="replace"))
    return Submission(fields=fields, image=image, image_too_large=too_large)


async def _read(part: BodyPartReader, cap: int, body_left: int) -> tuple[bytes | None, int]:
    """The part's bytes (None when over ``cap``, the rest drained unkept) and its size."""
    kept = bytearray()
    size = 0
    while chunk := await part.read_chunk(CHUNK):
        size += len(chunk)
        if size > body_left:
            raise _too_large()
        if size <= cap:
            kept.extend(chunk)
    return (bytes(kept) if size <= cap else None), size


def _too_large() -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(
        max_size=MAX_BODY,
        actual_size=MAX_BODY + 1,
        text=_("Die Anfrage ist zu groß. Bilder dürfen höchstens 8 MB groß sein."),
    )
