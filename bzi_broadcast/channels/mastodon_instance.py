"""What a Mastodon-compatible server allows: its instance document read into limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bzi_broadcast.errors import PermanentError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.render import ThreadLimits


@dataclass(frozen=True, kw_only=True)
class InstanceLimits:
    """What the server allows for statuses and media (missing values: the family's defaults)."""

    thread: ThreadLimits
    description_limit: int
    image_size_limit: int
    max_media_attachments: int = 4
    supported_mime_types: frozenset[str] = frozenset()  # empty: the server did not say
    family: str = "mastodon"  # mastodon, gotosocial, akkoma, pleroma
    version: str = ""

    @classmethod
    def parse(cls, instance: Any) -> InstanceLimits:
        try:
            configuration = instance["configuration"]
            statuses, media = configuration["statuses"], configuration["media_attachments"]
            return cls(
                thread=ThreadLimits(
                    max_characters=int(statuses["max_characters"]),
                    url_length=int(statuses["characters_reserved_per_url"]),
                ),
                description_limit=int(media.get("description_limit", 1500)),
                image_size_limit=int(media["image_size_limit"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(
                _("Mastodon: die Instanz meldet unbrauchbare Grenzen ({problem})").format(
                    problem=exc
                )
            ) from exc
