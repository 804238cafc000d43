"""Superseded by ``ratelimit.Limiter``: the process-local token bucket with its state saved to
``rate_limits``. Nothing in the service uses it; it stays while tests/test_operations.py imports it
(through ``ratelimit``), and goes with those two tests and the ``rate_limits`` table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.delivery.ratelimit import DailyCapReached, RateLimit
from bzi_broadcast.metrics import record_wait
from bzi_broadcast.store.schema import rate_limits


class TokenBucket:
    def __init__(
        self, key: str, limit: RateLimit, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.key = key
        self.limit = limit
        self._clock = clock
        self._tokens = float(limit.burst)
        self._updated = clock()
        self._day = _today()
        self.day_count = 0
        self.waited = 0.0  # seconds spent waiting, for metrics
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for a token; raise ``DailyCapReached`` when today's cap is used up."""
        async with self._lock:
            self._roll_day()
            cap = self.limit.daily_cap
            if cap is not None and self.day_count >= cap:
                raise DailyCapReached(retry_after=_seconds_to_midnight())
            self._refill()
            if self._tokens < 1:
                delay = (1 - self._tokens) / self.limit.per_second
                self.waited += delay
                record_wait(self.key.split(":")[0], delay)
                await asyncio.sleep(delay)
                self._refill()
            self._tokens -= 1
            self.day_count += 1

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(
            float(self.limit.burst), self._tokens + (now - self._updated) * self.limit.per_second
        )
        self._updated = now

    def _roll_day(self) -> None:
        today = _today()
        if today != self._day:
            self._day, self.day_count = today, 0

    def snapshot(self) -> dict[str, object]:
        self._refill()
        return {
            "key": self.key,
            "tokens": self._tokens,
            "day": self._day,
            "day_count": self.day_count,
            "updated_at": datetime.now(UTC),
        }

    def restore(self, tokens: float, day: str, day_count: int, updated_at: datetime) -> None:
        elapsed = max(0.0, (datetime.now(UTC) - updated_at).total_seconds())
        self._tokens = min(float(self.limit.burst), tokens + elapsed * self.limit.per_second)
        self._updated = self._clock()
        if day == _today():
            self._day, self.day_count = day, day_count


async def load_bucket(engine: AsyncEngine, bucket: TokenBucket) -> None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(rate_limits).where(rate_limits.c.key == bucket.key))
        ).one_or_none()
    if row is not None:
        bucket.restore(row.tokens, row.day, row.day_count, row.updated_at)


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def _seconds_to_midnight() -> float:
    now = datetime.now(UTC)
    return 86400 - (now.hour * 3600 + now.minute * 60 + now.second)


async def save_bucket(engine: AsyncEngine, bucket: TokenBucket) -> None:
    values = bucket.snapshot()
    insert = postgresql_insert if engine.dialect.name == "postgresql" else sqlite_insert
    statement = insert(rate_limits).values(values)
    statement = statement.on_conflict_do_update(
        index_elements=[rate_limits.c.key],
        set_={k: statement.excluded[k] for k in ("tokens", "day", "day_count", "updated_at")},
    )
    async with engine.begin() as conn:
        await conn.execute(statement)
