"""Rate limits that hold for every replica together: GCRA slots kept in one row per limit.

GCRA ("virtual scheduling"): a limit of ``per_second`` is a row holding its theoretical arrival
time ``tat`` — when the next evenly spaced send is due — on the store's clock. One atomic update
hands out the next ``n`` slots, ``max(tat, now) + i / per_second`` (less the burst's tolerance,
never before now), and moves ``tat`` past them. Every process using the same row keeps the limit
together; each maps the slots onto its own monotonic clock by the measured offset to the store's,
so no two hosts' clocks are ever compared. Asks wait and are granted together while a process
still holds slots ahead, and without a daily cap a grant takes a quarter second of slots ahead:
the database sees a few round trips per second, not one per send. Slots granted to a process that
stops or falls silent are lost, which only ever errs on the slow side.

A daily cap is counted in the same row, per UTC day of the store's clock: a grant never goes past
it, and asks beyond it get ``DailyCapReached`` with the time to midnight. A slot counts when it is
granted, and with a cap only sends waiting now are granted (nothing is taken ahead): the one slot
that can go unused is a send cut off at shutdown, so the cap may fall short by the sends in
flight at a stop, never be exceeded.

A send may also need a *party* of its own (a Telegram chat: one message a second). Right after the
grant, each party's row is reserved for its send's slot, if the party is free by then (its ``tat``
is the slot plus the gap). A party another replica holds answers when it is free: that slot goes
unused and the send asks again then. So two replicas never write to one chat within its gap; the
cost, one slot, arises only when two of them meet at one chat (two announcements at once).

The contract is one call: ``Limiter.when(party)`` → the monotonic time at which the send may
start. The channel waits for it (``pace``, which also gives up a slot a busy loop woke too late
for); nothing here sends, and adapters never compute a rate. The rows live in a ``SlotStore``
(``store.rate_slots``: the database, SQLite or PostgreSQL with the same code, or this process's
memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from bzi_broadcast.errors import TransientError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.metrics import record_wait

log = logging.getLogger(__name__)

DAY = 86_400.0
# A grant's first slot is at least this far ahead of the store's clock, so that it is still ahead
# when the answer arrives (a round trip, on a busy host); and a process asks for more slots this
# long before the last one it holds is due.
LEAD = 0.1
FORGET_EVERY = 60.0  # seconds between deletions of free parties' rows
AHEAD_MAX = 128  # slots taken ahead of the asks at most (a high rate: a few milliseconds)


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    per_second: float
    burst: int = 1
    daily_cap: int | None = None

    @property
    def interval(self) -> float:
        return 1.0 / self.per_second

    @property
    def tolerance(self) -> float:
        """How far a send may run ahead of the even schedule: room for ``burst`` at once."""
        return (self.burst - 1) * self.interval


class DailyCapReached(TransientError):
    """Das Tageslimit des Servers ist erreicht; es geht morgen weiter."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Party:
    """A second limit one send must keep, such as one chat: its key and the gap after a send."""

    key: str
    gap: float


@dataclass(frozen=True, slots=True)
class Slot:
    at: float  # the send may start then (store's clock)


@dataclass(frozen=True, slots=True)
class Busy:
    until: float  # the ask's party is free from then on (store's clock); ask again then


@dataclass(frozen=True, slots=True)
class Capped:
    """Today's cap is used up."""


Answer = Slot | Busy | Capped


@dataclass(frozen=True, kw_only=True, slots=True)
class Taken:
    """What one atomic update of a limit's row granted."""

    now: float  # the store's clock then
    earliest: float  # ``now`` plus the lead the grant was asked with: no slot before
    tat: float  # the row's theoretical arrival time after the update
    granted: int  # slots granted: as many as asked, unless the daily cap left fewer
    read: tuple[float, float]  # this process's monotonic clock before and after the update


@dataclass(frozen=True, kw_only=True, slots=True)
class Grant:
    now: float  # the store's clock at the grant
    read: tuple[float, float]  # this process's monotonic clock before and after it
    answers: tuple[Answer, ...]  # one per ask, in the order asked
    midnight: float  # when today's count ends


class SlotStore(Protocol):
    """The rows of the limits. Every change is one atomic statement: no row stays locked while
    a process waits for anything, so a replica that stalls never stalls the others."""

    shared: bool  # other processes may take slots of the same rows (PostgreSQL: replicas)

    async def grant(
        self, key: str, limit: RateLimit, asks: Sequence[Party | None], lead: float = 0.0
    ) -> Grant:
        """Slots for ``asks``, in order. One update moves the row of ``key`` (created at first
        use) past the next slots, as many as asked unless the daily cap leaves fewer: ``tat =
        max(tat, now + lead) + granted / per_second``, today's count ``+ granted``, reset when the
        UTC day has changed (``slots``). Then each party is reserved for its send's slot if it
        is free by then, busy until the slot plus its gap; ``answer`` says what each ask got."""

    async def hold(self, key: str, seconds: float) -> None:
        """No slot of ``key`` before ``seconds`` from now (the server asked everybody to wait)."""

    async def forget(self, key: str) -> None:
        """Delete the rows of free parties of ``key`` (a missing row is a free party)."""


def slots(taken: Taken, limit: RateLimit) -> list[float]:
    """The slots an update granted: evenly spaced up to the row's new ``tat``, less the burst's
    tolerance, never before the earliest."""
    start = taken.tat - taken.granted * limit.interval
    step, ahead = limit.interval, limit.tolerance
    return [max(taken.earliest, start + i * step - ahead) for i in range(taken.granted)]


def sends(asks: Sequence[Party | None], times: Sequence[float]) -> list[tuple[Party, float]]:
    """The parties to reserve, each for its ask's slot."""
    return [(party, at) for party, at in zip(asks, times, strict=False) if party is not None]


def answer(
    taken: Taken, asks: Sequence[Party | None], times: Sequence[float], busy: dict[str, float]
) -> Grant:
    """A slot for each granted ask, unless its party was busy at it (that slot goes unused: two
    replicas met at one chat, which is rare); ``Capped`` for the asks past the daily cap."""
    answers: list[Answer] = [Capped()] * len(asks)
    for index, at in enumerate(times):
        party = asks[index]
        answers[index] = Busy(busy[party.key]) if party and party.key in busy else Slot(at)
    return Grant(
        now=taken.now,
        read=taken.read,
        answers=tuple(answers),
        midnight=(taken.now // DAY + 1) * DAY,
    )


class ClockOffset:
    """Local monotonic time = store time + offset. Each reading of the store's clock bounds the
    offset to [asked − store's now, answered − store's now]; the intersection of the last minute's
    bounds is the tightest (NTP's idea), so one slow round trip does not move a process's slots."""

    def __init__(self, window: float = 60.0) -> None:
        self._window = window
        self._bounds: deque[tuple[float, float, float]] = deque()  # (received, low, high)

    def update(self, asked: float, answered: float, store_now: float) -> float:
        self._bounds.append((answered, asked - store_now, answered - store_now))
        while self._bounds[0][0] < answered - self._window:
            self._bounds.popleft()
        low = max(b[1] for b in self._bounds)
        high = min(b[2] for b in self._bounds)
        if low > high:  # the clocks drifted apart or one was set: start over from this one
            self._bounds = deque([self._bounds[-1]])
            low, high = self._bounds[0][1], self._bounds[0][2]
        return (low + high) / 2


@dataclass(eq=False)
class _Ask:
    party: Party | None
    future: asyncio.Future[float]
    asked: float = field(default_factory=time.monotonic)


class Limiter:
    """Answers "when may I send?" for the limit ``key`` in ``store``, shared by every process
    that uses the same store and key. Asks wait here while this process still holds slots
    ahead (they would get slots behind those anyway) and are then granted together. Without a
    daily cap, a grant for asks without a party takes a quarter second of slots (at most
    ``AHEAD_MAX``) and keeps those not asked for yet for the next asks: a high rate costs a
    round trip per batch, not per send; what a process does not use of them is lost. With a
    cap, only what is asked for is taken, so the count is exact (see the module's docstring)."""

    def __init__(
        self,
        store: SlotStore,
        key: str,
        limit: RateLimit,
        *,
        name: str,
        batch_seconds: float = 0.25,
        late: float = math.inf,
    ) -> None:
        """``late``: how long after its slot a send may still start (``pace``)."""
        self.key, self.limit, self.name = key, limit, name  # name: the metrics' label
        self.late = late
        self._store = store
        self._batch = max(1, math.ceil(limit.per_second * batch_seconds))
        self._ahead = min(self._batch, AHEAD_MAX) if limit.daily_cap is None else 0
        self._pool: deque[float] = deque()  # slots taken ahead, not asked for yet (monotonic)
        # A send that may not start late, on a limit other processes share, gets slots still
        # ahead when the answer arrives. (Alone, a send may start late: nobody's slot comes next.)
        self._lead = LEAD if math.isfinite(late) and store.shared else 0.0
        self._asks: list[_Ask] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._offset = ClockOffset()
        self._last_slot = 0.0  # the latest slot handed out here (monotonic)
        self._busy: dict[str, float] = {}  # party → free from (monotonic), as far as known here
        self.held_until = 0.0  # no send before then (monotonic): a flood answer came
        self._capped_until = 0.0
        self._next_forget = 0.0
        self.started = 0.0  # when the last send paced here started (monotonic)
        self._background: set[asyncio.Task[None]] = set()

    async def when(self, party: Party | None = None) -> float:
        """The monotonic time at which one send (to ``party``) may start; ``DailyCapReached``
        when today's cap is used up."""
        asked = time.monotonic()
        if asked < self._capped_until:
            raise DailyCapReached(retry_after=self._capped_until - asked)
        at = self._from_pool(asked) if party is None else None
        if at is None:
            ask = _Ask(party, asyncio.get_running_loop().create_future(), asked)
            self._asks.append(ask)
            self._arrived.set()
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._grant_loop())
            at = await ask.future
        if at > asked + 0.001:
            record_wait(self.name, at - asked)
        return at

    @property
    def shared(self) -> bool:
        """Other processes may take slots of this limit (the store is PostgreSQL)."""
        return self._store.shared

    def _from_pool(self, now: float) -> float | None:
        """A slot taken ahead; those already past (nobody asked in time) are lost."""
        while self._pool and self._pool[0] < now - LEAD:
            self._pool.popleft()
        return self._pool.popleft() if self._pool else None

    def hold(self, seconds: float) -> None:
        """No send for ``seconds``: in this process at once, in the others from their next
        grant (the row's ``tat`` moves past the hold)."""
        self.held_until = max(self.held_until, time.monotonic() + seconds)
        self._pool = deque(at for at in self._pool if at >= self.held_until)
        task = asyncio.create_task(self._store.hold(self.key, seconds))
        self._background.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("rate limit hold not stored limiter=%s error=%s", self.name, exc)

    async def aclose(self) -> None:
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ask in self._asks:
            ask.future.cancel()

    async def _grant_loop(self) -> None:
        while True:
            for ask in self._asks:  # slots taken ahead while these waited for a grant
                if ask.party is None and not ask.future.done():
                    if (at := self._from_pool(time.monotonic())) is None:
                        break
                    ask.future.set_result(at)
            self._asks = [a for a in self._asks if not a.future.done()]
            if not self._asks:
                return
            now = time.monotonic()
            batch, due = self._next_batch(now)
            if batch:
                await self._grant(batch)
                continue
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), max(0.001, due - now))

    def _next_batch(self, now: float) -> tuple[list[_Ask], float]:
        """The asks to grant now — or none, and when to look again: while this process holds
        slots ahead, unless a whole batch waits; at most one ask per party."""
        ready: list[_Ask] = []
        parties: set[str] = set()
        later = math.inf
        for ask in self._asks:
            key = ask.party.key if ask.party else None
            free = max(self.held_until, self._busy.get(key, 0.0) if key else 0.0)
            if free > now + LEAD:
                later = min(later, free - LEAD)
            elif key not in parties:
                ready.append(ask)
                if key:
                    parties.add(key)
                if len(ready) == self._batch:
                    break
        run_out = self._last_slot - LEAD
        if ready and (len(ready) == self._batch or now >= run_out):
            return ready, now
        return [], min(later, run_out) if ready else later

    async def _grant(self, batch: list[_Ask]) -> None:
        try:
            if time.monotonic() >= self._next_forget:
                self._next_forget = time.monotonic() + FORGET_EVERY
                await self._store.forget(self.key)
            asks = [a.party for a in batch]
            if all(party is None for party in asks):
                asks += [None] * (self._ahead - len(asks))
            granted = await self._store.grant(self.key, self.limit, asks, lead=self._lead)
        except (SQLAlchemyError, OSError) as exc:
            self._fail(batch, exc)
            return
        offset = self._offset.update(*granted.read, granted.now)
        for ask, answer in zip(batch, granted.answers, strict=False):
            self._answer(ask, answer, granted, offset)
        for answer in granted.answers[len(batch) :]:
            if isinstance(answer, Slot):
                self._pool.append(answer.at + offset)
                self._last_slot = max(self._last_slot, answer.at + offset)
        if len(self._busy) > 10_000:  # forget parties whose gap is over (a fan-out is long)
            self._busy = {k: t for k, t in self._busy.items() if t > granted.read[1]}

    def _answer(self, ask: _Ask, answer: Answer, granted: Grant, offset: float) -> None:
        if isinstance(answer, Slot):
            at = answer.at + offset
            self._last_slot = max(self._last_slot, at)
            if ask.party is not None:
                self._busy[ask.party.key] = at + ask.party.gap
            if not ask.future.done():  # an ask given up meanwhile: its slot goes unused
                ask.future.set_result(at)
        elif isinstance(answer, Busy):
            if ask.party is not None:
                self._busy[ask.party.key] = answer.until + offset  # asked again from then
        else:
            to_midnight = granted.midnight - granted.now
            self._capped_until = granted.midnight + offset
            if not ask.future.done():
                ask.future.set_exception(DailyCapReached(retry_after=to_midnight))

    def _fail(self, batch: list[_Ask], exc: Exception) -> None:
        original = getattr(exc, "orig", None) or exc
        reason = str(original).splitlines()[0] if str(original) else type(original).__name__
        log.warning("rate limit grant failed limiter=%s error=%s", self.name, reason)
        for ask in batch:
            if not ask.future.done():
                message = _("Datenbank nicht erreichbar: {reason}").format(reason=reason)
                ask.future.set_exception(TransientError(message))


async def sleep_until(at: float) -> None:
    """Wait for the monotonic time ``at`` (a slot from ``Limiter.when``)."""
    delay = at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def pace(limiter: Limiter, party: Party | None = None) -> None:
    """Return when one send (to ``party``) may start: at its slot. A slot this process wakes
    for more than ``limiter.late`` after it (the event loop was busy) is given up where other
    processes share the limit, and another asked for: sent late, the message would come too
    close to the next slot, which another replica sends on time. After two such slots the third
    is used however late (an overloaded process still sends). Alone, a late send goes, but not
    closer than the interval to this process's send before (no burst of overdue slots). A slot
    a flood hold fell on is given up too."""
    for attempt in itertools.count():
        at = await limiter.when(party)
        await sleep_until(at)
        now = time.monotonic()
        if now < limiter.held_until:
            continue
        late = now - at > limiter.late
        if late and attempt < 2 and limiter.shared:
            log.debug("slot given up limiter=%s late_seconds=%.3f", limiter.name, now - at)
            continue
        # taken before waiting, so that two overdue sends of this process space out, too
        limiter.started = max(now, limiter.started + limiter.limit.interval) if late else now
        await sleep_until(limiter.started)
        return


def __getattr__(name: str) -> Any:
    """The superseded process-local token bucket, while tests/test_operations.py imports it."""
    if name in ("TokenBucket", "load_bucket", "save_bucket"):
        from bzi_broadcast.delivery import token_bucket

        return getattr(token_bucket, name)
    raise AttributeError(name)
