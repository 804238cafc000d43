"""Uploaded images: PNG, JPEG, GIF or WebP, recognised by their bytes, at most 8 MB.

The type and the dimensions come from the file's own header (its magic number, then where each
format keeps width and height), never from its name or the Content-Type the browser sent: a text
file renamed ``.png`` is refused. Each image is stored once (deduplicated by SHA-256) and served
publicly at ``/medien/{id}``, so mail clients, Mastodon and Telegram can fetch it.

An announcement file's image (``image.src`` relative to the file) joins the store when the file is
queued, exactly like an upload: delivery then finds it at its ``/medien/`` address, whatever the
service's working directory.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.channels.images import image_path
from bzi_broadcast.content.model import Announcement
from bzi_broadcast.errors import BroadcastError, ContentError, Problem
from bzi_broadcast.i18n import N_
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff.accounts import User
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import media

MAX_BYTES = 8 * 1024 * 1024
MAX_SIDE = 10_000  # what the content model accepts for width and height
_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE})
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


class ImageRefused(BroadcastError):
    """Das ist kein Bild im Format PNG, JPEG, GIF oder WebP."""


_DEFAULT_MESSAGES = (
    N_("Das ist kein Bild im Format PNG, JPEG, GIF oder WebP."),
)  # for the catalog


@dataclass(frozen=True, kw_only=True)
class ImageInfo:
    content_type: str
    width: int
    height: int


@dataclass(frozen=True, kw_only=True)
class StoredImage:
    id: int
    sha256: str
    content_type: str
    width: int
    height: int
    data: bytes


def sniff(data: bytes) -> ImageInfo:
    """Type and dimensions from the header; ``ImageRefused`` for anything else."""
    if len(data) > MAX_BYTES:
        raise ImageRefused(
            _("Das Bild ist größer als {limit} MB.").format(limit=MAX_BYTES // (1024 * 1024))
        )
    try:
        info = _read_header(data)
    except (struct.error, IndexError):
        info = None  # a header cut short
    if info is None:
        raise ImageRefused()
    if not (0 < info.width <= MAX_SIDE and 0 < info.height <= MAX_SIDE):
        raise ImageRefused(
            _("Das Bild ist {width} × {height} Pixel groß; erlaubt sind höchstens {max}.").format(
                width=info.width, height=info.height, max=MAX_SIDE
            )
        )
    return info


def _read_header(data: bytes) -> ImageInfo | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return ImageInfo(content_type="image/png", width=width, height=height)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", data[6:10])
        return ImageInfo(content_type="image/gif", width=width, height=height)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    return None


def _jpeg(data: bytes) -> ImageInfo | None:
    """Walk the segments up to the first frame header (SOFn), which holds the dimensions."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame
            return None
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return ImageInfo(content_type="image/jpeg", width=width, height=height)
        position += 2 + length
    return None


def _webp(data: bytes) -> ImageInfo | None:
    """The three WebP kinds keep their size differently (developers.google.com/speed/webp)."""
    chunk, body = data[12:16], data[20:30]
    if chunk == b"VP8 " and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", body[6:10])
        width, height = width & 0x3FFF, height & 0x3FFF
    elif chunk == b"VP8L" and body[0] == 0x2F:
        (bits,) = struct.unpack("<I", body[1:5])
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
    else:
        return None
    return ImageInfo(content_type="image/webp", width=width, height=height)


async def store(engine: AsyncEngine, data: bytes, user: User | None) -> StoredImage:
    """Keep an uploaded image (checked first); the same bytes uploaded again are the same row."""
    info = sniff(data)
    digest = hashlib.sha256(data).hexdigest()
    existing = await _by_sha256(engine, digest)
    if existing is not None:
        return existing
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(media).values(
                    sha256=digest,
                    content_type=info.content_type,
                    data=data,
                    width=info.width,
                    height=info.height,
                    user_id=user.id if user else None,
                    created_at=utcnow(),
                )
            )
    except IntegrityError:
        pass  # uploaded at the same moment by someone else: theirs is ours
    stored = await _by_sha256(engine, digest)
    assert stored is not None
    return stored


async def adopt_file_image(
    engine: AsyncEngine, announcement: Announcement, *, file: Path, public_url: str
) -> Announcement:
    """Store the image that announcement ``file`` names relative to itself and point the
    announcement at its ``/medien/`` address, as the editor does with an upload. Width and height
    come from the image unless the file gives them."""
    image = announcement.image
    if image is None or image.is_remote:
        return announcement
    stored = await store(engine, read_file_image(file, image.src), user=None)
    changes: dict[str, object] = {"src": f"{public_url.rstrip('/')}/medien/{stored.id}"}
    if image.width is None and image.height is None:
        changes |= {"width": stored.width, "height": stored.height}
    return announcement.model_copy(update={"image": image.model_copy(update=changes)})


def read_file_image(file: Path, src: str) -> bytes:
    """The bytes of image ``src``, a path relative to announcement ``file`` that stays inside its
    directory, checked to be an image; ``ContentError`` naming ``image.src`` and the image."""
    directory = file.resolve().parent
    if Path(src).is_absolute():
        message = _(
            "Bild {image}: erwartet wird ein Pfad relativ zur Ankündigungsdatei oder eine "
            "http(s)-Adresse"
        )
        raise _image_problem(file, message.format(image=src))
    path = image_path(directory, src)
    if path is None:
        message = _("Bild {image} liegt außerhalb des Verzeichnisses der Ankündigung ({root})")
        raise _image_problem(file, message.format(image=src, root=directory))
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)  # one byte more than allowed is enough to refuse
    except OSError as exc:
        message = _("Bild {image} nicht lesbar: {reason}")
        raise _image_problem(file, message.format(image=path, reason=exc.strerror)) from exc
    try:
        sniff(data)
    except ImageRefused as exc:
        message = _("Bild {image}: {reason}")
        raise _image_problem(file, message.format(image=path, reason=exc.message)) from exc
    return data


def _image_problem(file: Path, message: str) -> ContentError:
    return ContentError([Problem(path="image.src", message=message)], source=str(file))


async def fetch(engine: AsyncEngine, media_id: int) -> StoredImage | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(media).where(media.c.id == media_id))).one_or_none()
    return _stored(row) if row is not None else None


async def _by_sha256(engine: AsyncEngine, digest: str) -> StoredImage | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(media).where(media.c.sha256 == digest))).one_or_none()
    return _stored(row) if row is not None else None


def _stored(row: object) -> StoredImage:
    mapping = row._mapping  # type: ignore[attr-defined]
    return StoredImage(
        id=mapping["id"],
        sha256=mapping["sha256"],
        content_type=mapping["content_type"],
        width=mapping["width"],
        height=mapping["height"],
        data=bytes(mapping["data"]),
    )
