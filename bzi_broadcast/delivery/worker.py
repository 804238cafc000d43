"""The worker: claim → send → record, for one channel.

It claims at most ``window`` rows at a time (the in-flight window: the most a crash can re-send),
sends them with at most ``channel.concurrency`` in flight, and writes outcomes back in small
batches (every ``flush_interval`` seconds or ``flush_size`` outcomes). Errors become data: a
transient error writes the next attempt time on the row; nothing here sleeps to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bzi_broadcast.channels.base import Channel
from bzi_broadcast.delivery.lifecycle import DeliveryStatus
from bzi_broadcast.delivery.outbox import Claimed, Outbox, Outcome
from bzi_broadcast.delivery.retry import RetryPolicy
from bzi_broadcast.errors import (
    ChannelAuthError,
    DeliveryError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.metrics import SEND_SECONDS
from bzi_broadcast.store.announcements import Announcements, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    window: int = 200  # rows claimed at once = the in-flight window
    flush_interval: float = 0.2
    flush_size: int = 100
    poll_interval: float = 1.0
    pause_error_rate: float = 0.5  # pause the channel when this share of recent sends failed
    pause_min_samples: int = 50
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class ErrorRate:
    """The share of failures among the last ``size`` sends."""

    def __init__(self, size: int) -> None:
        self._results: deque[bool] = deque(maxlen=size)

    def add(self, failed: bool) -> None:
        self._results.append(failed)

    def exceeds(self, threshold: float, min_samples: int) -> bool:
        n = len(self._results)
        return n >= min_samples and sum(self._results) / n > threshold

    def clear(self) -> None:
        self._results.clear()


PauseHook = Callable[[str, str], Any]  # (channel, reason) → awaitable


class Worker:
    def __init__(
        self,
        channel: Channel,
        outbox: Outbox,
        announcements: Announcements,
        *,
        settings: WorkerSettings = WorkerSettings(),
        on_pause: PauseHook | None = None,
        on_suppress: Callable[[Claimed, str], Any] | None = None,
        on_moved: Callable[[Claimed, str], Any] | None = None,
    ) -> None:
        self.channel = channel
        self._outbox = outbox
        self._announcements = announcements
        self._settings = settings
        self._on_pause = on_pause
        self._on_suppress = on_suppress
        self._on_moved = on_moved
        self._pending: list[Outcome] = []
        self._prepared: dict[int, asyncio.Future[Any]] = {}
        self._seen: dict[int, tuple[float, bool]] = {}  # announcement → (when asked, sending)
        self._asking = asyncio.Lock()  # one question at a time: the sends waiting share its answer
        self._errors = ErrorRate(max(settings.pause_min_samples * 2, 100))
        self._stopping = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._flush_now = asyncio.Event()
        self.paused = False
        # when this worker's own pause was on disk: only a later read of the pause state may
        # resume it (an earlier one had not seen the pause yet)
        self.pause_recorded_at: float | None = None
        self.sent = 0

    def stop(self) -> None:
        """Stop claiming; the batch in hand is finished (or handed back) by ``run``."""
        self._stopping.set()
        self._wakeup.set()

    def wake(self) -> None:
        self._wakeup.set()

    def resume(self) -> None:
        self.paused = False
        self.pause_recorded_at = None
        self._errors.clear()
        self._wakeup.set()

    async def run(self) -> None:
        flusher = asyncio.create_task(self._flush_periodically())
        failing = False  # the database failed the last round: said once, not every round
        try:
            while not self._stopping.is_set():
                try:
                    await self._round()
                except Exception:
                    # The database is away (restart, failover, network): the worker waits and
                    # tries again; what it claimed goes back by heartbeat or lease.
                    if not failing:
                        log.exception("worker round failed channel=%s", self.channel.name)
                    failing = True
                    await self._rest()
                else:
                    if failing:
                        log.info("worker recovered channel=%s", self.channel.name)
                    failing = False
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await self.flush()
            await self._outbox.release_mine(self.channel.name)

    async def _round(self) -> None:
        # Every outcome is on disk before the next claim: a crash re-sends at most one window of
        # rows (those claimed and handed to the server but not yet marked).
        await self.flush()
        batch = (
            []
            if self.paused
            else await self._outbox.claim(self.channel.name, self._settings.window)
        )
        if batch:
            await self._send_batch(batch)
        else:
            await self._idle()

    async def _idle(self) -> None:
        await self.flush()
        await self._outbox.finish_announcements()
        await self._rest()

    async def _rest(self) -> None:
        """Wait for a wake-up (a release, a resume, a stop) or one poll interval."""
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self._settings.poll_interval)

    async def _send_batch(self, batch: list[Claimed]) -> None:
        slots = asyncio.Semaphore(self.channel.concurrency)
        skipped: list[int] = []
        dropped: list[int] = []
        unchecked: list[int] = []

        async def one(item: Claimed) -> None:
            async with slots:
                if self._stopping.is_set() or self.paused:
                    skipped.append(item.id)
                    return
                try:
                    sending = await self._still_sending(item.announcement_id)
                except Exception:  # not knowing whether it was cancelled, it is not sent
                    unchecked.append(item.id)
                    return
                if sending:
                    await self._deliver(item)
                else:
                    dropped.append(item.id)  # cancelled while claimed: a cancel waits for this

        await asyncio.gather(*(one(item) for item in batch))
        if unchecked:
            log.warning(
                "announcement check failed channel=%s handed_back=%s",
                self.channel.name,
                len(unchecked),
            )
            skipped += unchecked
        if skipped or dropped:  # hand the rest back now, not at lease end
            await self.flush()
            if skipped:
                await self._outbox.unclaim(skipped)
            if dropped:
                await self._outbox.drop(dropped)

    async def _still_sending(self, announcement_id: int) -> bool:
        """Asked before every send, answered from the database at most ``flush_interval`` old:
        a send that starts on an older answer is still claimed, and a cancel waits for it."""
        now = time.monotonic()
        seen = self._seen.get(announcement_id)
        if seen is None or now - seen[0] > self._settings.flush_interval:
            async with self._asking:  # else every send in flight asks at once (bench/RESULTS.md)
                seen = self._seen.get(announcement_id)
                if seen is None or now - seen[0] > self._settings.flush_interval:
                    asked = time.monotonic()
                    sending = await self._outbox.still_sending(announcement_id)
                    seen = self._seen[announcement_id] = (asked, sending)
        return seen[1]

    async def _deliver(self, item: Claimed) -> None:
        attempts = item.attempts + 1
        try:
            prepared = await self._prepare(item.announcement_id)
            with SEND_SECONDS.time(channel=self.channel.name):
                receipt = await self.channel.send(prepared, item)
        except DeliveryError as exc:
            self._add(self._failure(item, attempts, exc))
            await self._after_failure(item, exc)
            return
        except Exception as exc:  # a bug in a channel: recorded and retried, never a stuck row
            log.exception(
                "send raised unexpectedly delivery_id=%s channel=%s", item.id, self.channel.name
            )
            unknown = UnknownOutcomeError(
                _("Interner Fehler beim Senden ({kind})").format(kind=type(exc).__name__)
            )
            self._add(self._failure(item, attempts, unknown))
            await self._after_failure(item, unknown)
            return
        self._errors.add(False)
        self.sent += 1
        self._add(
            Outcome(
                id=item.id,
                status=DeliveryStatus.SENT,
                attempts=attempts,
                at=utcnow(),
                remote_id=receipt.remote_id,
                new_recipient=receipt.new_recipient,
            )
        )
        if receipt.new_recipient and self._on_moved:
            await self._on_moved(item, receipt.new_recipient)

    async def _prepare(self, announcement_id: int) -> Any:
        # One load per announcement: the sends of a batch start together and share its future.
        future = self._prepared.get(announcement_id)
        if future is None:
            future = self._prepared[announcement_id] = asyncio.ensure_future(
                self._load(announcement_id)
            )
        try:
            return await asyncio.shield(future)
        except Exception:
            if future.done() and not future.cancelled() and future.exception() is not None:
                self._prepared.pop(announcement_id, None)  # the next send tries again
            raise

    async def _load(self, announcement_id: int) -> Any:
        record = await self._announcements.get(announcement_id)
        # Rendering is CPU work: in a thread, so the loop goes on sending and answering meanwhile.
        return await asyncio.to_thread(self.channel.prepare, record)

    def _failure(self, item: Claimed, attempts: int, exc: DeliveryError) -> Outcome:
        now = utcnow()
        error = f"{type(exc).__name__}: {exc.message}"[:1000]
        log.info(
            "delivery failed channel=%s delivery_id=%s announcement_id=%s attempt=%s error=%s",
            item.channel,
            item.id,
            item.announcement_id,
            attempts,
            error,
        )
        if isinstance(exc, TransientError | ChannelAuthError):
            retry_after = exc.retry_after if isinstance(exc, TransientError) else None
            next_at = self._settings.retry.next_attempt(attempts, now, retry_after=retry_after)
            if next_at is not None:
                return _retry(item, attempts, now, next_at, error)
        return Outcome(
            id=item.id, status=DeliveryStatus.FAILED, attempts=attempts, at=now, error=error
        )

    async def _after_failure(self, item: Claimed, exc: DeliveryError) -> None:
        self._errors.add(True)
        if isinstance(exc, PermanentError) and exc.suppress_recipient and self._on_suppress:
            await self._on_suppress(item, exc.message)
        if isinstance(exc, ChannelAuthError):
            await self._pause(_("muss neu verbunden werden ({reason})").format(reason=exc.message))
        elif self._errors.exceeds(
            self._settings.pause_error_rate, self._settings.pause_min_samples
        ):
            await self._pause("error rate above threshold")

    async def _pause(self, reason: str) -> None:
        if self.paused:
            return
        self.paused = True
        self.pause_recorded_at = None
        log.warning("channel paused channel=%s reason=%s", self.channel.name, reason)
        if self._on_pause:
            await self._on_pause(self.channel.name, reason)
        self.pause_recorded_at = time.monotonic()

    def _add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        if len(self._pending) >= self._settings.flush_size:
            self._wakeup_flush()

    def _wakeup_flush(self) -> None:
        self._flush_now.set()

    async def _flush_periodically(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self._settings.flush_interval)
            self._flush_now.clear()
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            await self._outbox.record(batch)
        except asyncio.CancelledError:
            # Stopping cancels the periodic flush, maybe mid-write: keep the outcomes for the
            # final flush (recording one twice is harmless), or the rows they describe would be
            # handed back as unsent and another replica would send them again.
            self._pending[:0] = batch
            raise
        except Exception:
            # Keep the outcomes and try again with the next flush; if the process dies first,
            # the leases run out and the rows are sent again (at least once, never lost).
            log.exception(
                "recording outcomes failed channel=%s count=%s", self.channel.name, len(batch)
            )
            self._pending[:0] = batch


def _retry(item: Claimed, attempts: int, now: datetime, next_at: datetime, error: str) -> Outcome:
    return Outcome(
        id=item.id,
        status=DeliveryStatus.QUEUED,
        attempts=attempts,
        at=now,
        next_attempt_at=next_at,
        error=error,
    )
