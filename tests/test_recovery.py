"""Recovery in seconds after ``kill -9``: the claims of a dead ``serve`` come back by heartbeat.

The lease is set to 300 s here on purpose: without the heartbeat, the rows the killed process had
claimed stay "sending" for five minutes and these tests fail; with it they return as soon as
another process sees the silence (SQLite: at the restart; PostgreSQL: 3 beats + 1 s).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.delivery.heartbeat import (
    Heartbeat,
    Identity,
    beat,
    claim_the_file,
    reap,
    register,
    silent_limit,
)
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.delivery.outbox import Outbox
from bzi_broadcast.delivery.release import release
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.engine import create_engine, migrate
from bzi_broadcast.store.schema import deliveries, metadata, workers
from bzi_broadcast.testing.smtp import FaultPlan, SmtpCapture

from .test_delivery import example_announcement, wait_until
from .test_reliability import WINDOW, bulk_subscribers, exited, serve

PEOPLE = 800
SMTP_DELAY = 0.02  # per message: with 8 connections at most 400 a second, so a kill lands mid-send
HEARTBEAT = 2.0
HOLD_SECONDS = 5.0  # the server's reply delay while a kill is set up: every batch stays in flight
RECOVERY_SECONDS = 15.0  # the restart, its start-up and handing back the dead process's claims
SETTINGS = {
    "BZI_DELIVERY_LEASE_SECONDS": "300",  # the old way back: five minutes
    "BZI_DELIVERY_HEARTBEAT_SECONDS": str(HEARTBEAT),
}


async def test_a_restart_after_kill_9_sends_the_rest_in_seconds(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    await bulk_subscribers(engine, PEOPLE)
    plan = FaultPlan(delay=SMTP_DELAY)
    async with SmtpCapture(plan) as smtp:
        announcement_id = await announce(engine)
        process = serve(database_url, smtp.port, tmp_path, **SETTINGS)
        await wait_until(partial(_received, smtp, PEOPLE // 5), timeout=120, interval=0.02)
        rate = len(smtp.received) / (datetime.now(UTC) - smtp.received[0].at).total_seconds()
        stranded = await kill_mid_batch([process], process, plan, engine)
        remaining = PEOPLE - len({r.recipient for r in smtp.received})
        budget = RECOVERY_SECONDS + 2 * remaining / rate  # generous: twice the time they need
        restarted = time.monotonic()
        process = serve(database_url, smtp.port, tmp_path, **SETTINGS)
        try:
            await wait_until(partial(_everyone, smtp), timeout=budget, interval=0.1)
            took = time.monotonic() - restarted
            await wait_until(lambda: _sent(engine, announcement_id), timeout=60)
        finally:
            process.send_signal(signal.SIGTERM)
            assert await exited(process) == 0
    print(
        f"\nrecovery ({engine.dialect.name}): {stranded} rows claimed by the killed process, "
        f"{remaining} to send at {rate:.0f}/s; everyone had the mail {took:.1f} s after the "
        f"restart (budget {budget:.1f} s, lease 300 s)"
    )
    assert stranded > 0  # the kill came while rows were claimed: the case this is about
    assert_everyone_once_but_the_window(smtp)
    assert await worker_rows(engine) == 0  # the dead process's row went, the clean stop's too


async def test_a_replica_takes_over_the_claims_of_one_killed(
    pg_engine: AsyncEngine, pg_database_url: str, tmp_path: Path
) -> None:
    """PostgreSQL: two ``serve``; one gets ``kill -9`` mid-send and is not restarted. The other
    hands its claims back within a few beats and sends them."""
    engine = pg_engine
    await bulk_subscribers(engine, PEOPLE)
    processes: list[subprocess.Popen[bytes]] = []
    plan = FaultPlan(delay=SMTP_DELAY)
    async with SmtpCapture(plan) as smtp:
        announcement_id = await announce(engine)
        try:
            for _ in range(2):
                processes.append(serve(pg_database_url, smtp.port, tmp_path, **SETTINGS))
            await wait_until(partial(_received, smtp, PEOPLE // 5), timeout=120, interval=0.02)
            victim, survivor = processes
            stranded = await kill_mid_batch(processes, victim, plan, engine)
            killed = time.monotonic()
            await wait_until(lambda: _none_claimed(engine, victim.pid), timeout=60, interval=0.1)
            took = time.monotonic() - killed
            await wait_until(partial(_everyone, smtp), timeout=300)
            await wait_until(lambda: _sent(engine, announcement_id), timeout=60)
            survivor.send_signal(signal.SIGTERM)
            assert await exited(survivor) == 0
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
    limit = silent_limit(HEARTBEAT).total_seconds() + HEARTBEAT  # silence, then the next look
    print(
        f"\ntake-over: {stranded} rows claimed by the killed replica came back {took:.1f} s "
        f"after the kill (silence allowed {silent_limit(HEARTBEAT).total_seconds():.0f} s)"
    )
    assert stranded > 0
    assert took <= limit + 5  # a few heartbeats, not the 300 s lease (5 s: a busy machine)
    assert_everyone_once_but_the_window(smtp)
    logs = [log.read_text(errors="replace") for log in tmp_path.glob("serve-*.log")]
    assert not any("Traceback" in text for text in logs)
    handed_back = "claims of a silent worker handed back worker_id="
    assert any(handed_back in text and f"-{victim.pid}-" in text for text in logs)


async def kill_mid_batch(
    processes: list[subprocess.Popen[bytes]],
    victim: subprocess.Popen[bytes],
    plan: FaultPlan,
    engine: AsyncEngine,
) -> int:
    """``kill -9`` the victim while every process surely has rows claimed: the server holds its
    replies meanwhile (a kill between two batches would find nothing claimed, and prove nothing).
    The rows the victim left claimed."""
    plan.delay = HOLD_SECONDS
    try:
        await wait_until(partial(_all_claim, engine, processes), timeout=60, interval=0.02)
        victim.send_signal(signal.SIGKILL)
        await exited(victim)
    finally:
        plan.delay = SMTP_DELAY
    return await claimed(engine, pid=victim.pid)


def assert_everyone_once_but_the_window(smtp: SmtpCapture) -> None:
    """Every recipient got it; twice only what was in flight at the kill (at least once)."""
    counts = Counter(r.recipient for r in smtp.received)
    assert set(counts) == {f"r{i}@example.org" for i in range(PEOPLE)}
    assert sum(n - 1 for n in counts.values()) <= WINDOW


@pytest.fixture
async def pg_engine(pg_database_url: str) -> AsyncIterator[AsyncEngine]:
    """The PostgreSQL database of this session, migrated and empty (two processes need it)."""
    engine = create_engine(pg_database_url)
    await migrate(engine)
    async with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(table.delete())
    yield engine
    await engine.dispose()


async def announce(engine: AsyncEngine) -> int:
    return await Announcements(engine).create(
        example_announcement(), actor="test", status=S.SCHEDULED, publish_at=datetime.now(UTC)
    )


async def claimed(engine: AsyncEngine, pid: int | None = None) -> int:
    """Rows in a worker's hands (of the process ``pid``, if given)."""
    query = select(func.count()).where(deliveries.c.status == "sending")
    if pid is not None:
        query = query.where(deliveries.c.worker.like(f"%-{pid}-%"))
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def worker_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(workers))).scalar_one())


async def _received(smtp: SmtpCapture, count: int) -> bool:
    return len(smtp.received) >= count


async def _everyone(smtp: SmtpCapture) -> bool:
    return len({r.recipient for r in smtp.received}) >= PEOPLE


async def _sent(engine: AsyncEngine, announcement_id: int) -> bool:
    return (await Announcements(engine).get(announcement_id)).status == S.SENT


async def _all_claim(engine: AsyncEngine, processes: list[subprocess.Popen[bytes]]) -> bool:
    return all([await claimed(engine, pid=p.pid) > 0 for p in processes])


async def _none_claimed(engine: AsyncEngine, pid: int) -> bool:
    return await claimed(engine, pid=pid) == 0


# --- the heartbeat's parts ----------------------------------------------------------------------


def identity(name: str) -> Identity:
    return Identity(worker_id=f"host-{name}-abc123", host="host", pid=1)


async def claim_all(engine: AsyncEngine, worker_id: str) -> int:
    outbox = Outbox(engine, worker_id=worker_id, lease=timedelta(minutes=5))
    return len(await outbox.claim("email", 100))


async def make_silent(engine: AsyncEngine, worker_id: str, seconds: float) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(workers)
            .where(workers.c.worker_id == worker_id)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


async def test_the_claims_of_a_silent_worker_go_back_and_its_row_goes(
    engine: AsyncEngine,
) -> None:
    dead, alive = identity("dead"), identity("alive")
    await bulk_subscribers(engine, 5)
    await release(engine, await announce(engine))
    for who in (dead, alive):
        await register(engine, who, HEARTBEAT)
    assert await claim_all(engine, dead.worker_id) == 5
    assert await reap(engine, alive=alive.worker_id) == {}  # beaten just now: alive
    await make_silent(engine, dead.worker_id, silent_limit(HEARTBEAT).total_seconds() + 1)
    assert await reap(engine, alive=alive.worker_id) == {dead.worker_id: 5}
    assert await claimed(engine) == 0
    assert await worker_rows(engine) == 1  # the live one's
    assert not await beat(engine, dead.worker_id)  # a frozen process learns it was reaped
    assert await beat(engine, alive.worker_id)


async def test_a_worker_never_reaps_itself(engine: AsyncEngine) -> None:
    me = identity("me")
    await register(engine, me, HEARTBEAT)
    await make_silent(engine, me.worker_id, 3600)
    assert await reap(engine, alive=me.worker_id) == {}
    assert await worker_rows(engine) == 1


async def test_sqlite_hands_back_every_earlier_claim_at_start(tmp_path: Path) -> None:
    """One serving process per SQLite file: whatever is claimed when it starts was left by an
    earlier one, however fresh that one's last beat."""
    engine = create_engine(f"sqlite:///{tmp_path / 'one.sqlite3'}")
    await migrate(engine)
    try:
        earlier, now = identity("earlier"), identity("now")
        await bulk_subscribers(engine, 4)
        await release(engine, await announce(engine))
        await register(engine, earlier, HEARTBEAT)
        assert await claim_all(engine, earlier.worker_id) == 4
        await register(engine, now, HEARTBEAT)
        assert await claim_the_file(engine, now) == 4
        assert await claimed(engine) == 0
        assert await worker_rows(engine) == 1
    finally:
        await engine.dispose()


async def test_the_heartbeat_beats_in_its_thread_and_the_stop_deletes_its_row(
    engine: AsyncEngine,
) -> None:
    me = identity("me")
    heartbeat = Heartbeat(engine.url.render_as_string(hide_password=False), me, interval=0.1)
    await heartbeat.start(engine)
    first = await heartbeat_at(engine, me.worker_id)
    await wait_until(lambda: _beaten_since(engine, me.worker_id, first), timeout=10)
    await heartbeat.stop(engine)
    assert await worker_rows(engine) == 0
    assert not any(t.name.startswith("heartbeat-") and t.is_alive() for t in threading.enumerate())


async def test_a_failing_beat_is_logged_once_and_tried_again(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """The database away for three beats: one warning, then one line when it answers again."""
    caplog.set_level(logging.INFO, logger="bzi_broadcast.delivery.heartbeat")
    me = identity("me")
    await register(engine, me, HEARTBEAT)
    heartbeat = Heartbeat("unused", me, interval=0.5)
    away = create_engine("postgresql://postgres@127.0.0.1:1/nowhere")  # nothing listens there
    try:
        for _ in range(3):
            await heartbeat._round(away)
    finally:
        await away.dispose()
    await heartbeat._round(engine)
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("heartbeat ")]
    assert messages == [
        f"heartbeat failed worker_id={me.worker_id} (trying again every 0.5 s)",
        f"heartbeat restored worker_id={me.worker_id}",
    ]


async def heartbeat_at(engine: AsyncEngine, worker_id: str) -> datetime:
    async with engine.connect() as conn:
        query = select(workers.c.heartbeat_at).where(workers.c.worker_id == worker_id)
        at: datetime = (await conn.execute(query)).scalar_one()
        return at


async def _beaten_since(engine: AsyncEngine, worker_id: str, since: datetime) -> bool:
    return await heartbeat_at(engine, worker_id) > since
