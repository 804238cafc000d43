"""The scheduler releases announcements; it never sends.

APScheduler 3.11's ``AsyncIOScheduler`` fires one date job per scheduled announcement at its
``publish_at`` (stored in UTC, so DST changes in Europe/Berlin cannot shift or repeat it), and a
periodic sweep releases whatever is due but was missed (restart, misfire, another replica's job).
Release itself is idempotent, so a double firing is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.store.announcements import Announcements, utcnow

log = logging.getLogger(__name__)

Release = Callable[[int], Awaitable[object]]


class Scheduler:
    def __init__(
        self,
        announcements: Announcements,
        release: Release,
        *,
        sweep_interval: float = 30.0,
        on_sweep: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._announcements = announcements
        self._release = release
        self._on_sweep = on_sweep
        self._ahead = timedelta(seconds=max(5.0, 2 * sweep_interval))
        self._running: set[asyncio.Task[Any]] = set()
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._scheduler.add_job(
            self.sweep,
            IntervalTrigger(seconds=sweep_interval),
            id="sweep",
            max_instances=1,
            coalesce=True,
            next_run_time=utcnow(),
        )

    async def start(self) -> None:
        self._scheduler.start()
        for record in await self._announcements.find([AnnouncementStatus.SCHEDULED]):
            if record.publish_at:
                self.schedule(record.id, record.publish_at)

    def schedule(self, announcement_id: int, publish_at: datetime) -> None:
        """(Re)plan the release of one announcement; a time in the past fires at once."""
        self._scheduler.add_job(
            self._fire,
            DateTrigger(run_date=max(publish_at, utcnow())),
            args=[announcement_id],
            id=f"release-{announcement_id}",
            replace_existing=True,
            misfire_grace_time=None,
            coalesce=True,
        )

    def unschedule(self, announcement_id: int) -> None:
        job = self._scheduler.get_job(f"release-{announcement_id}")
        if job is not None:
            job.remove()

    async def _fire(self, announcement_id: int) -> None:
        with self._tracked():
            try:
                await self._release(announcement_id)
            except Exception:
                log.exception("release failed announcement_id=%s", announcement_id)

    async def sweep(self) -> None:
        """Release what is due; plan exact jobs for what is due soon (queued by another process).

        Announcements written by the CLI, the web or another replica reach this scheduler here:
        those due within the look-ahead get a date job and are released on the second.
        """
        with self._tracked():
            try:
                now = utcnow()
                for announcement_id, publish_at in await self._announcements.due(now + self._ahead):
                    if publish_at <= now:
                        await self._fire(announcement_id)
                    elif self._scheduler.get_job(f"release-{announcement_id}") is None:
                        self.schedule(announcement_id, publish_at)
                if self._on_sweep:
                    await self._on_sweep()
            except Exception:
                log.exception("sweep failed")

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """Remember the running job, so ``stop`` can let it finish instead of cutting it off.

        Should the job still be cancelled (the grace period ran out), it ends quietly: release is
        idempotent and its transaction rolled back, so the next start simply does it again."""
        task = asyncio.current_task()
        if task is None or task in self._running:  # a release inside a sweep: the sweep tracks
            yield
            return
        self._running.add(task)
        try:
            yield
        except asyncio.CancelledError:
            log.info("scheduler job interrupted by shutdown")
        finally:
            self._running.discard(task)

    def lag(self) -> float:
        """Seconds the next sweep is overdue (0 when on time): a health figure."""
        job = self._scheduler.get_job("sweep")
        if job is None or job.next_run_time is None:
            return 0.0
        overdue: float = (utcnow() - job.next_run_time).total_seconds()
        return max(0.0, overdue)

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def stop(self, grace: float = 30.0) -> None:
        """Fire nothing more, and let a sweep or release that is running finish.

        APScheduler's shutdown cancels the jobs it is running, so they are waited for first; a
        job handed to the loop a moment ago gets one turn to start and be counted."""
        if self._scheduler.running:
            self._scheduler.pause()
        await asyncio.sleep(0)
        running = {task for task in self._running if task is not asyncio.current_task()}
        if running:
            await asyncio.wait(running, timeout=grace)
        self.shutdown()
