"""Two replicas sending while staff cancel, expire, pause, resume and retry, for a minute.

Two ``Service``s (two worker ids, two engines, two sweeps) share one database and one SMTP capture
that refuses or drops a few percent of messages at random. A churn task sends one announcement to
a few thousand people after another; each is cancelled or expires while it is being sent, its
failed rows are retried meanwhile, and the email channel is paused and resumed at random.

Consistent, at the end, means:
- no exception: no log record at ERROR, no service task ending with one, and on PostgreSQL no
  deadlock at all (not even one the retrying helper caught: the locks are taken in one order);
- every row in a final state (sent, failed or cancelled), none queued or sending, and every
  announcement cancelled or expired (or sent, had it finished before its cancel);
- a row is sent exactly when the server received that announcement for that recipient, once, and
  its receipt names that very message: no row marked sent that the server never got, no message
  for a row that ended cancelled or failed, nothing received twice (no process dies here);
- a cancel's answer is what the database held: what it counted as sent stays sent, and at most
  what it reported as still in flight was sent afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from functools import partial
from typing import Any

import pytest
from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.delivery import control
from bzi_broadcast.delivery.control import Cancellation
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.service import Service
from bzi_broadcast.staff import workflow
from bzi_broadcast.staff.permissions import Operator
from bzi_broadcast.store.announcements import Announcements, TransitionError
from bzi_broadcast.store.engine import create_engine, migrate
from bzi_broadcast.store.retrying import retrying
from bzi_broadcast.store.schema import announcements, channel_state, deliveries
from bzi_broadcast.testing.smtp import Fault, FaultPlan, Received, SmtpCapture

from .test_delivery import example_announcement, settings_for, wait_until
from .test_store import add_subscribers

CHURN_SECONDS = 60.0  # the minute, on PostgreSQL
SQLITE_CHURN_SECONDS = 20.0  # SQLite serialises writers: no deadlock to find, only "locked"
PEOPLE = 2000
SMTP_DELAY = 0.03  # per message; 2 × 4 connections: about 250 messages a second at most
STAFF = Operator(name="stress")
TITLE = re.compile(r"Stresstest (\d+)\b")


def flaky(seed: int) -> FaultPlan:
    """About 2 % refused for good (554 after DATA: failed, retried by staff), 2 % refused for
    now (451 at RCPT: retried by the worker), 1 % dropped after DATA (unknown outcome: retried;
    the capture keeps nothing). Random per attempt, so failures happen all the way through."""
    rng = random.Random(seed)

    def choose(_recipient: str) -> Fault | None:
        roll = rng.random()
        if roll < 0.02:
            return Fault(stage="data", code=554, times=10**9)
        if roll < 0.04:
            return Fault(stage="rcpt", code=451, times=10**9)
        if roll < 0.05:
            return Fault(stage="drop", times=10**9)
        return None

    return FaultPlan(choose=choose, delay=SMTP_DELAY)


@dataclass
class Churn:
    """What the churn task did, for the assertions and the summary line."""

    fates: dict[int, str] = field(default_factory=dict)  # id → "cancel", "expire", "finish"
    cancelled: dict[int, Cancellation] = field(default_factory=dict)  # what each cancel answered
    titles: dict[int, int] = field(default_factory=dict)  # announcement id → title number
    actions: Counter[str] = field(default_factory=Counter)


class Failures(logging.Handler):
    """Every record at ERROR, and every transaction retried for a deadlock."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[logging.LogRecord] = []
        self.deadlocks: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors.append(record)
        elif "transaction retried" in record.getMessage() and "40P01" in record.getMessage():
            self.deadlocks.append(record)


@contextlib.contextmanager
def watching_logs() -> Iterator[Failures]:
    handler = Failures()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


async def test_two_replicas_stay_consistent_under_cancel_retry_and_pause(
    engine: AsyncEngine, database_url: str
) -> None:
    churn_seconds = SQLITE_CHURN_SECONDS if database_url.startswith("sqlite") else CHURN_SECONDS
    await add_subscribers(engine, PEOPLE)
    churn = Churn()
    with watching_logs() as failures:
        async with SmtpCapture(flaky(seed=14)) as smtp:
            settings = settings_for(database_url, smtp.port, window=50, lease_seconds=300.0)
            services = [Service(settings), Service(settings)]
            tasks = [asyncio.create_task(s.run()) for s in services]
            try:
                await wait_until(lambda: _all_ready(services), timeout=60)
                started = time.monotonic()
                await stir(engine, churn, until=started + churn_seconds)
                churned = time.monotonic() - started
                await settle_everything(engine, churn)
            finally:
                for service in services:
                    service.stop()
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            received = list(smtp.received)
    print(
        f"\nreplica stress ({engine.dialect.name}): churn {churned:.1f} s, "
        f"{len(received)} messages, actions {dict(churn.actions)}, "
        f"deadlocks retried {len(failures.deadlocks)}"
    )
    assert outcomes == [None, None]
    assert not failures.errors, [r.getMessage() for r in failures.errors[:5]]
    assert not failures.deadlocks, [r.getMessage() for r in failures.deadlocks[:5]]
    assert min(churn.actions[a] for a in ("cancel", "expire", "pause", "retry")) >= 1
    rows = await delivery_rows(engine)
    assert {row.status for row in rows} <= {"sent", "failed", "cancelled"}
    await assert_final_statuses(engine, churn)
    assert_rows_match_the_server(rows, received, churn)
    assert_cancels_told_the_truth(rows, churn)
    senders = Counter(row.worker for row in rows if row.status == "sent")
    assert {s.worker_id for s in services} <= set(senders), senders  # both replicas sent


async def _all_ready(services: list[Service]) -> bool:
    return all(s.ready.is_set() for s in services)


# --- the churn --------------------------------------------------------------------------------


async def stir(engine: AsyncEngine, churn: Churn, *, until: float) -> None:
    """Rounds until ``until``, one announcement each, cancelled or expiring 0.3–2.5 s into its
    send. Announcements are sent in the order of their release, so a round's announcement is the
    one the workers are on; the next one is queued first, so the workers move on to it while the
    cancel or the expiry is still being settled. Rounds end by time, not by the sending speed
    (the machine may be shared), so the churn lasts ``until`` and not much more."""
    rng = random.Random(1414)
    current = await start(engine, churn, rng)
    while True:
        following = await start(engine, churn, rng) if time.monotonic() < until else None
        await wait_until(partial(_under_way, engine, current), timeout=180)
        await play(engine, churn, current, rng)
        if following is None:
            break
        current = following
    await control.set_paused(engine, "email", False, None)


async def start(engine: AsyncEngine, churn: Churn, rng: random.Random) -> int:
    fate = rng.choice(["cancel", "cancel", "expire"])
    announcement_id = await announce(engine, churn)
    churn.fates[announcement_id] = fate
    return announcement_id


async def play(engine: AsyncEngine, churn: Churn, announcement_id: int, rng: random.Random) -> None:
    """The announcement's fate, with pauses and retries of its failed rows meanwhile."""
    fate = churn.fates[announcement_id]
    if fate == "expire":  # time runs on: it expires in a moment, mid-send
        await expire_soon(engine, announcement_id, rng.uniform(0.3, 1.5))
    ends = time.monotonic() + rng.uniform(0.3, 2.5)
    while not await fate_reached(engine, churn, announcement_id, ends):
        await one_action(engine, announcement_id, rng, churn)


async def fate_reached(
    engine: AsyncEngine, churn: Churn, announcement_id: int, ends: float
) -> bool:
    fate, status = churn.fates[announcement_id], await status_of(engine, announcement_id)
    if fate == "cancel" and time.monotonic() >= ends:
        await cancel(engine, announcement_id, churn)
        return True
    if fate == "expire" and status == S.EXPIRED:
        churn.actions["expire"] += 1
        return True
    return status == S.SENT


async def cancel(engine: AsyncEngine, announcement_id: int, churn: Churn) -> None:
    try:
        churn.cancelled[announcement_id] = await workflow.cancel(engine, announcement_id, STAFF)
    except TransitionError:  # sent completely already (a fast machine)
        churn.fates[announcement_id] = "finish"
    else:
        churn.actions["cancel"] += 1


async def expire_soon(engine: AsyncEngine, announcement_id: int, seconds: float) -> None:
    """Move its end of validity to ``seconds`` from now (as if it had been set so from the start:
    when a round begins is not known beforehand)."""
    expires = datetime.now(UTC) + timedelta(seconds=seconds)
    async with engine.begin() as conn:
        await conn.execute(
            update(announcements)
            .where(announcements.c.id == announcement_id)
            .values(expires_at=expires)
        )


async def one_action(
    engine: AsyncEngine, announcement_id: int, rng: random.Random, churn: Churn
) -> None:
    roll = rng.random()
    if roll < 0.15:
        await control.set_paused(engine, "email", True, "stress test")
        await asyncio.sleep(rng.uniform(0.1, 0.6))  # paused for a while, on purpose
        await control.set_paused(engine, "email", False, None)
        churn.actions["pause"] += 1
    elif roll < 0.4:
        if await retry(engine, announcement_id):
            churn.actions["retry"] += 1
    else:
        await asyncio.sleep(rng.uniform(0.05, 0.2))  # staff think between two clicks


async def retry(engine: AsyncEngine, announcement_id: int) -> int:
    """Retry-failed as staff click it: refused (and harmless) when nothing is left to retry."""
    with contextlib.suppress(TransitionError):
        return await workflow.retry_failed(engine, announcement_id, STAFF)
    return 0


async def _under_way(engine: AsyncEngine, announcement_id: int) -> bool:
    """Some of its messages are claimed or sent: the workers are on it."""
    async with engine.connect() as conn:
        count = await conn.execute(
            select(func.count()).where(
                deliveries.c.announcement_id == announcement_id,
                deliveries.c.status.in_(["sending", "sent"]),
            )
        )
        return int(count.scalar_one()) >= 20


async def announce(engine: AsyncEngine, churn: Churn, expires_at: datetime | None = None) -> int:
    number = len(churn.titles) + 1
    fields: dict[str, object] = {"title": f"Stresstest {number}"}
    if expires_at is not None:
        fields["expires_at"] = expires_at.isoformat()
    announcement_id = await control.queue(
        Announcements(engine),
        example_announcement(**fields),
        at=datetime.now(UTC),
        actor="test",
        allow_past=True,
    )
    churn.titles[announcement_id] = number
    return announcement_id


async def status_of(engine: AsyncEngine, announcement_id: int) -> S:
    return (await Announcements(engine).get(announcement_id)).status


async def settle_everything(engine: AsyncEngine, churn: Churn) -> None:
    """After the churn: the long announcements are retried until sent, and nothing is left in
    the queue or in a worker's hands."""

    async def done() -> bool:
        for announcement_id in churn.fates:
            if await status_of(engine, announcement_id) == S.PARTIALLY_FAILED:
                await retry(engine, announcement_id)
        finals = {await status_of(engine, a) for a in churn.titles}
        open_rows = {r.status for r in await delivery_rows(engine)} & {"queued", "sending"}
        return not open_rows and finals <= {S.SENT, S.CANCELLED, S.EXPIRED}

    await wait_until(done, timeout=180, interval=0.2)


# --- the checks -------------------------------------------------------------------------------


async def delivery_rows(engine: AsyncEngine) -> list[Row]:
    async with engine.connect() as conn:
        result = await conn.execute(
            select(
                deliveries.c.announcement_id,
                deliveries.c.recipient,
                deliveries.c.status,
                deliveries.c.remote_id,
                deliveries.c.worker,
            )
        )
        return [Row(*row) for row in result]


@dataclass(frozen=True)
class Row:
    announcement_id: int
    recipient: str
    status: str
    remote_id: str | None
    worker: str | None


async def assert_final_statuses(engine: AsyncEngine, churn: Churn) -> None:
    expected = {"finish": {S.SENT}, "cancel": {S.CANCELLED}, "expire": {S.EXPIRED, S.SENT}}
    for announcement_id, fate in churn.fates.items():
        assert await status_of(engine, announcement_id) in expected[fate], (announcement_id, fate)
    assert set(churn.cancelled) == {a for a, fate in churn.fates.items() if fate == "cancel"}


def assert_rows_match_the_server(rows: list[Row], received: list[Received], churn: Churn) -> None:
    """Sent ⇔ received once, and the receipt ("… queued as N") is the N-th message received."""
    number_to_id = {number: announcement_id for announcement_id, number in churn.titles.items()}
    parser = BytesHeaderParser(policy=default_policy)
    got: list[tuple[int, str]] = []
    for message in received:
        found = TITLE.search(str(parser.parsebytes(message.data)["Subject"]))
        assert found, "a message of no announcement of this test"
        got.append((number_to_id[int(found.group(1))], message.recipient))
    twice = [pair for pair, n in Counter(got).items() if n > 1]
    assert not twice, twice[:5]
    sent = {(r.announcement_id, r.recipient): r for r in rows if r.status == "sent"}
    assert set(sent) == set(got)
    for pair, row in sent.items():
        assert row.remote_id is not None
        index = int(row.remote_id.rsplit(" ", 1)[1]) - 1
        assert got[index] == pair, (row, got[index])


def assert_cancels_told_the_truth(rows: list[Row], churn: Churn) -> None:
    for announcement_id, answer in churn.cancelled.items():
        sent = sum(1 for r in rows if r.announcement_id == announcement_id and r.status == "sent")
        assert answer.sent <= sent <= answer.sent + answer.in_flight, (announcement_id, answer)


# --- the retrying helper, against a real deadlock -----------------------------------------------


@pytest.fixture
async def pg_engine(pg_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pg_database_url)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(delete(channel_state))
        await conn.execute(
            insert(channel_state),
            [{"channel": c, "paused": False, "changed_at": datetime.now(UTC)} for c in "ab"],
        )
    yield engine
    await engine.dispose()


async def test_retrying_runs_a_deadlock_victim_again(pg_engine: AsyncEngine) -> None:
    """Two transactions lock two rows in opposite orders: PostgreSQL aborts one of them (40P01)
    and ``retrying`` runs it again, so both changes are made and nobody sees the deadlock."""
    first_locked, second_locked = asyncio.Event(), asyncio.Event()

    def crossing(mine: str, other: str, locked: asyncio.Event, wait_for: asyncio.Event) -> Any:
        async def change(conn: AsyncConnection) -> None:
            await conn.execute(_touch(mine))
            locked.set()
            await wait_for.wait()  # the other holds its row now: each waits for the other's
            await conn.execute(_touch(other))

        return change

    with watching_logs() as failures:
        await asyncio.wait_for(
            asyncio.gather(
                retrying(pg_engine, crossing("a", "b", first_locked, second_locked)),
                retrying(pg_engine, crossing("b", "a", second_locked, first_locked)),
            ),
            timeout=30,
        )
    async with pg_engine.connect() as conn:
        reasons = (await conn.execute(select(channel_state.c.reason))).scalars().all()
    assert reasons == ["touched twice", "touched twice"]  # both transactions, each once
    assert len(failures.deadlocks) == 1


def _touch(channel: str) -> Any:
    """The first touch writes "touched", the second "touched twice"."""
    again = case((channel_state.c.reason.is_(None), "touched"), else_="touched twice")
    return update(channel_state).where(channel_state.c.channel == channel).values(reason=again)
