"""The Mastodon channel: the announcement as a thread on the council's account (Mastodon.py).

Mastodon.py is synchronous, so every call runs in a small thread pool of its own; the event loop
never blocks. Each part of the thread gets an Idempotency-Key stored before its first attempt and
its remote id stored as soon as it is known, so a retry (after a timeout, a 5xx, a crash)
continues the thread instead of posting it again. Images are uploaded with their description
and polled until processed before the status that uses them is created.
"""

from __future__ import annotations

import asyncio
import mimetypes
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from mastodon import (
    Mastodon,
    MastodonAPIError,
    MastodonNetworkError,
    MastodonNotFoundError,
    MastodonRatelimitError,
    MastodonServerError,
    MastodonUnauthorizedError,
)

from bzi_broadcast.channels.base import Receipt
from bzi_broadcast.channels.images import read_local_image
from bzi_broadcast.channels.mastodon_instance import InstanceLimits
from bzi_broadcast.content.model import Announcement
from bzi_broadcast.delivery.outbox import Claimed
from bzi_broadcast.errors import (
    ChannelAuthError,
    DeliveryError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.render import Renderer
from bzi_broadcast.render.renditions import MastodonPost
from bzi_broadcast.store.announcements import AnnouncementRecord
from bzi_broadcast.store.parts import Parts

T = TypeVar("T")
MEDIA_POLL_SECONDS = 0.5
MEDIA_POLL_LIMIT = 120
IMAGE_TIMEOUT = 30.0
LIMITS_MAX_AGE = 3600.0  # an admin may change the instance's limits; read them again hourly


class Budget:
    """At most ``count`` calls per ``seconds``; when spent, the caller is told when to retry."""

    def __init__(self, count: int, seconds: float) -> None:
        self._count, self._seconds = count, seconds
        self._calls: deque[float] = deque()

    def take(self, what: str) -> None:
        now = time.monotonic()
        while self._calls and self._calls[0] <= now - self._seconds:
            self._calls.popleft()
        if len(self._calls) >= self._count:
            wait = self._calls[0] + self._seconds - now
            raise TransientError(
                _("Mastodon: Budget für {what} erschöpft").format(what=what), retry_after=wait
            )
        self._calls.append(now)


@dataclass(frozen=True, kw_only=True)
class MastodonBudgets:
    requests: tuple[int, float] = (300, 300.0)
    statuses: tuple[int, float] = (300, 3 * 3600.0)
    media: tuple[int, float] = (30, 1800.0)


class MastodonChannel:
    name = "mastodon"
    concurrency = 1  # one thread at a time: its parts are posted in order

    def __init__(
        self,
        client: Mastodon,
        renderer: Renderer,
        parts: Parts,
        *,
        budgets: MastodonBudgets = MastodonBudgets(),
        image_root: Path | None = None,
        threads: int = 4,
    ) -> None:
        self._client = client
        self._renderer = renderer
        self._parts = parts
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mastodon")
        self._requests = Budget(*budgets.requests)
        self._statuses = Budget(*budgets.statuses)
        self._media = Budget(*budgets.media)
        self._image_root = image_root or Path.cwd()
        self._limits: InstanceLimits | None = None
        self._limits_read = 0.0

    def prepare(self, record: AnnouncementRecord) -> Announcement:
        return record.announcement()

    async def send(self, prepared: Announcement, delivery: Claimed) -> Receipt:
        limits = await self.limits()
        try:
            posts = self._renderer.mastodon(prepared, limits.thread).posts
        except ValueError as exc:  # e.g. a hashtag longer than the instance allows in a post
            raise PermanentError(f"Mastodon: {exc}") from exc
        done = await self._parts.of(delivery.id)
        parent: str | None = None
        first_url: str | None = None
        for number, post in enumerate(posts):
            part = done.get(number)
            if part is None:
                key = uuid.uuid4().hex
                await self._parts.begin(delivery.id, number, key)
            elif part.remote_id is not None:  # posted on an earlier attempt: continue after it
                parent, first_url = part.remote_id, first_url or part.url
                continue
            else:
                key = part.idempotency_key
            status = await self._post(post, parent, key, limits)
            parent = str(status["id"])
            await self._parts.done(delivery.id, number, parent, status.get("url"))
            first_url = first_url or status.get("url")
        return Receipt(remote_id=first_url)

    async def limits(self) -> InstanceLimits:
        """The instance's limits from ``/api/v2/instance``, read at most once an hour."""
        if self._limits is None or time.monotonic() - self._limits_read > LIMITS_MAX_AGE:
            self._limits = InstanceLimits.parse(await self._call(self._client.instance_v2))
            self._limits_read = time.monotonic()
        return self._limits

    async def _post(
        self, post: MastodonPost, parent: str | None, key: str, limits: InstanceLimits
    ) -> Any:
        media_ids = [await self._upload(src, post.media_description, limits) for src in post.media]
        self._statuses.take(_("Beiträge"))
        return await self._call(
            partial(
                self._client.status_post,
                post.text,
                in_reply_to_id=parent,
                media_ids=media_ids or None,
                visibility=str(post.visibility),
                spoiler_text=post.spoiler_text or None,
                language=post.language,
                idempotency_key=key,
            )
        )

    async def _upload(self, src: str, description: str | None, limits: InstanceLimits) -> str:
        if description and len(description) > limits.description_limit:
            raise PermanentError(
                _("Mastodon: der Alternativtext von {image} ist länger als {limit} Zeichen").format(
                    image=src, limit=limits.description_limit
                )
            )
        loop = asyncio.get_running_loop()
        content, mime_type = await loop.run_in_executor(
            self._pool, self._read_image, src, limits.image_size_limit
        )
        self._media.take(_("Medien"))
        media = await self._call(
            partial(
                self._client.media_post,
                content,
                mime_type=mime_type,
                description=description,
                file_name=PurePosixPath(src).name,
            )
        )
        for _poll in range(MEDIA_POLL_LIMIT):  # 202 → 206 … → 200 (processed)
            if media.get("url"):
                return str(media["id"])
            await asyncio.sleep(MEDIA_POLL_SECONDS)
            media = await self._call(partial(self._client.media, media["id"]))
        raise TransientError(_("Mastodon: Bild wird noch verarbeitet"))

    def _read_image(self, src: str, limit: int) -> tuple[bytes, str]:
        """The image's bytes and type, from its URL or the local file (in the thread pool)."""
        unreadable = _("Mastodon: Bild {image} nicht lesbar ({reason})")
        if src.startswith(("https://", "http://")):
            request = urllib.request.Request(src, headers={"User-Agent": "bzi-broadcast"})  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=IMAGE_TIMEOUT) as answer:  # noqa: S310
                    content = answer.read(limit + 1)
                    mime_type = answer.headers.get_content_type()
            except (OSError, ValueError) as exc:  # the web server may be back later
                raise TransientError(unreadable.format(image=src, reason=exc)) from exc
        else:
            content = read_local_image(self._image_root, src)
            mime_type = mimetypes.guess_type(src)[0] or "application/octet-stream"
        if len(content) > limit:
            raise PermanentError(
                _("Mastodon: Bild {image} ist größer als {limit} Bytes").format(
                    image=src, limit=limit
                )
            )
        return content, mime_type

    async def _call(self, work: Callable[[], T]) -> T:
        self._requests.take(_("Anfragen"))
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, work)
        except Exception as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: Exception) -> DeliveryError:
        """Mastodon.py's errors in our terms (subclasses before their parents)."""
        if isinstance(exc, MastodonUnauthorizedError):
            return ChannelAuthError(f"Mastodon: {_message(exc)}")
        if isinstance(exc, MastodonRatelimitError):
            reset = getattr(self._client, "ratelimit_reset", None) or time.time() + 60
            return TransientError(
                _("Mastodon: Ratenlimit"), retry_after=max(0.0, reset - time.time())
            )
        if isinstance(exc, MastodonServerError):
            return TransientError(f"Mastodon: {_message(exc)}")
        if isinstance(exc, MastodonNotFoundError | MastodonAPIError):
            return PermanentError(f"Mastodon: {_message(exc)}")
        if isinstance(exc, MastodonNetworkError):
            return UnknownOutcomeError(f"Mastodon: {exc}")
        if isinstance(exc, DeliveryError):
            return exc
        return UnknownOutcomeError(f"Mastodon: {exc}")

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _message(exc: Exception) -> str:
    args = exc.args
    return str(args[3]) if len(args) > 3 and args[3] else str(exc)
