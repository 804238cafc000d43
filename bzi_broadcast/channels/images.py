"""Local announcement images, read only from inside the configured image directory.

An image ``src`` that is not a URL names a file relative to the image root (the directory of the
announcement files). An absolute path or ``..`` that leads outside it is refused, so no
announcement can attach an arbitrary file of the server to a newsletter or a post.
"""

from __future__ import annotations

from pathlib import Path

from bzi_broadcast.errors import PermanentError
from bzi_broadcast.i18n import gettext as _


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
