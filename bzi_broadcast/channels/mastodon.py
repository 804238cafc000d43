"""The Mastodon channel: the announcement as a thread on the council's account (Mastodon.py).

Mastodon.py is synchronous, so every call runs in a small thread pool of its own; the event loop
never blocks. A thread goes out whole or not at all: before its first part (and on every retry
before the rest) each part is checked against the instance's limits, and a part that would be
refused fails the delivery before anything is public. Each part gets an Idempotency-Key stored
before its first attempt and its remote id stored as soon as it is known, so a retry (after a
timeout, a 5xx, a crash) continues the thread instead of posting it again. Mastodon forgets a key
after an hour, so a part first tried longer ago is looked up among the account's recent statuses
and adopted if it is there. Images are read once for the check, uploaded with their description
and polled until processed before the status that uses them is created. An image comes from our
own media store (``OwnImages``) or a local file, never over HTTP: an announcement names a remote
image only by our own ``/medien/`` address, the original was fetched (and checked) when it was
saved; any other address is refused here rather than fetched.
"""

from __future__ import annotations

import asyncio
import html
import mimetypes
import re
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
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
from bzi_broadcast.channels.images import OwnImages, read_local_image
from bzi_broadcast.channels.mastodon_instance import InstanceLimits, read_instance
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
from bzi_broadcast.render.counting import MENTION_RE, grapheme_count, mastodon_length
from bzi_broadcast.render.renditions import MastodonPost
from bzi_broadcast.store.announcements import AnnouncementRecord
from bzi_broadcast.store.parts import Part, Parts

T = TypeVar("T")
MEDIA_POLL_SECONDS = 0.5
MEDIA_POLL_LIMIT = 120
LIMITS_MAX_AGE = 3600.0  # an admin may change the instance's limits; read them again hourly
KEY_LIFETIME = timedelta(minutes=55)  # Mastodon keeps an Idempotency-Key 3,600 s; a margin
RECENT_STATUSES = 40  # the most Mastodon gives in one page of an account's statuses
_BREAK = re.compile(r"<br\s*/?>|</p>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")


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


@dataclass(frozen=True, kw_only=True)
class Image:
    """An image read for the pre-flight check, uploaded later from these bytes."""

    content: bytes
    mime_type: str


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
        content_warning_share: float = 0.5,
        media: OwnImages | None = None,
    ) -> None:
        self._client = client
        self._own_images = media
        self._renderer = renderer
        self._parts = parts
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mastodon")
        self._requests = Budget(*budgets.requests)
        self._statuses = Budget(*budgets.statuses)
        self._media = Budget(*budgets.media)
        self._image_root = image_root or Path.cwd()
        self._content_warning_share = content_warning_share
        self._limits: InstanceLimits | None = None
        self._limits_read = 0.0
        self._account_id: str | None = None

    def prepare(self, record: AnnouncementRecord) -> Announcement:
        return record.announcement()

    async def send(self, prepared: Announcement, delivery: Claimed) -> Receipt:
        limits = await self.limits()
        try:
            thread = replace(limits.thread, spoiler_share=self._content_warning_share)
            rendition = await self._renderer.off_loop(self._renderer.mastodon, prepared, thread)
        except ValueError as exc:  # e.g. a hashtag longer than the instance allows in a post
            raise PermanentError(f"Mastodon: {exc}") from exc
        posts = rendition.posts
        known = await self._parts.of(delivery.id)
        todo = [n for n in range(len(posts)) if n not in known or not known[n].posted]
        images = await self._preflight(posts, todo, limits)
        parts = await self._parts.plan(delivery.id, len(posts))
        parent: str | None = None
        first_url: str | None = None
        for number, post in enumerate(posts):
            part = parts[number]
            if not part.posted:  # posted on an earlier attempt: continue after it
                part = await self._publish(delivery.id, part, post, parent, images)
            parent, first_url = part.remote_id, first_url or part.url
        return Receipt(remote_id=first_url)

    async def limits(self) -> InstanceLimits:
        """The instance's limits (``/api/v2/instance``, else v1), read at most once an hour."""
        if self._limits is None or time.monotonic() - self._limits_read > LIMITS_MAX_AGE:
            self._limits = await self._call(partial(read_instance, self._client))
            self._limits_read = time.monotonic()
        return self._limits

    async def delete_status(self, remote_id: str) -> None:
        """Delete one posted status (staff removing an incomplete thread); gone already is fine."""
        try:
            await self._call(partial(self._client.status_delete, remote_id))
        except PermanentError as exc:
            if not isinstance(exc.__cause__, MastodonNotFoundError):
                raise

    # --- before anything is posted --------------------------------------------------------------

    async def _preflight(
        self, posts: Sequence[MastodonPost], todo: list[int], limits: InstanceLimits
    ) -> dict[str, Image]:
        """Every part still to post, checked against the instance's limits; the images, read."""
        for number in todo:
            self._refuse(number, len(posts), self._problem(posts[number], limits))
        images: dict[str, Image] = {}
        for number in todo:
            for src in posts[number].media:
                if src not in images:
                    images[src] = await self._read_image(src)
                self._refuse(number, len(posts), _image_problem(src, images[src], limits))
        return images

    def _problem(self, post: MastodonPost, limits: InstanceLimits) -> str | None:
        """Why the instance would refuse this part, in words; None if it would not."""
        most = limits.thread.max_characters
        warning = grapheme_count(post.spoiler_text)
        warning_limit = int(most * self._content_warning_share)
        length = mastodon_length(
            post.text, url_length=limits.thread.url_length, spoiler_text=post.spoiler_text
        )
        description = len(post.media_description or "")
        if warning > warning_limit:
            return _("Inhaltswarnung mit {length} Zeichen, höchstens {limit} erlaubt").format(
                length=warning, limit=warning_limit
            )
        if length > most:
            return _("{length} von {limit} Zeichen").format(length=length, limit=most)
        if len(post.media) > limits.max_media_attachments:
            return _("{count} Bilder, die Instanz erlaubt {limit}").format(
                count=len(post.media), limit=limits.max_media_attachments
            )
        if post.media and description > limits.description_limit:
            return _("Alternativtext mit {length} von {limit} Zeichen").format(
                length=description, limit=limits.description_limit
            )
        return None

    @staticmethod
    def _refuse(number: int, total: int, problem: str | None) -> None:
        if problem:
            raise PermanentError(
                _("Mastodon: Teil {n} von {total}: {problem}").format(
                    n=number + 1, total=total, problem=problem
                )
            )

    # --- posting --------------------------------------------------------------------------------

    async def _publish(
        self,
        delivery_id: int,
        part: Part,
        post: MastodonPost,
        parent: str | None,
        images: dict[str, Image],
    ) -> Part:
        """Post one part (or adopt it, if an attempt over an hour ago went through); stored."""
        now = datetime.now(UTC)
        found = None
        if part.first_attempt_at is None:
            await self._parts.attempt(delivery_id, part.part, now)
        elif now - part.first_attempt_at > KEY_LIFETIME:  # the server has forgotten the key
            found = await self._find_posted(post, parent)
        status = found or await self._post(post, parent, part.idempotency_key, images)
        remote_id, url = str(status["id"]), status.get("url")
        await self._parts.done(delivery_id, part.part, remote_id, url)
        return Part(
            part=part.part, idempotency_key=part.idempotency_key, remote_id=remote_id, url=url
        )

    async def _find_posted(self, post: MastodonPost, parent: str | None) -> Any | None:
        """This part among the account's recent statuses: same text, replying to the same."""
        if self._account_id is None:
            account = await self._call(self._client.account_verify_credentials)
            self._account_id = str(account["id"])
        recent = await self._call(
            partial(self._client.account_statuses, self._account_id, limit=RECENT_STATUSES)
        )
        wanted = _comparable(post.text)
        for status in recent:
            if str(status.get("in_reply_to_id") or "") != (parent or ""):
                continue
            if _comparable(_plain(str(status.get("content") or ""))) == wanted:
                return status
        return None

    async def _post(
        self, post: MastodonPost, parent: str | None, key: str, images: dict[str, Image]
    ) -> Any:
        media_ids = [
            await self._upload(src, images[src], post.media_description) for src in post.media
        ]
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

    async def _upload(self, src: str, image: Image, description: str | None) -> str:
        self._media.take(_("Medien"))
        media = await self._call(
            partial(
                self._client.media_post,
                image.content,
                mime_type=image.mime_type,
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

    async def _read_image(self, src: str) -> Image:
        """The image's bytes and type: from the media store, or the local file (in the pool)."""
        if self._own_images is not None and self._own_images.owns(src):
            own = await self._own_images.read(src)
            return Image(content=own.content, mime_type=own.mime_type)
        if src.startswith(("https://", "http://")):
            raise PermanentError(
                _(
                    "Mastodon: Bild {image} liegt nicht in der Medienablage und wird nicht aus "
                    "dem Netz geholt; speichern Sie die Ankündigung neu, um es zu übernehmen"
                ).format(image=src)
            )
        loop = asyncio.get_running_loop()
        content = await loop.run_in_executor(self._pool, read_local_image, self._image_root, src)
        return Image(
            content=content,
            mime_type=mimetypes.guess_type(src)[0] or "application/octet-stream",
        )

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


def _image_problem(src: str, image: Image, limits: InstanceLimits) -> str | None:
    if len(image.content) > limits.image_size_limit:
        return _("Bild {image} ist größer als {limit} Bytes").format(
            image=src, limit=limits.image_size_limit
        )
    if limits.supported_mime_types and image.mime_type not in limits.supported_mime_types:
        return _("Bild {image} hat den Typ {type}, den die Instanz nicht annimmt").format(
            image=src, type=image.mime_type
        )
    return None


def _plain(content: str) -> str:
    """A status's HTML ``content`` as text: line breaks kept as such, tags dropped, unescaped."""
    return html.unescape(_TAG.sub("", _BREAK.sub("\n", content)))


def _comparable(text: str) -> str:
    """Text as both sides show it: remote mentions as @user, whitespace runs as one space."""
    text = MENTION_RE.sub(lambda m: "@" + m.group(1), unicodedata.normalize("NFC", text))
    return " ".join(text.split())
