"""Rate limits shared by every replica (issue 14, item 3): ``delivery/ratelimit.py`` with its rows
in ``store/rate_slots.py``.

Unit tests of the limiter on every store (this process's memory, SQLite, PostgreSQL), with two
"replicas" as two engines on one database where it matters. The end-to-end tests (three
``serve`` processes against the local Telegram server, two against one mail server with a daily
cap) follow below.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.delivery.ratelimit import (
    DAY,
    Busy,
    Capped,
    DailyCapReached,
    Limiter,
    Party,
    RateLimit,
    Slot,
    SlotState,
    SlotStore,
    hold,
    take,
)
from bzi_broadcast.errors import TransientError
from bzi_broadcast.store.engine import alembic_config, create_engine, migrate
from bzi_broadcast.store.rate_slots import DatabaseSlots, MemorySlots
from bzi_broadcast.store.schema import rate_limits, rate_slots

from .test_delivery import wait_until

NOON = 20_000 * DAY + 12 * 3600.0  # a fixed day, 12:00 UTC


@dataclass
class Clock:
    """The store's clock, moved by hand (seconds since 1970)."""

    now: float = NOON

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[[Clock | None], SlotStore]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """Where the stores of a test keep their rows: None for this process's memory."""
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'limits.sqlite3'}"
    return str(request.getfixturevalue("pg_database_url"))


@pytest.fixture
async def stores(store_url: str | None) -> AsyncIterator[StoreFactory]:
    """Makes stores that share their rows as replicas do: in this process's memory, or one
    engine each on one SQLite or PostgreSQL database (migrated, no rows)."""
    if store_url is None:
        rows: dict[str, SlotState] = {}

        def memory(clock: Clock | None) -> SlotStore:
            store = MemorySlots(clock) if clock else MemorySlots()
            store.rows = rows
            return store

        yield memory
        return
    url = store_url
    engines = [create_engine(url)]
    await migrate(engines[0])
    async with engines[0].begin() as conn:
        await conn.execute(delete(rate_slots))

    def database(clock: Clock | None) -> SlotStore:
        engines.append(create_engine(url))
        return DatabaseSlots(engines[-1], clock=clock)

    yield database
    for engine in engines:
        await engine.dispose()


def times(answers: tuple[object, ...]) -> list[float]:
    return [a.at for a in answers if isinstance(a, Slot)]


# --- GCRA: the grant itself ----------------------------------------------------------------------


async def test_grants_are_evenly_spaced_and_the_next_one_continues(stores: StoreFactory) -> None:
    clock = Clock()
    store = stores(clock)
    limit = RateLimit(per_second=10)
    first = await take(store, "k", limit, [None] * 4)
    assert times(first.answers) == pytest.approx([NOON, NOON + 0.1, NOON + 0.2, NOON + 0.3])
    clock.now += 0.05  # while the first batch's slots are still ahead
    second = await take(stores(clock), "k", limit, [None] * 2)  # another replica
    assert times(second.answers) == pytest.approx([NOON + 0.4, NOON + 0.5])
    clock.now = NOON + 60  # idle for a minute: the next slot is now, no catching up
    third = await take(store, "k", limit, [None] * 2)
    assert times(third.answers) == pytest.approx([NOON + 60, NOON + 60.1])


async def test_burst_is_the_tolerance_ahead_of_the_even_schedule(stores: StoreFactory) -> None:
    clock = Clock()
    store = stores(clock)
    limit = RateLimit(per_second=10, burst=3)
    grant = await take(store, "k", limit, [None] * 5)
    assert times(grant.answers) == pytest.approx([NOON, NOON, NOON, NOON + 0.1, NOON + 0.2])
    again = await take(store, "k", limit, [None])
    assert times(again.answers) == pytest.approx([NOON + 0.3])


async def test_daily_cap_counts_every_replica_and_resets_at_utc_midnight(
    stores: StoreFactory,
) -> None:
    clock = Clock()
    one, two = stores(clock), stores(clock)
    limit = RateLimit(per_second=1000, burst=1000, daily_cap=5)
    assert len(times((await take(one, "smtp", limit, [None] * 3)).answers)) == 3
    refused = await take(two, "smtp", limit, [None] * 3)
    assert [type(a) for a in refused.answers] == [Slot, Slot, Capped]
    assert refused.midnight - refused.now == pytest.approx(12 * 3600)
    clock.now = NOON + 12 * 3600 - 0.001  # a millisecond before midnight: still today
    assert isinstance((await take(one, "smtp", limit, [None])).answers[0], Capped)
    clock.now = NOON + 12 * 3600  # midnight UTC
    assert len(times((await take(two, "smtp", limit, [None] * 6)).answers)) == 5


async def test_a_party_is_reserved_only_when_free_and_busy_ones_say_until_when(
    stores: StoreFactory,
) -> None:
    clock = Clock()
    one, two = stores(clock), stores(clock)
    limit = RateLimit(per_second=100)
    chat = Party(key="chat:1", gap=1.0)
    first = await take(one, "telegram", limit, [chat, Party(key="chat:2", gap=1.0)])
    assert times(first.answers) == pytest.approx([NOON, NOON + 0.01])
    clock.now += 0.5
    second = await take(two, "telegram", limit, [chat, None, Party(key="chat:3", gap=1.0)])
    busy = second.answers[0]
    assert isinstance(busy, Busy)
    assert busy.until == pytest.approx(NOON + 0.02 + 1.0)  # the first batch's end plus the gap
    assert times(second.answers) == pytest.approx([NOON + 0.5, NOON + 0.51])  # no slot lost
    clock.now = busy.until
    assert times((await take(two, "telegram", limit, [chat])).answers) == [busy.until]


async def test_free_parties_are_forgotten(stores: StoreFactory) -> None:
    clock = Clock()
    store = stores(clock)
    limit = RateLimit(per_second=100)
    await take(store, "telegram", limit, [Party(key=f"chat:{i}", gap=1.0) for i in range(5)])
    clock.now += 10
    await take(store, "telegram", limit, [Party(key="chat:9", gap=1.0)], forget=True)
    assert await keys(store) == {"telegram", "telegram/chat:9"}


async def keys(store: SlotStore) -> set[str]:
    if isinstance(store, MemorySlots):
        return set(store.rows)
    assert isinstance(store, DatabaseSlots)
    async with store.engine.connect() as conn:
        return set((await conn.execute(select(rate_slots.c.key))).scalars())


async def test_a_hold_moves_every_replicas_next_slot(stores: StoreFactory) -> None:
    clock = Clock()
    one, two = stores(clock), stores(clock)
    limit = RateLimit(per_second=10)
    await take(one, "telegram", limit, [None])
    await hold(one, "telegram", 5.0)
    assert times((await take(two, "telegram", limit, [None])).answers) == [NOON + 5.0]
    await hold(two, "telegram", 1.0)  # a shorter hold never shortens a longer one
    assert times((await take(one, "telegram", limit, [None])).answers) == [NOON + 5.1]


# --- the limiter: batches, the clock offset, the contract ----------------------------------------


async def test_two_limiters_on_one_key_interleave_without_exceeding_the_rate(
    stores: StoreFactory,
) -> None:
    """Two replicas in one process (so their slots can be compared on one monotonic clock), each
    with ten sends waiting at once, on the real clock of the store."""
    limit = RateLimit(per_second=20)
    replicas = [Limiter(stores(None), "k", limit, name="test") for _ in range(2)]
    started = time.monotonic()
    slots = await asyncio.gather(*(r.when() for r in replicas for _ in range(10)))
    ordered = sorted(slots)
    # each limiter maps the store's clock onto this process's to within half a round trip
    assert min(b - a for a, b in itertools.pairwise(ordered)) >= limit.interval - 0.02
    assert ordered[-1] - ordered[0] >= 19 * limit.interval - 0.02
    assert ordered[0] - started < 1.0  # the first send did not wait for the batch to fill
    for replica in replicas:
        await replica.aclose()


async def test_a_chat_keeps_its_gap_across_limiters(stores: StoreFactory) -> None:
    limit = RateLimit(per_second=100)
    one, two = (Limiter(stores(None), "telegram", limit, name="test") for _ in range(2))
    chat = Party(key="chat:7", gap=0.4)
    first, second, other = await asyncio.gather(
        one.when(chat), two.when(chat), two.when(Party(key="chat:8", gap=0.4))
    )
    assert abs(second - first) >= 0.4 - 0.01
    assert other - min(first, second) < 0.3  # another chat did not wait for chat 7
    await one.aclose()
    await two.aclose()


async def test_the_daily_cap_refuses_with_the_time_to_midnight(stores: StoreFactory) -> None:
    clock = Clock(NOON + 11 * 3600)  # 23:00 UTC
    limiter = Limiter(stores(clock), "smtp", RateLimit(per_second=100, daily_cap=3), name="t")
    outcomes = await asyncio.gather(*(limiter.when() for _ in range(5)), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, DailyCapReached)]
    assert len(refused) == 2
    assert all(r.retry_after == pytest.approx(3600) for r in refused)
    with pytest.raises(DailyCapReached):  # known here now: no round trip until midnight
        await limiter.when()
    await limiter.aclose()


async def test_a_flood_hold_delays_this_process_at_once_and_the_others_next(
    stores: StoreFactory,
) -> None:
    limit = RateLimit(per_second=100)
    one, two = (Limiter(stores(None), "telegram", limit, name="test") for _ in range(2))
    await one.when()
    one.hold(0.5)
    held = time.monotonic()
    assert one.held_until >= held + 0.49
    assert await one.when() >= held + 0.5 - LEAD_AND_JITTER
    await wait_until(lambda: later_than(two, held + 0.4), timeout=10)
    await one.aclose()
    await two.aclose()


LEAD_AND_JITTER = 0.06


async def later_than(limiter: Limiter, at: float) -> bool:
    return await limiter.when() > at


async def test_state_survives_a_restart(engine: AsyncEngine) -> None:
    """The row is the record: a restarted process neither forgets today's count nor starts
    with a full burst."""
    clock = Clock()
    limit = RateLimit(per_second=10, burst=10, daily_cap=100)
    before = Limiter(DatabaseSlots(engine, clock), "smtp:persist", limit, name="smtp")
    for _ in range(7):
        await before.when()
    await before.aclose()
    restarted = await take(DatabaseSlots(engine, clock), "smtp:persist", limit, [None] * 10)
    # seven of the burst of ten were used before the restart: three at once, then every 0.1 s
    expected = [NOON] * 3 + [NOON + 0.1 * i for i in range(1, 8)]
    assert times(restarted.answers) == pytest.approx(expected)
    async with engine.connect() as conn:
        count = (await conn.execute(select(rate_slots.c.day_count))).scalar_one()
    assert count == 17


async def test_an_unreachable_database_is_a_transient_error() -> None:
    engine = create_engine("postgresql://nobody@127.0.0.1:1/none")
    limiter = Limiter(DatabaseSlots(engine), "smtp", RateLimit(per_second=10), name="smtp")
    with pytest.raises(TransientError, match="Datenbank nicht erreichbar"):
        await limiter.when()
    await limiter.aclose()
    await engine.dispose()


async def test_the_upgrade_carries_todays_count_over(engine: AsyncEngine) -> None:
    """A daily cap counted by the process-local bucket before the upgrade still holds after it."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: _downgrade(sync, "-1"))
        now = datetime.now(UTC)
        await conn.execute(
            insert(rate_limits),
            [
                {
                    "key": "smtp:mail:587",
                    "tokens": 3.0,
                    "day": now.date().isoformat(),
                    "day_count": 420,
                    "updated_at": now,
                },
                {
                    "key": "smtp:old:25",
                    "tokens": 3.0,
                    "day": "2000-01-01",
                    "day_count": 99,
                    "updated_at": now,
                },
            ],
        )
    await migrate(engine)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(rate_slots.c.key, rate_slots.c.day_count))).all()
    assert rows == [("smtp:mail:587", 420)]
    store = DatabaseSlots(engine)
    limit = RateLimit(per_second=1000, daily_cap=421)
    answers = (await take(store, "smtp:mail:587", limit, [None, None])).answers
    assert [type(a) for a in answers] == [Slot, Capped]


def _downgrade(connection: object, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)
