"""Where the shared rate limits keep their rows (``delivery.ratelimit.SlotStore``).

``DatabaseSlots``: the table ``rate_slots``. Every change is one statement in autocommit mode,
so a row is locked only while the database executes it (PostgreSQL queues the replicas' grants on
that row lock; SQLite has one writer anyway): a replica that stalls between two round trips never
holds the others up. The clock is the database's own, so the replicas' hosts need not agree on
the time. The same statements run on SQLite (3.35 and later: ``RETURNING``) and PostgreSQL; only
the spelling of now, floor, greatest and least differs.

``MemorySlots``: the same rows in this process's memory (one process without a database: a test
send to staff; unit tests).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    bindparam,
    case,
    cast,
    delete,
    extract,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.delivery.ratelimit import (
    DAY,
    Grant,
    Party,
    RateLimit,
    Taken,
    answer,
    sends,
    slots,
)
from bzi_broadcast.store.schema import rate_slots

UNIX_EPOCH_JULIAN_DAY = 2440587.5  # julianday('1970-01-01')
row = rate_slots.c


class DatabaseSlots:
    """``clock`` replaces the database's clock (seconds since 1970): for tests that cross a
    midnight."""

    def __init__(
        self,
        engine: AsyncEngine,
        clock: Callable[[], float] | None = None,
        *,
        shared: bool | None = None,
    ) -> None:
        """``shared`` (default: on PostgreSQL, where replicas are): parties are reserved here.
        One process alone (SQLite) keeps its parties apart itself (``Limiter``)."""
        self.engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._clock = clock
        self._postgresql = engine.dialect.name == "postgresql"
        self.shared = self._postgresql if shared is None else shared
        self._insert: Any = postgresql_insert if self._postgresql else sqlite_insert
        self._created: set[str] = set()

    async def grant(
        self, key: str, limit: RateLimit, asks: Sequence[Party | None], lead: float = 0.0
    ) -> Grant:
        """Both statements on one connection: one checkout (and its ping) per grant."""
        if key not in self._created:
            await self._create(key)
        async with self._autocommit.connect() as conn:
            taken = await self._take(conn, key, len(asks), limit, lead)
            times = slots(taken, limit)
            reserving = sends(asks, times) if self.shared else []
            busy = await self._reserve(conn, key, reserving) if reserving else {}
        return answer(taken, asks, times, busy)

    async def _take(
        self, conn: AsyncConnection, key: str, count: int, limit: RateLimit, lead: float
    ) -> Taken:
        values = {"limit_key": key, "count": count, "lead": lead, **self._clock_value()}
        statement = self._update(limit)
        asked = time.monotonic()
        result = (await conn.execute(statement, values)).one()
        read = (asked, time.monotonic())
        now_value = float(result.now)
        return Taken(
            now=now_value,
            earliest=now_value + lead,
            tat=result.tat,
            granted=result.granted,
            read=read,
        )

    @functools.cache  # noqa: B019 - a few limits per process, each built once
    def _update(self, limit: RateLimit) -> Any:
        """The grant: one update of the row, its parameters bound (limit_key, count, lead)."""
        now = self._now()
        today = self._floor(now / DAY)
        used = case((row.day == today, row.day_count), else_=0)
        granted: ColumnElement[int] = bindparam("count", type_=Integer)
        if limit.daily_cap is not None:
            granted = self._greatest(literal(0), self._least(granted, limit.daily_cap - used))
        lead = bindparam("lead", type_=Float)
        return (
            update(rate_slots)
            .where(row.key == bindparam("limit_key"))
            .values(
                tat=self._greatest(row.tat, now + lead) + granted * limit.interval,
                day=today,
                day_count=used + granted,
                granted=granted,
            )
            .returning(row.tat, row.granted, now.label("now"))
        )

    async def _create(self, key: str) -> None:
        statement = self._insert(rate_slots).values(key=key, tat=0.0, day=0, day_count=0, granted=0)
        async with self._autocommit.connect() as conn:
            await conn.execute(statement.on_conflict_do_nothing(index_elements=[row.key]))
        self._created.add(key)

    async def _reserve(
        self, conn: AsyncConnection, key: str, reserving: Sequence[tuple[Party, float]]
    ) -> dict[str, float]:
        """One upsert per gap (private chats, groups), rows in key order: two replicas' upserts
        lock the rows they share in the same order, so they never deadlock."""
        ordered = sorted(reserving, key=lambda send: (send[0].gap, send[0].key))
        busy: dict[str, float] = {}
        for gap, same_gap in groupby(ordered, lambda send: send[0].gap):
            wanted = {f"{key}/{party.key}": (party, at) for party, at in same_gap}
            values = [
                {"key": k, "tat": at + gap, "day": 0, "day_count": 0, "granted": 0}
                for k, (_party, at) in wanted.items()
            ]
            upsert = self._insert(rate_slots).values(values)
            statement = upsert.on_conflict_do_update(
                index_elements=[row.key],
                set_={"tat": upsert.excluded.tat},
                where=row.tat <= upsert.excluded.tat - gap,  # free by the send's time
            ).returning(row.key)
            reserved = set((await conn.execute(statement)).scalars())
            if missing := set(wanted) - reserved:
                found = await conn.execute(select(row.key, row.tat).where(row.key.in_(missing)))
                busy.update({wanted[k][0].key: tat for k, tat in found})
        return busy

    async def hold(self, key: str, seconds: float) -> None:
        statement = (
            update(rate_slots)
            .where(row.key == key)
            .values(tat=self._greatest(row.tat, self._now() + seconds))
        )
        async with self._autocommit.connect() as conn:
            await conn.execute(statement, self._clock_value())

    async def forget(self, key: str) -> None:
        """Rows a grant is reserving right now are skipped, not waited for (no deadlock)."""
        free = (
            select(row.key)
            .where(row.key.startswith(f"{key}/", autoescape=True), row.tat < self._now())
            .with_for_update(skip_locked=True)
        )
        async with self._autocommit.connect() as conn:
            statement = delete(rate_slots).where(row.key.in_(free.scalar_subquery()))
            await conn.execute(statement, self._clock_value())

    def _clock_value(self) -> dict[str, float]:
        """The value of ``_now()`` when a test replaced the database's clock."""
        return {} if self._clock is None else {"clock": self._clock()}

    def _now(self) -> ColumnElement[float]:
        """One value in a whole statement, however often it appears."""
        if self._clock is not None:
            return bindparam("clock", type_=Float)
        if self._postgresql:
            # statement_timestamp(), not clock_timestamp(), which changes within a statement
            return cast(extract("epoch", func.statement_timestamp()), Float)
        return (func.julianday("now") - UNIX_EPOCH_JULIAN_DAY) * DAY  # SQLite: to the millisecond

    def _floor(self, value: ColumnElement[float]) -> ColumnElement[int]:
        # SQLite's CAST truncates, which is the floor for the positive times here
        return cast(func.floor(value) if self._postgresql else value, Integer)

    def _greatest(self, *values: Any) -> Any:
        return func.greatest(*values) if self._postgresql else func.max(*values)

    def _least(self, *values: Any) -> Any:
        return func.least(*values) if self._postgresql else func.min(*values)


@dataclass(kw_only=True)
class MemoryRow:
    tat: float = 0.0
    day: int = 0
    day_count: int = 0


class MemorySlots:
    """Its clock is the wall clock, so days are UTC days. No call awaits anything, so each is
    atomic in the event loop."""

    def __init__(self, clock: Callable[[], float] = time.time, *, shared: bool = False) -> None:
        """``shared``: stands in for rows several processes share (tests)."""
        self.rows: dict[str, MemoryRow] = {}
        self._clock = clock
        self.shared = shared

    async def grant(
        self, key: str, limit: RateLimit, asks: Sequence[Party | None], lead: float = 0.0
    ) -> Grant:
        taken = self._take(key, len(asks), limit, lead)
        times = slots(taken, limit)
        return answer(taken, asks, times, self._reserve(key, sends(asks, times)))

    def _take(self, key: str, count: int, limit: RateLimit, lead: float) -> Taken:
        state = self.rows.setdefault(key, MemoryRow())
        read, now = time.monotonic(), self._clock()
        today = int(now // DAY)
        used = state.day_count if state.day == today else 0
        granted = count if limit.daily_cap is None else max(0, min(count, limit.daily_cap - used))
        state.tat = max(state.tat, now + lead) + granted * limit.interval
        state.day, state.day_count = today, used + granted
        return Taken(
            now=now, earliest=now + lead, tat=state.tat, granted=granted, read=(read, read)
        )

    def _reserve(self, key: str, reserving: Sequence[tuple[Party, float]]) -> dict[str, float]:
        busy: dict[str, float] = {}
        for party, at in reserving:
            state = self.rows.setdefault(f"{key}/{party.key}", MemoryRow())
            if state.tat <= at:
                state.tat = at + party.gap
            else:
                busy[party.key] = state.tat
        return busy

    async def hold(self, key: str, seconds: float) -> None:
        state = self.rows.setdefault(key, MemoryRow())
        state.tat = max(state.tat, self._clock() + seconds)

    async def forget(self, key: str) -> None:
        now = self._clock()
        for name in [k for k, s in self.rows.items() if k.startswith(f"{key}/") and s.tat < now]:
            del self.rows[name]
