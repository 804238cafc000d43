"""Local announcement images, read only from inside the configured image directory.

An image ``src`` that is not a URL names a file relative to the image root (the directory of the
announcement files). An absolute path or ``..`` that leads outside it is refused, so no
announcement can attach an arbitrary file of the server to a newsletter or a post.
"""

from __future__ import annotations

from pathlib import Path

from bzi_broadcast.errors import PermanentError
from bzi_broadcast.i18n import gettext as _


def read_local_image(root: Path, src: str | Path) -> bytes:
    """The bytes of ``src`` below ``root``; ``PermanentError`` when outside it or unreadable."""
    base = root.resolve()
    path = (base / src).resolve()
    if not path.is_relative_to(base):
        raise PermanentError(
            _("Bild {image} liegt außerhalb des Bildverzeichnisses {root}").format(
                image=src, root=base
            )
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PermanentError(
            _("Bild {image} nicht lesbar: {reason}").format(image=src, reason=exc.strerror)
        ) from exc
