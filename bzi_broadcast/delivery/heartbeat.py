"""Which serving processes are alive, and the claims of those that are not handed back at once.

Each ``serve`` registers a row in ``workers`` at start and beats it every ``heartbeat_seconds``.
Every live process looks at the others on each beat: the claims (rows ``sending`` under its
worker id) of a process silent for more than 3 beats + 1 s go back to the queue, and its row is
deleted. A ``kill -9`` costs seconds, not the lease (which stays as the last resort, for a process
whose beats still arrive but whose workers hang). On SQLite one process serves a file, so a
starting ``serve`` hands back every claim that is not its own at once. A clean stop deletes the
process's own row after its workers returned their claims.

The beats run in a thread of their own, with their own event loop and database connection: a
busy event loop (a large render, a long garbage collection) must not look like a dead process,
or its claims would be sent twice. A failing beat (the database is away) is logged once and
tried again; it never stops the service.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.delivery.outbox import requeue_claims_not_of, requeue_claims_of
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.engine import create_engine
from bzi_broadcast.store.retrying import retrying
from bzi_broadcast.store.schema import workers

log = logging.getLogger(__name__)

SILENT_BEATS = 3  # beats a process may miss before it counts as dead …
SILENT_GRACE = 1.0  # … plus this many seconds (a beat's own time, a slow database)


@dataclass(frozen=True, kw_only=True)
class Identity:
    """One serving process, as ``deliveries.worker`` names it."""

    worker_id: str
    host: str
    pid: int


def silent_limit(heartbeat_seconds: float) -> timedelta:
    """How long a process that beats every ``heartbeat_seconds`` may stay silent."""
    return timedelta(seconds=SILENT_BEATS * heartbeat_seconds + SILENT_GRACE)


async def database_now(conn: AsyncConnection) -> datetime:
    """The database's clock on PostgreSQL (replicas on several hosts compare one clock), this
    host's on SQLite (one host)."""
    if conn.dialect.name == "postgresql":
        now: datetime = (await conn.execute(select(func.now()))).scalar_one()
        return now
    return utcnow()


async def register(engine: AsyncEngine, identity: Identity, heartbeat_seconds: float) -> None:
    """Write (or overwrite) this process's row, beaten now."""

    async def write(conn: AsyncConnection) -> None:
        now = await database_now(conn)
        await conn.execute(delete(workers).where(workers.c.worker_id == identity.worker_id))
        await conn.execute(
            insert(workers).values(
                worker_id=identity.worker_id,
                host=identity.host,
                pid=identity.pid,
                heartbeat_seconds=heartbeat_seconds,
                started_at=now,
                heartbeat_at=now,
            )
        )

    await retrying(engine, write)
    log.info(
        "worker registered worker_id=%s heartbeat_seconds=%s",
        identity.worker_id,
        heartbeat_seconds,
    )


async def beat(engine: AsyncEngine, worker_id: str) -> bool:
    """Mark this process alive; False when its row is gone (another took it for dead)."""

    async def touch(conn: AsyncConnection) -> int:
        now = await database_now(conn)
        query = update(workers).where(workers.c.worker_id == worker_id).values(heartbeat_at=now)
        return (await conn.execute(query)).rowcount

    return bool(await retrying(engine, touch))


async def deregister(engine: AsyncEngine, worker_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(workers).where(workers.c.worker_id == worker_id))


async def reap(engine: AsyncEngine, *, alive: str) -> dict[str, int]:
    """Hand back the claims of every process silent too long (never ``alive``, the caller), then
    delete its row; worker id → rows handed back. The row goes only after its claims, so a reap
    cut short is finished by the next one."""
    async with engine.connect() as conn:
        now = await database_now(conn)
        rows = (await conn.execute(select(workers).where(workers.c.worker_id != alive))).all()
    reaped: dict[str, int] = {}
    for row in rows:
        if now - row.heartbeat_at <= silent_limit(row.heartbeat_seconds):
            continue
        reaped[row.worker_id] = await requeue_claims_of(engine, row.worker_id)
        async with engine.begin() as conn:
            # only if it stayed silent meanwhile: a process that was merely frozen keeps its row
            await conn.execute(
                delete(workers).where(
                    workers.c.worker_id == row.worker_id,
                    workers.c.heartbeat_at == row.heartbeat_at,
                )
            )
        log.warning(
            "claims of a silent worker handed back worker_id=%s host=%s pid=%s rows=%s "
            "silent_seconds=%.1f",
            row.worker_id,
            row.host,
            row.pid,
            reaped[row.worker_id],
            (now - row.heartbeat_at).total_seconds(),
        )
    return reaped


async def claim_the_file(engine: AsyncEngine, identity: Identity) -> int:
    """SQLite, at start: every other claim and worker row was left by an earlier process."""
    returned = await requeue_claims_not_of(engine, identity.worker_id)
    async with engine.begin() as conn:
        await conn.execute(delete(workers).where(workers.c.worker_id != identity.worker_id))
    if returned:
        log.warning("claims of an earlier process handed back rows=%s", returned)
    return returned


class Heartbeat:
    """Register at ``start``, beat and reap in a thread, deregister at ``stop``.

    ``on_reaped`` is called on the caller's event loop when claims came back (to wake the
    workers, so they do not wait for their next poll).
    """

    def __init__(
        self,
        url: str,
        identity: Identity,
        *,
        interval: float,
        on_reaped: Callable[[], object] | None = None,
    ) -> None:
        self._url = url
        self.identity = identity
        self.interval = interval
        self._on_reaped = on_reaped
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False

    async def start(self, engine: AsyncEngine) -> None:
        """Register, hand back what dead processes left, and start beating."""
        await register(engine, self.identity, self.interval)
        if engine.dialect.name == "sqlite":
            await claim_the_file(engine, self.identity)
        else:
            await reap(engine, alive=self.identity.worker_id)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.identity.worker_id}", daemon=True
        )
        self._thread.start()

    async def stop(self, engine: AsyncEngine) -> None:
        """Stop beating and delete the row (call after the workers returned their claims)."""
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10 * self.interval + 10)
        await deregister(engine, self.identity.worker_id)

    def _run(self) -> None:
        """The thread: its own loop and engine, one round per interval until stopped."""
        loop = asyncio.new_event_loop()
        engine = create_engine(self._url)
        try:
            while not self._stopping.wait(self.interval):
                loop.run_until_complete(self._round(engine))
        finally:
            loop.run_until_complete(engine.dispose())
            loop.close()

    async def _round(self, engine: AsyncEngine) -> None:
        try:
            async with asyncio.timeout(SILENT_BEATS * self.interval):
                if not await beat(engine, self.identity.worker_id):
                    log.warning(
                        "worker row gone (taken for dead): registering again worker_id=%s",
                        self.identity.worker_id,
                    )
                    await register(engine, self.identity, self.interval)
                reaped = await reap(engine, alive=self.identity.worker_id)
        except Exception:
            if not self._failing:
                log.warning(
                    "heartbeat failed worker_id=%s (trying again every %s s)",
                    self.identity.worker_id,
                    self.interval,
                    exc_info=True,
                )
            self._failing = True
            return
        if self._failing:
            log.info("heartbeat restored worker_id=%s", self.identity.worker_id)
        self._failing = False
        if any(reaped.values()) and self._on_reaped is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_reaped)
