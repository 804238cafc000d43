"""Scale-out: two ``bzi-broadcast serve`` processes on one PostgreSQL database send one
announcement to 10,000 people on every channel, through one SMTP capture, one local Mastodon
server and one local Telegram Bot API server, all running in this test's process.

Asserted: every email and every Telegram message arrives once, the Mastodon thread is posted once,
the announcement is released once, and at no moment do two processes poll the bot. At about 20 %
of the emails the process that polls gets SIGTERM: it exits 0 within the grace period, the other
process takes over polling and finishes the send, and no row is left queued or sending.

The Telegram server listens on one port per process (one server, one record, two addresses), so
it can tell which process made each call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.channels.base import Receipt
from bzi_broadcast.content import load_announcement
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.delivery.lifecycle import DeliveryStatus
from bzi_broadcast.delivery.outbox import Claimed, Outbox, Outcome
from bzi_broadcast.delivery.release import email_fan_out, release, telegram_fan_out
from bzi_broadcast.delivery.worker import Worker
from bzi_broadcast.render import Renderer
from bzi_broadcast.store.announcements import AnnouncementRecord, Announcements
from bzi_broadcast.store.engine import create_engine, migrate
from bzi_broadcast.store.schema import announcement_events, deliveries, subscribers
from bzi_broadcast.testing.mastodon import MastodonServer
from bzi_broadcast.testing.smtp import SmtpCapture
from bzi_broadcast.testing.telegram import Limits, TelegramServer

from .conftest import EXAMPLE, PG_ADMIN_URL, _postgres_available, require_or_skip
from .test_delivery import wait_until
from .test_reliability import exited, serve

T = TypeVar("T")
PEOPLE = 10_000
FIRST_CHAT = 500_000_001
TOKEN = "123456:SCALE-TOKEN"
MASTODON_TOKEN = "scale-secret"
# The shortest grace period an operator meets: `docker stop` waits 10 s before SIGKILL (our
# docker-compose.yml grants 60 s).
GRACE_SECONDS = 10.0
# The send takes about 70 s on two idle cores, minutes on cores shared with other test runs:
# the waits below fail when nothing moves for this long, not after a fixed time.
STALL_SECONDS = 30.0


@pytest.fixture
async def fresh_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test alone, dropped afterwards."""
    require_or_skip(_postgres_available(), "PostgreSQL at 127.0.0.1:5432")
    name = f"bzi_scale_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def fresh_engine(fresh_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(fresh_database)
    await migrate(engine)
    yield engine
    await engine.dispose()


# --- the Telegram server, one address per process --------------------------------------------


@dataclass
class _Poll:
    process: int
    request: web.Request


@dataclass
class Frontends:
    """One ``TelegramServer`` on one port per process. Records which process sent each
    getUpdates, and counts the getUpdates that arrived while a long poll of the *other* process
    was still open (two pollers at once)."""

    api: TelegramServer
    ports: list[int] = field(default_factory=list)
    callers: set[int] = field(default_factory=set)  # the processes that called at all
    polls: list[int] = field(default_factory=list)  # the process of each getUpdates, in order
    overlaps: int = 0
    _open: list[_Poll] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    async def start(self, processes: int) -> None:
        app = self.api.app()
        app.middlewares.append(self._watch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        for _ in range(processes):
            await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.ports = [int(address[1]) for address in self._runner.addresses]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def base_url(self, process: int) -> str:
        return f"http://127.0.0.1:{self.ports[process]}/bot"

    @web.middleware
    async def _watch(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.transport is None:
            return await handler(request)
        process = self.ports.index(request.transport.get_extra_info("sockname")[1])
        self.callers.add(process)
        if request.match_info.get("method") != "getUpdates":
            return await handler(request)
        if any(p.process != process and _connected(p.request) for p in self._open):
            self.overlaps += 1
        self.polls.append(process)
        poll = _Poll(process, request)
        self._open.append(poll)
        try:
            return await handler(request)
        finally:
            self._open.remove(poll)

    def handovers(self) -> list[int]:
        """The pollers in turn: [0, 1] when process 0 polled, then process 1."""
        return [p for i, p in enumerate(self.polls) if i == 0 or self.polls[i - 1] != p]


def _connected(request: web.Request) -> bool:
    """A long poll whose client left is no poller any more (its answer would go nowhere)."""
    return request.transport is not None and not request.transport.is_closing()


# --- the test ----------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_two_processes_share_a_10k_send_and_one_stops_mid_send(
    fresh_engine: AsyncEngine, fresh_database: str, tmp_path: Path
) -> None:
    engine, database_url = fresh_engine, fresh_database
    started = time.monotonic()
    await people(engine, PEOPLE)
    telegram = Frontends(
        TelegramServer(token=TOKEN, accept_private=True, limits=Limits(per_second=100_000))
    )
    await telegram.start(2)
    mastodon = MastodonServer(token=MASTODON_TOKEN)
    mastodon_http = TestServer(mastodon.app(), host="127.0.0.1")
    await mastodon_http.start_server()
    mastodon_url = f"http://127.0.0.1:{mastodon_http.port}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        async with SmtpCapture() as smtp:
            for process in range(2):
                env = environment(telegram.base_url(process), mastodon_url)
                processes.append(serve(database_url, smtp.port, tmp_path, **env))
            await wait_until(lambda: _ready(telegram), timeout=120)

            announcement_id = await Announcements(engine).create(
                load_announcement(EXAMPLE),
                actor="test",
                status=S.SCHEDULED,
                publish_at=datetime.now(UTC),
            )
            release_started = time.monotonic()
            arrived = partial(_arrived, smtp, telegram)
            await while_progressing(partial(_at_least, smtp, PEOPLE // 5), arrived, interval=0.02)
            stopped, survivor = telegram.polls[-1], 1 - telegram.polls[-1]
            at_stop = (len(smtp.received), len(telegram.api.sent))
            processes[stopped].send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert await exited(processes[stopped], timeout=GRACE_SECONDS) == 0
            stop_took = time.monotonic() - signalled

            await wait_until(lambda: _polled_by(telegram, survivor), timeout=30)
            finished = await while_progressing(partial(_finished, engine, announcement_id), arrived)
            send_took = time.monotonic() - release_started
            processes[survivor].send_signal(signal.SIGTERM)
            assert await exited(processes[survivor], timeout=GRACE_SECONDS) == 0
    finally:
        for child in processes:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        await mastodon_http.close()
        await telegram.close()

    print(
        f"\nscale-out: {PEOPLE} people, send {send_took:.1f} s, SIGTERM at "
        f"{at_stop[0]} emails / {at_stop[1]} Telegram messages, exit after {stop_took:.1f} s, "
        f"whole test {time.monotonic() - started:.1f} s"
    )
    assert finished == S.SENT
    assert at_stop[0] < PEOPLE and at_stop[1] < PEOPLE  # the stop came mid-send on both
    assert_every_email_once(smtp)
    assert_every_chat_once(telegram.api)
    assert_thread_once(mastodon)
    # one poller at any moment: the stopped process polled, then only the survivor
    assert telegram.handovers() == [stopped, survivor]
    assert telegram.overlaps == 0
    assert telegram.api.conflicts == 0
    # released once; every row sent at its first attempt; both processes sent
    assert await transitions(engine, announcement_id) == [
        (None, "scheduled"),
        ("scheduled", "sending"),
        ("sending", "sent"),
    ]
    assert await row_states(engine, announcement_id) == {("sent", 1): 2 * PEOPLE + 1}
    senders = await email_senders(engine, announcement_id)
    pids = [p.pid for p in processes]
    assert all(any(of_process(w, pid) for pid in pids) for w in senders), senders
    assert all(any(of_process(w, pid) for w in senders) for pid in pids), senders
    for log in tmp_path.glob("serve-*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log


def assert_every_email_once(smtp: SmtpCapture) -> None:
    counts = Counter(r.recipient for r in smtp.received)
    assert set(counts) == {f"p{i}@example.org" for i in range(PEOPLE)}
    assert max(counts.values()) == 1
    assert len(smtp.received) == PEOPLE


def assert_every_chat_once(api: TelegramServer) -> None:
    """Telegram is at least once in general (a send whose answer is lost is repeated); with
    every answer arriving and a clean SIGTERM, whose sends in flight finish, it is exactly once."""
    expected = Renderer().telegram(load_announcement(EXAMPLE)).messages
    methods = ["sendPhoto" if m.photo else "sendMessage" for m in expected]
    chats: dict[int, list[str]] = {}
    for sent in api.sent:
        chats.setdefault(sent.chat_id, []).append(sent.method)
    assert set(chats) == set(range(FIRST_CHAT, FIRST_CHAT + PEOPLE))
    twice = {chat: sent for chat, sent in chats.items() if sent != methods}
    assert not twice, f"{len(twice)} chats, e.g. {next(iter(twice.items()), None)}"


def assert_thread_once(mastodon: MastodonServer) -> None:
    """Each part posted once, with a key of its own, answering the part before it."""
    posts = Renderer().mastodon(load_announcement(EXAMPLE)).posts
    thread = mastodon.thread()
    assert [s["text"] for s in thread] == [p.text for p in posts]
    assert all(thread[i]["in_reply_to_id"] == thread[i - 1]["id"] for i in range(1, len(thread)))
    keys = [
        h.get("Idempotency-Key") for _m, path, h in mastodon.calls if path == "/api/v1/statuses"
    ]
    assert len(keys) == len(posts) and None not in keys and len(set(keys)) == len(posts)


async def test_a_stopping_worker_hands_back_only_its_own_channels_claims(
    engine: AsyncEngine,
) -> None:
    """Found by the test above: the email worker, done first at SIGTERM, handed back the rows the
    Telegram worker of the same process was still sending, and the other replica sent them again.
    """
    await people(engine, 3)
    announcement_id = await Announcements(engine).create(
        load_announcement(EXAMPLE), actor="t", status=S.SCHEDULED, publish_at=datetime.now(UTC)
    )
    fan_outs = {"email": email_fan_out, "telegram": telegram_fan_out([])}
    await release(engine, announcement_id, fan_outs=fan_outs)
    outbox = Outbox(engine, worker_id="host-1-a", lease=timedelta(minutes=5))
    assert len(await outbox.claim("email", 10)) == 3
    assert len(await outbox.claim("telegram", 10)) == 3
    assert await outbox.release_mine("email") == 3
    counts = await outbox.counts(announcement_id)
    assert (counts["email"].queued, counts["email"].sending) == (3, 0)
    assert (counts["telegram"].queued, counts["telegram"].sending) == (0, 3)


def environment(telegram_url: str, mastodon_url: str) -> dict[str, str]:
    """Settings for one process: every channel on, limits raised so 10,000 go through fast."""
    return {
        # A claimed row returns to the queue when its lease runs out: with live workers that must
        # never happen, or another process sends it again (the reliability tests use 3 s, for
        # SIGKILL). SIGTERM hands the claims back at once.
        "BZI_DELIVERY_LEASE_SECONDS": "120",
        "BZI_TELEGRAM_ENABLED": "true",
        "BZI_TELEGRAM_TOKEN": TOKEN,
        "BZI_TELEGRAM_BASE_URL": telegram_url,
        "BZI_TELEGRAM_PER_SECOND": "100000",
        "BZI_MASTODON_ENABLED": "true",
        "BZI_MASTODON_BASE_URL": mastodon_url,
        "BZI_MASTODON_ACCESS_TOKEN": MASTODON_TOKEN,
    }


async def people(engine: AsyncEngine, count: int) -> None:
    """Confirmed subscribers with an email address and a Telegram chat each."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(subscribers),
            [
                {
                    "email": f"p{i}@example.org",
                    "telegram_chat_id": FIRST_CHAT + i,
                    "language": "de",
                    "status": "active",
                    "source": "test",
                    "created_at": now,
                    "updated_at": now,
                    "confirmed_at": now,
                    "consent_version": "2026-11",
                }
                for i in range(count)
            ],
        )


async def transitions(engine: AsyncEngine, announcement_id: int) -> list[tuple[str | None, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(announcement_events.c.from_status, announcement_events.c.to_status)
            .where(announcement_events.c.announcement_id == announcement_id)
            .order_by(announcement_events.c.id)
        )
        return [(a, b) for a, b in rows]


async def row_states(engine: AsyncEngine, announcement_id: int) -> dict[tuple[str, int], int]:
    """Delivery rows by (status, attempts)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(deliveries.c.status, deliveries.c.attempts, func.count())
            .where(deliveries.c.announcement_id == announcement_id)
            .group_by(deliveries.c.status, deliveries.c.attempts)
        )
        return {(str(status), int(attempts)): int(n) for status, attempts, n in rows}


async def email_senders(engine: AsyncEngine, announcement_id: int) -> Counter[str | None]:
    """Sent emails per worker id (``host-pid-…``)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(deliveries.c.worker, func.count())
            .where(
                deliveries.c.announcement_id == announcement_id,
                deliveries.c.channel == "email",
                deliveries.c.status == "sent",
            )
            .group_by(deliveries.c.worker)
        )
        return Counter({worker: int(n) for worker, n in rows})


def of_process(worker: str | None, pid: int) -> bool:
    return worker is not None and f"-{pid}-" in worker


async def _ready(telegram: Frontends) -> bool:
    """Both processes run: each has called the Bot API (the bot starts after the workers do),
    and one of them polls."""
    return telegram.callers == {0, 1} and bool(telegram.polls)


async def while_progressing(
    done: Callable[[], Awaitable[T]],
    progress: Callable[[], Awaitable[int]],
    interval: float = 0.2,
) -> T:
    """Like ``wait_until``, but fails when ``progress`` (a count) has not grown for
    ``STALL_SECONDS`` instead of after a fixed time."""
    last, moved_at = -1, time.monotonic()
    while not (result := await done()):
        count = await progress()
        if count > last:
            last, moved_at = count, time.monotonic()
        elif time.monotonic() - moved_at > STALL_SECONDS:
            pytest.fail(f"stalled for {STALL_SECONDS} s at {count}")
        await asyncio.sleep(interval)
    return result


async def _arrived(smtp: SmtpCapture, telegram: Frontends) -> int:
    return len(smtp.received) + len(telegram.api.sent)


async def _at_least(smtp: SmtpCapture, count: int) -> bool:
    return len(smtp.received) >= count


async def _polled_by(telegram: Frontends, process: int) -> bool:
    return bool(telegram.polls) and telegram.polls[-1] == process


async def _finished(engine: AsyncEngine, announcement_id: int) -> S | None:
    status = (await Announcements(engine).get(announcement_id)).status
    return None if status in (S.SCHEDULED, S.SENDING) else status


class _Accepting:
    """A channel that is never asked to send here (every row is claimed already)."""

    name = "email"
    concurrency = 1

    def prepare(self, record: AnnouncementRecord) -> object:
        return record

    async def send(self, prepared: object, delivery: Claimed) -> Receipt:
        raise AssertionError("nothing is queued, so nothing is sent")

    async def aclose(self) -> None:
        return None


class _SlowOutbox(Outbox):
    """An outbox whose writes of outcomes take a while, so a stop can land in the middle."""

    def __init__(self, engine: AsyncEngine, *, worker_id: str, lease: timedelta) -> None:
        super().__init__(engine, worker_id=worker_id, lease=lease)
        self.writing = asyncio.Event()  # one per test: an event set by another would not wait

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        self.writing.set()
        await asyncio.sleep(0.5)  # the write in progress that stopping cancels
        await super().record(outcomes)


async def test_outcomes_being_written_when_a_worker_stops_are_not_lost(
    engine: AsyncEngine,
) -> None:
    """Found by the test above on a loaded machine: stopping cancelled the periodic flush in the
    middle of writing a batch of outcomes; the batch was dropped, the rows it described were
    handed back as unsent, and the other replica sent those Telegram messages again."""
    await people(engine, 3)
    announcement_id = await Announcements(engine).create(
        load_announcement(EXAMPLE), actor="t", status=S.SCHEDULED, publish_at=datetime.now(UTC)
    )
    await release(engine, announcement_id, fan_outs={"email": email_fan_out})
    outbox = _SlowOutbox(engine, worker_id="host-1-a", lease=timedelta(minutes=5))
    claimed = await outbox.claim("email", 10)
    worker = Worker(_Accepting(), outbox, Announcements(engine))
    now = datetime.now(UTC)
    for item in claimed:  # sent; the outcomes wait for the periodic flush
        worker._add(Outcome(id=item.id, status=DeliveryStatus.SENT, attempts=1, at=now))
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(outbox.writing.wait(), 5)
    worker.stop()
    running.cancel()  # as the service does when the grace period is over
    with contextlib.suppress(asyncio.CancelledError):
        await running
    counts = await outbox.counts(announcement_id)
    assert (counts["email"].sent, counts["email"].queued) == (3, 0)
