"""Images of the media store on the web, under their random tokens.

``/medien/{token}`` shows an image to anyone once an announcement that uses it has been released
(mail clients, the archive); before that it answers 404, so an image uploaded for a draft or a
preview stays private. ``/admin/medien/{token}`` shows any image to staff (the session cookie is
scoped to ``/admin``). The editor's preview runs in sandboxed frames that send no cookie, so it
gets the public address with a signature valid for an hour (``staff_view``).
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from bzi_broadcast.content.model import Announcement
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff import media
from bzi_broadcast.staff.remote_images import FetchPolicy
from bzi_broadcast.tokens import TokenError
from bzi_broadcast.web.admin import require
from bzi_broadcast.web.app import context_of

REMOTE_IMAGES = web.AppKey("remote_images", FetchPolicy)  # set by tests; else the default
PREVIEW_PURPOSE = "media-preview"
PREVIEW_TTL = timedelta(hours=1)


def remote_policy(request: web.Request) -> FetchPolicy:
    """How images named by an address are fetched when an announcement is saved."""
    return request.config_dict.get(REMOTE_IMAGES) or FetchPolicy()


async def public_image(request: web.Request) -> web.Response:
    """An image of a released announcement, for everyone; any other token is not found, so an
    image uploaded for a draft or a preview stays private. A token never changes what it shows,
    so caches may keep it."""
    engine, token = context_of(request).engine, request.match_info["token"]
    stored = await media.fetch(engine, token)
    if stored is not None and _signed_for_preview(request, token):
        return _image_response(request, stored, "private, max-age=3600")
    if stored is None or not await media.is_published(engine, token):
        raise _no_image()
    return _image_response(request, stored, "public, max-age=31536000, immutable")


async def staff_image(request: web.Request) -> web.Response:
    """Any image, for staff (the editor's form and preview show unreleased ones)."""
    await require(request)
    stored = await media.fetch(context_of(request).engine, request.match_info["token"])
    if stored is None:
        raise _no_image()
    return _image_response(request, stored, "private, max-age=3600")


def _image_response(request: web.Request, stored: media.StoredImage, cache: str) -> web.Response:
    etag = f'"{stored.sha256}"'
    headers = {
        "Cache-Control": cache,
        "ETag": etag,
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": "inline",
    }
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=stored.data, content_type=stored.content_type, headers=headers)


def _no_image() -> web.HTTPNotFound:
    # Not cached: the image may be published later.
    return web.HTTPNotFound(
        text=_("Dieses Bild gibt es nicht."), headers={"Cache-Control": "no-store"}
    )


def staff_view(request: web.Request, announcement: Announcement) -> Announcement:
    """``announcement`` with its image at an address signed for an hour, for the preview: the
    preview's sandboxed frames send no session cookie, and the plain public address answers 404
    until the announcement is released."""
    context = context_of(request)
    image = announcement.image
    token = media.token_of(context.settings.email.public_url, image.src) if image else None
    if image is None or token is None:
        return announcement
    signed = context.signer.sign(purpose=PREVIEW_PURPOSE, subject=token, ttl=PREVIEW_TTL)
    src = f"{media.media_url(context.settings.email.public_url, token)}?vorschau={signed}"
    return announcement.model_copy(update={"image": image.model_copy(update={"src": src})})


def _signed_for_preview(request: web.Request, token: str) -> bool:
    signed = request.query.get("vorschau")
    if not signed:
        return False
    try:
        payload = context_of(request).signer.verify(signed, purpose=PREVIEW_PURPOSE)
    except TokenError:
        return False
    return payload.subject == token
