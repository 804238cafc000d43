"""Crash and scale-out: ``bzi-broadcast serve`` as real processes against a real SMTP server.

- SIGKILL in the middle of a 20,000-recipient send, three times, restarting each time: every
  recipient receives the newsletter; duplicates are at most the in-flight window per kill.
- SIGKILL between two parts of a Mastodon thread: the restart continues the thread with the
  stored Idempotency-Keys, and no status is posted twice.
- Two ``serve`` processes on one PostgreSQL database: every message once, released once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.schema import announcement_events, deliveries, subscribers
from bzi_broadcast.testing.mastodon import MastodonServer
from bzi_broadcast.testing.smtp import SmtpCapture

from .test_delivery import example_announcement, wait_until

WINDOW = 100


def serve(
    database_url: str, smtp_port: int, workdir: Path, **extra: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BZI_DATABASE_URL": database_url,
        "BZI_SMTP_PORT": str(smtp_port),
        "BZI_SMTP_POOL_SIZE": "8",
        "BZI_SMTP_RATE_PER_SECOND": "100000",
        "BZI_SMTP_BURST": "1000",
        "BZI_DELIVERY_WINDOW": str(WINDOW),
        "BZI_DELIVERY_POLL_INTERVAL": "0.1",
        "BZI_DELIVERY_SWEEP_INTERVAL": "0.5",
        "BZI_DELIVERY_LEASE_SECONDS": "3",
        "BZI_WEB_PORT": "0",
        **extra,
    }
    log = (workdir / f"serve-{len(list(workdir.glob('serve-*')))}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "bzi_broadcast", "serve"],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=log,
    )


async def bulk_subscribers(engine: AsyncEngine, count: int) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(subscribers),
            [
                {
                    "email": f"r{i}@example.org",
                    "language": "de",
                    "status": "active",
                    "source": "test",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(count)
            ],
        )


async def exited(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """Wait for a child without blocking the loop that runs the SMTP server it talks to."""
    return await asyncio.wait_for(asyncio.to_thread(process.wait), timeout)


async def sent_count(engine: AsyncEngine, announcement_id: int) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count()).where(
                        deliveries.c.announcement_id == announcement_id,
                        deliveries.c.status == "sent",
                    )
                )
            ).scalar_one()
        )


async def status_of(engine: AsyncEngine, announcement_id: int) -> S:
    return (await Announcements(engine).get(announcement_id)).status


async def until(check: Callable[[], Awaitable[object]], timeout: float) -> None:
    await wait_until(check, timeout=timeout, interval=0.1)


async def test_sigkill_mid_send_loses_nothing(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    total = 20_000
    await bulk_subscribers(engine, total)
    async with SmtpCapture() as smtp:
        announcement_id = await Announcements(engine).create(
            example_announcement(), actor="test", status=S.SCHEDULED, publish_at=datetime.now(UTC)
        )
        for _kill in range(3):
            process = serve(database_url, smtp.port, tmp_path)
            target = len(smtp.received) + 2000
            await until(partial(_at_least, smtp, target), timeout=120)
            process.send_signal(signal.SIGKILL)
            await exited(process)
        process = serve(database_url, smtp.port, tmp_path)
        try:
            await until(lambda: _is(engine, announcement_id, S.SENT), timeout=300)
        finally:
            process.send_signal(signal.SIGTERM)
            assert await exited(process) == 0
    counts = Counter(r.recipient for r in smtp.received)
    assert set(counts) == {f"r{i}@example.org" for i in range(total)}
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= 3 * WINDOW
    assert await sent_count(engine, announcement_id) == total


async def test_sigkill_between_two_parts_of_a_mastodon_thread_continues_it(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    from aiohttp.test_utils import TestServer

    from bzi_broadcast.content import load_announcement
    from bzi_broadcast.render import Renderer
    from bzi_broadcast.testing.mastodon import Fault

    from .conftest import EXAMPLE

    api = MastodonServer(token="secret", processing_seconds=0.1)
    # Part 2 is created, then its answer hangs: the process dies with the status posted but its
    # id unknown — the worst moment for a retry without an Idempotency-Key.
    api.inject("POST /api/v1/statuses", Fault(delay=120, after=True, on_call=2))
    http = TestServer(api.app(), host="127.0.0.1")
    await http.start_server()
    mastodon = {
        "BZI_MASTODON_ENABLED": "true",
        "BZI_MASTODON_BASE_URL": f"http://127.0.0.1:{http.port}",
        "BZI_MASTODON_ACCESS_TOKEN": "secret",
    }
    try:
        async with SmtpCapture() as smtp:
            announcement_id = await Announcements(engine).create(
                load_announcement(EXAMPLE),
                actor="test",
                status=S.SCHEDULED,
                publish_at=datetime.now(UTC),
            )
            process = serve(database_url, smtp.port, tmp_path, **mastodon)
            await until(partial(_posted, api, 2), timeout=60)
            process.send_signal(signal.SIGKILL)
            await exited(process)
            process = serve(database_url, smtp.port, tmp_path, **mastodon)
            try:
                await until(lambda: _is(engine, announcement_id, S.SENT), timeout=60)
            finally:
                process.send_signal(signal.SIGTERM)
                assert await exited(process) == 0
    finally:
        await http.close()
    thread = api.thread()
    expected = Renderer().mastodon(load_announcement(EXAMPLE)).posts
    assert [s["text"] for s in thread] == [p.text for p in expected]
    assert len(api.statuses) == len(expected)  # nothing posted twice
    assert all(thread[i]["in_reply_to_id"] == thread[i - 1]["id"] for i in range(1, len(thread)))
    keys = [c[2].get("Idempotency-Key") for c in api.calls if c[1] == "/api/v1/statuses"]
    assert keys[1] == keys[2]  # the restart retried part 2 with the key stored before the crash


async def _posted(api: MastodonServer, count: int) -> bool:
    return len(api.statuses) >= count


async def _at_least(smtp: SmtpCapture, count: int) -> bool:
    return len(smtp.received) >= count


async def _is(engine: AsyncEngine, announcement_id: int, status: S) -> bool:
    return await status_of(engine, announcement_id) == status


async def test_two_processes_on_postgresql_send_once(pg_database_url: str, tmp_path: Path) -> None:
    from bzi_broadcast.store.engine import create_engine, migrate
    from bzi_broadcast.store.schema import metadata

    engine = create_engine(pg_database_url)
    await migrate(engine)
    async with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(table.delete())
    total = 5000
    try:
        await bulk_subscribers(engine, total)
        async with SmtpCapture() as smtp:
            processes = [serve(pg_database_url, smtp.port, tmp_path) for _ in range(2)]
            try:
                announcement_id = await Announcements(engine).create(
                    example_announcement(),
                    actor="test",
                    status=S.SCHEDULED,
                    publish_at=datetime.now(UTC),
                )
                await until(lambda: _is(engine, announcement_id, S.SENT), timeout=180)
            finally:
                for process in processes:
                    process.send_signal(signal.SIGTERM)
                assert [await exited(p) for p in processes] == [0, 0]
        counts = Counter(r.recipient for r in smtp.received)
        assert len(counts) == total
        assert max(counts.values()) == 1
        async with engine.connect() as conn:
            releases = (
                await conn.execute(
                    select(func.count()).where(
                        announcement_events.c.announcement_id == announcement_id,
                        announcement_events.c.to_status == "sending",
                    )
                )
            ).scalar_one()
            workers = (
                await conn.execute(select(func.count(func.distinct(deliveries.c.worker))))
            ).scalar_one()
        assert releases == 1
        assert workers == 2  # both processes took part
    finally:
        await engine.dispose()
