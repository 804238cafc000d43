"""Uploaded images: PNG, JPEG, GIF or WebP, recognised by their bytes, at most 8 MB.

The type and the dimensions come from the file's own header (its magic number, then where each
format keeps width and height), never from its name or the Content-Type the browser sent: a text
file renamed ``.png`` is refused. Each image is stored once (deduplicated by SHA-256) under a
random token (128 bits) and addressed as ``/medien/{token}``: nobody can list the store by
counting. Until an announcement that uses it has been released, only staff see an image (at
``/admin/medien/{token}``); then it is public, for mail clients and the archive.

Every door that saves an announcement brings its image here first (``adopt_image``): an upload in
the editor, an https address (fetched once, by ``remote_images``), a file beside an announcement
file. So an announcement only ever names its image by our own ``/medien/`` address, and at send
time the channels read the bytes from this store instead of fetching anything.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Text, cast, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.channels.images import OwnImage, image_path
from bzi_broadcast.content.model import Announcement
from bzi_broadcast.errors import BroadcastError, ContentError, PermanentError, Problem
from bzi_broadcast.i18n import N_
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff import remote_images
from bzi_broadcast.staff.accounts import User
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import announcements, media

MAX_BYTES = 8 * 1024 * 1024
MAX_SIDE = 10_000  # what the content model accepts for width and height
_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE})
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})
TOKEN = re.compile(r"[A-Za-z0-9_-]{22}")  # secrets.token_urlsafe(16): 128 bits


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
    token: str
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
                    token=secrets.token_urlsafe(16),
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


def media_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/medien/{token}"


def token_of(public_url: str, src: str) -> str | None:
    """The token of ``src`` when it is one of our own ``/medien/`` addresses."""
    prefix = f"{public_url.rstrip('/')}/medien/"
    token = src[len(prefix) :] if src.startswith(prefix) else ""
    return token if TOKEN.fullmatch(token) else None


async def adopt_image(
    engine: AsyncEngine,
    announcement: Announcement,
    *,
    public_url: str,
    policy: remote_images.FetchPolicy,
    file: Path | None = None,
    user: User | None = None,
) -> Announcement:
    """The announcement with its image in the store and named by its ``/medien/`` address.

    Our own address stays (if the image exists); an https address is fetched once, now; a path
    is read relative to announcement ``file`` (no file: refused). Width and height come from the
    image unless given. ``ImageRefused`` (or ``ContentError`` for a file) says why not."""
    image = announcement.image
    if image is None:
        return announcement
    token = token_of(public_url, image.src)
    if token is not None:
        if await fetch(engine, token) is None:
            raise ImageRefused(
                _("Bild {image}: Dieses Bild gibt es nicht.").format(image=image.src)
            )
        return announcement
    if image.is_remote:
        try:
            data = await remote_images.fetch_image(image.src, policy)
        except remote_images.RemoteImageRefused as exc:
            raise ImageRefused(exc.message) from exc
        stored = await store(engine, data, user)
    elif file is not None:
        stored = await store(engine, read_file_image(file, image.src), user)
    else:
        raise ImageRefused(
            _("Bild {image}: erwartet wird eine https-Adresse oder ein hochgeladenes Bild").format(
                image=image.src
            )
        )
    changes: dict[str, object] = {"src": media_url(public_url, stored.token)}
    if image.width is None and image.height is None:
        changes |= {"width": stored.width, "height": stored.height}
    return announcement.model_copy(update={"image": image.model_copy(update=changes)})


async def adopt_file_image(
    engine: AsyncEngine,
    announcement: Announcement,
    *,
    file: Path,
    public_url: str,
    policy: remote_images.FetchPolicy | None = None,
) -> Announcement:
    """``adopt_image`` for announcement ``file``: a refusal is a ``ContentError`` naming
    ``image.src``, as the file's other problems are."""
    try:
        return await adopt_image(
            engine,
            announcement,
            public_url=public_url,
            policy=policy or remote_images.FetchPolicy(),
            file=file,
        )
    except ImageRefused as exc:
        raise _image_problem(file, exc.message) from exc


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


async def fetch(engine: AsyncEngine, token: str) -> StoredImage | None:
    if not TOKEN.fullmatch(token):
        return None
    async with engine.connect() as conn:
        row = (await conn.execute(select(media).where(media.c.token == token))).one_or_none()
    return _stored(row) if row is not None else None


async def is_published(engine: AsyncEngine, token: str) -> bool:
    """Whether anyone may see image ``token``: a released announcement uses it. Found once, it
    is marked (``published_at``), so later requests read one row."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(media.c.published_at).where(media.c.token == token))
        ).one_or_none()
    if row is None:
        return False
    if row.published_at is not None:
        return True
    if not await _used_by_released(engine, token):
        return False
    async with engine.begin() as conn:
        await conn.execute(
            update(media)
            .where(media.c.token == token, media.c.published_at.is_(None))
            .values(published_at=utcnow())
        )
    return True


async def _used_by_released(engine: AsyncEngine, token: str) -> bool:
    """A released announcement's image is this one (the text search only narrows the rows)."""
    query = select(announcements.c.content).where(
        announcements.c.released_at.is_not(None),
        cast(announcements.c.content, Text).contains(token, autoescape=True),
    )
    async with engine.connect() as conn:
        for content in (await conn.execute(query)).scalars():
            src = str(((content or {}).get("image") or {}).get("src", ""))
            if src.endswith(f"/medien/{token}"):
                return True
    return False


class MediaLibrary:
    """The store as the channels see it (``channels.images.OwnImages``): images named by our own
    ``/medien/`` address, read from the database instead of over HTTP."""

    def __init__(self, engine: AsyncEngine, public_url: str) -> None:
        self._engine = engine
        self._public_url = public_url

    def owns(self, src: str) -> bool:
        return token_of(self._public_url, src) is not None

    async def read(self, src: str) -> OwnImage:
        token = token_of(self._public_url, src)
        stored = await fetch(self._engine, token) if token else None
        if stored is None:
            raise PermanentError(_("Bild {image} gibt es nicht (mehr).").format(image=src))
        name = f"{stored.token}.{stored.content_type.removeprefix('image/')}"
        return OwnImage(content=stored.data, mime_type=stored.content_type, name=name)


async def _by_sha256(engine: AsyncEngine, digest: str) -> StoredImage | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(media).where(media.c.sha256 == digest))).one_or_none()
    return _stored(row) if row is not None else None


def _stored(row: object) -> StoredImage:
    mapping = row._mapping  # type: ignore[attr-defined]
    return StoredImage(
        id=mapping["id"],
        token=mapping["token"],
        sha256=mapping["sha256"],
        content_type=mapping["content_type"],
        width=mapping["width"],
        height=mapping["height"],
        data=bytes(mapping["data"]),
    )
