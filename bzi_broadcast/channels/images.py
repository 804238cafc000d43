"""Where the channels get an announcement's image: our own media store, or a local file.

An image at one of our own ``/medien/`` addresses is read from the media store (``OwnImages``,
implemented by ``staff.media.MediaLibrary``): no channel fetches an image over HTTP, so nobody can
make the service request an address of their choosing at send time.

An image ``src`` that is not a URL names a file relative to the image root (the directory of the
announcement files). An absolute path or ``..`` that leads outside it is refused, so no
announcement can attach an arbitrary file of the server to a newsletter or a post.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bzi_broadcast.errors import PermanentError
from bzi_broadcast.i18n import gettext as _


@dataclass(frozen=True, kw_only=True)
class OwnImage:
    content: bytes
    mime_type: str
    name: str  # a file name for the upload (no extension needed)


class OwnImages(Protocol):
    def owns(self, src: str) -> bool:
        """Whether ``src`` is one of our own media addresses."""

    async def read(self, src: str) -> OwnImage:
        """Its bytes and type; ``PermanentError`` when there is no such image."""


def image_path(root: Path, src: str | Path) -> Path | None:
    """``src`` resolved below ``root`` (links followed); ``None`` when it leads outside."""
    base = root.resolve()
    path = (base / src).resolve()
    return path if path.is_relative_to(base) else None


def read_local_image(root: Path, src: str | Path) -> bytes:
    """The bytes of ``src`` below ``root``; ``PermanentError`` when outside it or unreadable."""
    path = image_path(root, src)
    if path is None:
        raise PermanentError(
            _("Bild {image} liegt außerhalb des Bildverzeichnisses {root}").format(
                image=src, root=root.resolve()
            )
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PermanentError(
            _("Bild {image} nicht lesbar: {reason}").format(image=src, reason=exc.strerror)
        ) from exc
