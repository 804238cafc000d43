"""Rendering: one announcement into each channel's exact form, as pure functions of the content.

``Renderer`` loads the templates once (packaged ones shadowed by an override directory); its
methods do no I/O. Services call them through ``Renderer.off_loop``: rendering a long announcement
is CPU work, and on the event loop it would stall every other request (``/healthz`` included).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Final, ParamSpec, TypeVar

import jinja2

from bzi_broadcast.config import RenderSettings
from bzi_broadcast.content.model import Announcement
from bzi_broadcast.render.context import RenderContext
from bzi_broadcast.render.email import render_email
from bzi_broadcast.render.environment import create_environment
from bzi_broadcast.render.renditions import (
    EmailRendition,
    MastodonRendition,
    Renditions,
    TelegramRendition,
    WebRendition,
)
from bzi_broadcast.render.social import (
    TELEGRAM_CAPTION_LIMIT,
    TELEGRAM_MESSAGE_LIMIT,
    render_mastodon,
    render_telegram,
)
from bzi_broadcast.render.thread import ThreadLimits
from bzi_broadcast.render.web import render_web

CHANNELS: Final = ("email", "mastodon", "telegram")
RENDER_THREADS: Final = 2  # one per core here; more would only queue for the GIL
P = ParamSpec("P")
T = TypeVar("T")


class Renderer:
    def __init__(self, settings: RenderSettings | None = None) -> None:
        settings = settings or RenderSettings()
        env = create_environment(settings.templates_dir)
        self._ctx = RenderContext(env=env, organisation=settings.organisation)
        self._pool: ThreadPoolExecutor | None = None

    async def off_loop(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``work(*args, **kwargs)`` in the renderer's small thread pool, awaited.

        A thread still shares the GIL, but the interpreter switches every few milliseconds, so
        the event loop keeps answering while a long text is split; the pool's size bounds how
        many renderings compete at once (the rest wait in its queue)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="render")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: work(*args, **kwargs))

    @property
    def environment(self) -> jinja2.Environment:
        """The shared environment: the web pages are rendered from it too."""
        return self._ctx.env

    def email(self, announcement: Announcement) -> EmailRendition:
        return render_email(self._ctx, announcement)

    def mastodon(
        self, announcement: Announcement, limits: ThreadLimits | None = None
    ) -> MastodonRendition:
        return render_mastodon(self._ctx, announcement, limits or ThreadLimits())

    def telegram(self, announcement: Announcement) -> TelegramRendition:
        return render_telegram(self._ctx, announcement)

    def web(
        self,
        announcement: Announcement,
        *,
        entry_id: str | None = None,
        updated: datetime | None = None,
    ) -> WebRendition:
        return render_web(self._ctx, announcement, entry_id=entry_id, updated=updated)

    def preview_page(self, announcement: Announcement, renditions: Renditions) -> str:
        """One self-contained HTML page showing every channel side by side, with counts."""
        return self._ctx.render(
            "preview/page.html.j2",
            announcement,
            r=renditions,
            telegram_limit=TELEGRAM_MESSAGE_LIMIT,
            caption_limit=TELEGRAM_CAPTION_LIMIT,
        )

    def render(
        self,
        announcement: Announcement,
        *,
        channels: Collection[str] = CHANNELS,
        mastodon_limits: ThreadLimits | None = None,
    ) -> Renditions:
        return Renditions(
            email=self.email(announcement) if "email" in channels else None,
            mastodon=self.mastodon(announcement, mastodon_limits)
            if "mastodon" in channels
            else None,
            telegram=self.telegram(announcement) if "telegram" in channels else None,
            web=self.web(announcement) if "web" in channels else None,
        )


__all__ = ["CHANNELS", "Renderer", "Renditions", "ThreadLimits"]
