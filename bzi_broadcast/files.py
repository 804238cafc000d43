"""Reading a file someone named on the command line: a regular file, and never more than a cap.

``Path.read_bytes`` reads to the end, so ``/dev/zero`` (or a link to it called ``x.yaml``) fills the
memory before any size check can run, and a named pipe without a writer blocks forever. Here the
file is opened without blocking, must be a regular file, and is read up to one byte past the cap,
so the caller can tell "too large" from "exactly at the cap" without reading further.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import gettext as _


class FileRefused(BroadcastError):
    """Die Datei kann nicht gelesen werden."""


def read_capped(path: Path, cap: int) -> bytes:
    """At most ``cap + 1`` bytes of the regular file at ``path``; ``FileRefused`` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        reason = _("Datei kann nicht gelesen werden: {reason}").format(reason=exc.strerror or exc)
        raise FileRefused(reason) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileRefused(
            _("keine gewöhnliche Datei (sondern ein Ordner, ein Gerät oder eine Pipe)")
        )
    with os.fdopen(fd, "rb") as file:
        try:
            return file.read(cap + 1)
        except OSError as exc:
            reason = _("Datei kann nicht gelesen werden: {reason}").format(
                reason=exc.strerror or exc
            )
            raise FileRefused(reason) from None
