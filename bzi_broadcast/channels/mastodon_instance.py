"""What a Mastodon-compatible server allows: its instance document read into limits.

Servers of several families speak the Mastodon API, and their instance documents differ: Mastodon
has ``/api/v2/instance`` from 4.0 (older servers and older Pleroma only ``/api/v1/instance``);
``configuration.media_attachments.description_limit`` exists only from Mastodon 4.4; GoToSocial
never sends it; Pleroma and Akkoma put their limits at the top level of the v1 document
(``max_toot_chars``, ``upload_limit``, ``description_limit``). Every limit the document leaves out
(or sends as null) gets the documented default of its family and version; a limit that is there
but unusable (negative, not a number) fails the delivery with a message that names it.

Defaults, by family (from each project's source or documentation):
- Mastodon: 500 characters, 23 per URL, 4 attachments, alt text 1,500
  (``MediaAttachment::MAX_DESCRIPTION_LENGTH``, already in 3.x; the document says so from 4.4);
  images 10 MB (``IMAGE_LIMIT``) before 4.2, 16 MB from 4.2.
- GoToSocial (``internal/config/defaults.go``, ``internal/typeutils/internaltofrontend.go``):
  5,000 characters, 25 per URL, 6 attachments, alt text 1,500; images 10 MiB before 0.17,
  40 MiB (``media-local-max-size``) from 0.17.
- Pleroma and Akkoma (``config/config.exs`` ``:instance``): 5,000 characters, 1,000 attachments,
  alt text 5,000, uploads 16,000,000 bytes. They count a URL at its full length (their v2
  document says ``characters_reserved_per_url: 0``); limits here can only reserve a fixed number
  per URL, so 23 is used, as for Mastodon.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from bzi_broadcast.errors import PermanentError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.render import ThreadLimits

if TYPE_CHECKING:
    import aiohttp
    from mastodon import Mastodon

MB, MIB = 1024 * 1024, 1024 * 1024  # Mastodon's "megabytes" are Rails' 1024², like MiB
Version = tuple[int, int, int]


class Family(StrEnum):
    MASTODON = "mastodon"
    GOTOSOCIAL = "gotosocial"
    AKKOMA = "akkoma"
    PLEROMA = "pleroma"


@dataclass(frozen=True, kw_only=True)
class Defaults:
    max_characters: int
    url_length: int
    description_limit: int
    image_size_limit: int
    max_media_attachments: int


def family_defaults(family: Family, version: Version) -> Defaults:
    """The limits a server of ``family`` at ``version`` has when its admin changed nothing."""
    if family is Family.GOTOSOCIAL:
        image = 40 * MIB if version >= (0, 17, 0) else 10 * MIB
        return Defaults(
            max_characters=5000,
            url_length=25,
            description_limit=1500,
            image_size_limit=image,
            max_media_attachments=6,
        )
    if family in (Family.AKKOMA, Family.PLEROMA):
        return Defaults(
            max_characters=5000,
            url_length=23,
            description_limit=5000,
            image_size_limit=16_000_000,
            max_media_attachments=1000,
        )
    return Defaults(
        max_characters=500,
        url_length=23,
        description_limit=1500,
        image_size_limit=16 * MB if version >= (4, 2, 0) else 10 * MB,
        max_media_attachments=4,
    )


_COMPATIBLE = re.compile(r"\(compatible;\s*(Akkoma|Pleroma)\s+([^)\s]+)", re.IGNORECASE)
_NUMBERS = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def detect(document: Mapping[str, Any]) -> tuple[Family, str]:
    """The server's family and its own version, from the instance document's ``version``."""
    version = str(document.get("version") or "")
    compatible = _COMPATIBLE.search(version)  # Pleroma/Akkoma: "2.7.2 (compatible; Akkoma 3.13.2)"
    if compatible:
        return Family(compatible.group(1).lower()), compatible.group(2)
    head, _plus, tail = version.partition("+")
    gotosocial = "gotosocial" in str(document.get("source_url") or "").lower()
    if head.startswith("0.") or gotosocial:  # GoToSocial: "0.19.0+git-abc1234"
        return Family.GOTOSOCIAL, head
    if _parse_version(tail)[0] == 0 and _NUMBERS.match(tail):  # injected: "3.5.3+0.17.0-git-…"
        return Family.GOTOSOCIAL, tail
    return Family.MASTODON, head  # "4.3.0", "4.2.1+glitch", "4.0.0+hometown-1.1.0"


def _parse_version(text: str) -> Version:
    found = _NUMBERS.match(text.strip())
    if not found:
        return (0, 0, 0)
    major, minor, patch = found.groups()
    return int(major), int(minor), int(patch or 0)


@dataclass(frozen=True, kw_only=True)
class InstanceLimits:
    """What the server allows for statuses and media (missing values: the family's defaults)."""

    thread: ThreadLimits
    description_limit: int
    image_size_limit: int
    max_media_attachments: int = 4
    supported_mime_types: frozenset[str] = frozenset()  # empty: the server did not say
    family: str = Family.MASTODON
    version: str = ""

    @classmethod
    def parse(cls, instance: Any) -> InstanceLimits:
        """The limits from a v2 or v1 instance document of any supported family."""
        try:
            return _parse(instance)
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(
                _("Mastodon: die Instanz meldet unbrauchbare Grenzen ({problem})").format(
                    problem=exc
                )
            ) from exc


def _parse(document: Any) -> InstanceLimits:
    if not isinstance(document, Mapping):
        raise TypeError(f"instance document is {type(document).__name__}, not an object")
    family, version = detect(document)
    fallback = family_defaults(family, _parse_version(version))
    value = _Reader(document)
    url_length = value.number("configuration.statuses.characters_reserved_per_url")
    return InstanceLimits(
        thread=ThreadLimits(
            max_characters=value.first(
                fallback.max_characters, "configuration.statuses.max_characters", "max_toot_chars"
            ),
            url_length=url_length or fallback.url_length,  # 0: URLs count in full (Pleroma)
        ),
        description_limit=value.first(
            fallback.description_limit,
            "configuration.media_attachments.description_limit",
            "description_limit",
            "pleroma.metadata.description_limit",
        ),
        image_size_limit=value.first(
            fallback.image_size_limit,
            "configuration.media_attachments.image_size_limit",
            "upload_limit",
        ),
        max_media_attachments=value.first(
            fallback.max_media_attachments,
            "configuration.statuses.max_media_attachments",
            "max_media_attachments",
        ),
        supported_mime_types=value.mime_types(
            "configuration.media_attachments.supported_mime_types"
        ),
        family=family,
        version=version,
    )


class _Reader:
    """Dotted paths into the document; missing or null is ``None``, anything else must fit."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._document = document

    def get(self, path: str) -> Any:
        node: Any = self._document
        for key in path.split("."):
            if not isinstance(node, Mapping) or node.get(key) is None:
                return None
            node = node[key]
        return node

    def number(self, path: str) -> int | None:
        raw = self.get(path)
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError(f"{path}: {raw!r}")
        try:
            number = float(raw)
        except ValueError:
            raise ValueError(f"{path}: {raw!r}") from None
        if number < 0 or number != int(number):
            raise ValueError(f"{path}: {raw!r}")
        return int(number)

    def first(self, default: int, *paths: str) -> int:
        for path in paths:
            found = self.number(path)
            if found is not None:
                return found
        return default

    def mime_types(self, path: str) -> frozenset[str]:
        """The listed types; empty (any) when unlisted or when the list has
        application/octet-stream, Pleroma's way of saying that it takes every file."""
        raw = self.get(path)
        if not isinstance(raw, list) or "application/octet-stream" in raw:
            return frozenset()
        return frozenset(str(item) for item in raw)


def read_instance(client: Mastodon) -> InstanceLimits:
    """The limits from ``/api/v2/instance``, or ``/api/v1/instance`` where there is no v2
    (Mastodon before 4.0, older Pleroma). Synchronous: run it in the channel's thread pool."""
    from mastodon import MastodonNotFoundError, MastodonVersionError

    try:
        document = client.instance_v2()
    except (MastodonNotFoundError, MastodonVersionError):  # 404, or an override below 4.0
        document = client.instance_v1()
    return InstanceLimits.parse(document)


async def fetch_instance(
    http: aiohttp.ClientSession, base_url: str, headers: Mapping[str, str] | None = None
) -> InstanceLimits:
    """Like :func:`read_instance`, over aiohttp (for the editor's preview)."""
    base = base_url.rstrip("/")
    async with http.get(f"{base}/api/v2/instance", headers=headers) as answer:
        if answer.status != 404:
            answer.raise_for_status()
            return InstanceLimits.parse(await answer.json())
    async with http.get(f"{base}/api/v1/instance", headers=headers) as answer:
        answer.raise_for_status()
        return InstanceLimits.parse(await answer.json())
