"""Where the shared rate limits keep their rows (``delivery.ratelimit.SlotStore``).

``DatabaseSlots``: the table ``rate_slots``, one transaction per grant. The row is created and
locked by one upsert (PostgreSQL: a row lock, which the other replicas' grants queue on; SQLite:
the database's write lock, taken by the first statement so no reader has to upgrade). The clock
is the database's own, so the replicas' hosts need not agree on the time.

``MemorySlots``: the same rows in this process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Float, cast, delete, extract, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.delivery.ratelimit import DAY, Party, SlotRow, SlotState
from bzi_broadcast.store.schema import rate_slots

UNIX_EPOCH_JULIAN_DAY = 2440587.5  # julianday('1970-01-01')


class DatabaseSlots:
    """``clock`` replaces the database's clock (seconds since 1970): for tests that cross a
    midnight."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] | None = None) -> None:
        self.engine = engine
        self._clock = clock
        postgresql = engine.dialect.name == "postgresql"
        self._insert = postgresql_insert if postgresql else sqlite_insert

    @contextlib.asynccontextmanager
    async def locked(self, key: str) -> AsyncIterator[SlotRow]:
        upsert = self._insert(rate_slots).values(key=key, tat=0.0, day=0, day_count=0)
        statement = upsert.on_conflict_do_update(
            index_elements=[rate_slots.c.key], set_={"tat": rate_slots.c.tat}
        ).returning(
            rate_slots.c.tat, rate_slots.c.day, rate_slots.c.day_count, self._now().label("now")
        )
        async with self.engine.begin() as conn:
            asked = time.monotonic()  # the connection is ready: the round trip alone is timed
            row = (await conn.execute(statement)).one()
            read = (asked, time.monotonic())
            state = SlotState(tat=row.tat, day=row.day, day_count=row.day_count)
            yield _DatabaseRow(conn, self._insert, key, state, float(row.now), read)

    def _now(self) -> ColumnElement[float]:
        if self._clock is not None:
            return cast(literal(self._clock()), Float)
        if self.engine.dialect.name == "postgresql":
            # One value for the whole statement (clock_timestamp() would change within it), taken
            # when the statement arrives: a grant queued on the lock sees an older now, which only
            # lets a slot start in the past, that is at once.
            return cast(extract("epoch", func.statement_timestamp()), Float)
        # SQLite: 'now' is one value per statement, to the millisecond
        return (func.julianday("now") - UNIX_EPOCH_JULIAN_DAY) * DAY


class _DatabaseRow:
    def __init__(
        self,
        conn: AsyncConnection,
        insert: Any,
        key: str,
        state: SlotState,
        now: float,
        read: tuple[float, float],
    ) -> None:
        self._conn, self._insert, self._key = conn, insert, key
        self.state, self.now, self.read = state, now, read

    async def reserve(
        self, parties: Sequence[Party], *, free_by: float, until: float
    ) -> dict[str, float]:
        """One upsert for all: a new party is inserted, a known one updated only when free."""
        wanted = {f"{self._key}/{p.key}": p for p in parties}
        statement = self._insert(rate_slots).values(
            [{"key": k, "tat": until + p.gap, "day": 0, "day_count": 0} for k, p in wanted.items()]
        )
        statement = statement.on_conflict_do_update(
            index_elements=[rate_slots.c.key],
            set_={"tat": statement.excluded.tat},
            where=rate_slots.c.tat <= free_by,
        ).returning(rate_slots.c.key)
        reserved = set((await self._conn.execute(statement)).scalars())
        if len(reserved) == len(wanted):
            return {}
        busy = select(rate_slots.c.key, rate_slots.c.tat).where(
            rate_slots.c.key.in_(set(wanted) - reserved)
        )
        return {wanted[row.key].key: row.tat for row in await self._conn.execute(busy)}

    async def write(self, state: SlotState) -> None:
        await self._conn.execute(
            update(rate_slots)
            .where(rate_slots.c.key == self._key)
            .values(tat=state.tat, day=state.day, day_count=state.day_count)
        )

    async def forget(self) -> None:
        await self._conn.execute(
            delete(rate_slots).where(
                rate_slots.c.key.startswith(f"{self._key}/", autoescape=True),
                rate_slots.c.tat < self.now,
            )
        )


class MemorySlots:
    """The rows in this process's memory, for one process without a database (a test send to
    staff, unit tests). Its clock is the wall clock, so days are UTC days."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.rows: dict[str, SlotState] = {}
        self._clock = clock
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def locked(self, key: str) -> AsyncIterator[SlotRow]:
        async with self._lock:
            read = time.monotonic()
            yield _MemoryRow(self.rows, key, self._clock(), (read, read))


class _MemoryRow:
    def __init__(
        self, rows: dict[str, SlotState], key: str, now: float, read: tuple[float, float]
    ) -> None:
        self._rows, self._key, self.now, self.read = rows, key, now, read
        self.state = rows.get(key, SlotState())

    async def reserve(
        self, parties: Sequence[Party], *, free_by: float, until: float
    ) -> dict[str, float]:
        busy: dict[str, float] = {}
        for party in parties:
            key = f"{self._key}/{party.key}"
            tat = self._rows.get(key, SlotState()).tat
            if tat <= free_by:
                self._rows[key] = SlotState(tat=until + party.gap)
            else:
                busy[party.key] = tat
        return busy

    async def write(self, state: SlotState) -> None:
        self._rows[self._key] = state

    async def forget(self) -> None:
        prefix = f"{self._key}/"
        for key in [k for k, s in self._rows.items() if k.startswith(prefix) and s.tat < self.now]:
            del self._rows[key]
