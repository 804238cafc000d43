"""Transactions that PostgreSQL may abort for concurrency, run again after a jittered pause.

PostgreSQL breaks a deadlock by aborting one of the transactions in it (SQLSTATE 40P01) and, at
REPEATABLE READ or SERIALIZABLE, refuses a transaction whose snapshot went stale (40001). Both
say "run the whole transaction again": the work was rolled back and nothing of it is visible. The
delivery store takes its row locks in one order (by id) so deadlocks should not happen; this is
the net under that rule, for locks taken elsewhere (an erasure, an operator's SQL).

SQLite has no such errors: a writer waits for the other's lock for ``busy_timeout`` (30 s, see
``engine._sqlite_pragmas``), and "database is locked" after that is an overload, not a race.
SQLAlchemy's pysqlite driver opens a transaction only at the first write, so a transaction never
upgrades a stale read snapshot to a write (the one case busy_timeout does not cover).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)
T = TypeVar("T")

DEADLOCK = "40P01"
SERIALIZATION_FAILURE = "40001"
RETRYABLE = frozenset({DEADLOCK, SERIALIZATION_FAILURE})


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Full jitter: a random pause below a ceiling that doubles per attempt, so two transactions
    that just collided do not meet again at the same moment."""

    attempts: int = 8
    base_delay: float = 0.02
    max_delay: float = 1.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The pause after failed attempt ``attempt`` (1, 2, …)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return (rng or random).uniform(ceiling / 4, ceiling)


DEFAULT_BACKOFF = Backoff()


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error (asyncpg's, as SQLAlchemy wraps it), else None."""
    original = getattr(exc, "orig", None)
    return getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and sqlstate(exc) in RETRYABLE


async def retrying(
    engine: AsyncEngine,
    fn: Callable[[AsyncConnection], Awaitable[T]],
    *,
    backoff: Backoff = DEFAULT_BACKOFF,
) -> T:
    """Run ``fn(conn)`` in a transaction; run it again, in a new one, when PostgreSQL aborted it
    for a deadlock or a serialization failure. ``fn`` must do nothing but database work, since
    whatever else it did would happen twice. Other errors, and the last failure, propagate."""
    attempt = 1
    while True:
        try:
            async with engine.begin() as conn:
                return await fn(conn)
        except DBAPIError as exc:
            if attempt >= backoff.attempts or not is_retryable(exc):
                raise
            pause = backoff.delay(attempt)
            log.warning(
                "transaction retried sqlstate=%s attempt=%s pause=%.3f operation=%s",
                sqlstate(exc),
                attempt,
                pause,
                getattr(fn, "__qualname__", type(fn).__name__),
            )
        await asyncio.sleep(pause)  # waiting is the point: the other transaction finishes
        attempt += 1
