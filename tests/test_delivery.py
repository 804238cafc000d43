"""The delivery engine end to end against a real SMTP server (aiosmtpd), on SQLite and PostgreSQL.

Faults are injected per recipient; every recipient must end exactly as injected, none lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.channels.base import Receipt
from bzi_broadcast.config import Settings
from bzi_broadcast.content import Announcement, parse_announcement
from bzi_broadcast.delivery import control
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.delivery.outbox import Claimed
from bzi_broadcast.delivery.release import release
from bzi_broadcast.service import Service
from bzi_broadcast.staff import workflow
from bzi_broadcast.staff.permissions import Operator
from bzi_broadcast.store.schema import deliveries, subscribers, suppressions
from bzi_broadcast.testing.smtp import Fault, FaultPlan, SmtpCapture

from .conftest import TEST_SECRET_KEY
from .test_store import add_subscribers

T = TypeVar("T")
TEST_METRICS_TOKEN = "test-metrics-token"
METRICS_AUTH = {"Authorization": f"Bearer {TEST_METRICS_TOKEN}"}


def settings_for(database_url: str, port: int, **delivery: object) -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "database": base.database.model_copy(update={"url": database_url}),
            "web": base.web.model_copy(
                update={"port": 0, "metrics_token": SecretStr(TEST_METRICS_TOKEN)}
            ),
            "security": base.security.model_copy(update={"secret_key": SecretStr(TEST_SECRET_KEY)}),
            "smtp": base.smtp.model_copy(
                update={"port": port, "pool_size": 4, "rate_per_second": 10000, "burst": 1000}
            ),
            "delivery": base.delivery.model_copy(
                update={
                    "poll_interval": 0.05,
                    "flush_interval": 0.05,
                    "retry_base_delay": 0.05,
                    "sweep_interval": 0.5,
                    **delivery,
                }
            ),
        }
    )


async def wait_until(
    check: Callable[[], Awaitable[T]], timeout: float = 30.0, interval: float = 0.05
) -> T:
    """Poll ``check`` (async, returns truthy when done) until it passes or time runs out."""
    async with asyncio.timeout(timeout):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(interval)


async def statuses(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(deliveries.c.recipient, deliveries.c.status))
        return dict(rows.all())


@contextlib.asynccontextmanager
async def serving(service: Service) -> AsyncIterator[str]:
    """Run ``service`` here until the block ends; yields its web server's base URL."""
    task = asyncio.create_task(service.run())
    try:
        await wait_until(lambda: _bound(service), timeout=30)
        yield f"http://127.0.0.1:{service.web_port}"
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)


async def _bound(service: Service) -> bool:
    return service.web_port is not None


async def start_service(
    engine: AsyncEngine, database_url: str, plan: FaultPlan, **delivery: object
) -> tuple[Service, SmtpCapture, asyncio.Task[None]]:
    smtp = await SmtpCapture(plan).start()
    service = Service(settings_for(database_url, smtp.port, **delivery), engine=None)
    task = asyncio.create_task(service.run())
    return service, smtp, task


async def stop_service(service: Service, smtp: SmtpCapture, task: asyncio.Task[None]) -> None:
    service.stop()
    await asyncio.wait_for(task, 30)
    await smtp.stop()


def example_announcement(**fields: object) -> Announcement:
    data = {
        "title": "Newsletter „Test“ ä",
        "blocks": [{"type": "text", "text": "Hallo *Welt*"}],
        **fields,
    }
    return parse_announcement(json.dumps(data), fmt="json")


async def queue_now(engine: AsyncEngine) -> int:
    from bzi_broadcast.store.announcements import Announcements

    return await control.queue(
        Announcements(engine),
        example_announcement(),
        at=datetime.now(UTC),
        actor="test",
        allow_past=True,
    )


async def test_every_recipient_gets_the_newsletter_once(
    engine: AsyncEngine, database_url: str
) -> None:
    await add_subscribers(engine, 120)
    service, smtp, task = await start_service(engine, database_url, FaultPlan())
    try:
        announcement_id = await queue_now(engine)
        await smtp.handler.wait_for(120)
        await wait_until(lambda: _status_is(engine, announcement_id, S.SENT))
    finally:
        await stop_service(service, smtp, task)
    recipients = [r.recipient for r in smtp.received]
    assert sorted(recipients) == sorted(f"person{i}@example.org" for i in range(120))
    message = smtp.received[0].message()
    assert message["Subject"] == "Newsletter „Test“ ä"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/abmelden/" in message["List-Unsubscribe"]
    assert message["To"] == smtp.received[0].recipient


async def _status_is(engine: AsyncEngine, announcement_id: int, status: S) -> bool:
    from bzi_broadcast.store.announcements import Announcements

    return (await Announcements(engine).get(announcement_id)).status == status


async def test_injected_faults_end_exactly_as_injected(
    engine: AsyncEngine, database_url: str
) -> None:
    await add_subscribers(engine, 60)

    def choose(recipient: str) -> Fault | None:
        number = int(recipient.removeprefix("person").split("@")[0])
        if number % 10 == 1:
            return Fault(stage="rcpt", code=451, times=2)  # temporary: retried to success
        if number % 10 == 2:
            return Fault(stage="rcpt", code=550, times=99)  # hard bounce: failed + suppressed
        if number % 10 == 3:
            return Fault(stage="data", code=554, times=99)  # permanent at DATA: failed
        if number % 10 == 4:
            return Fault(stage="drop", times=1)  # connection lost mid-DATA: unknown → retried
        if number % 10 == 5:
            return Fault(stage="data", code=452, times=1)  # temporary at DATA
        return None

    # Half the addresses fail at first: keep the channel from pausing itself in this test.
    service, smtp, task = await start_service(
        engine, database_url, FaultPlan(choose=choose), pause_error_rate=1.0
    )
    try:
        announcement_id = await queue_now(engine)
        await wait_until(lambda: _status_is(engine, announcement_id, S.PARTIALLY_FAILED))
    finally:
        await stop_service(service, smtp, task)
    final = await statuses(engine)
    failed = {f"person{i}@example.org" for i in range(60) if i % 10 in (2, 3)}
    assert {r for r, s in final.items() if s == "failed"} == failed
    assert {r for r, s in final.items() if s == "sent"} == set(final) - failed
    received = [r.recipient for r in smtp.received]
    assert sorted(received) == sorted(set(final) - failed)  # each exactly once
    async with engine.connect() as conn:
        bounced = set(
            (
                await conn.execute(
                    select(subscribers.c.email).where(subscribers.c.status == "bounced")
                )
            ).scalars()
        )
        suppressed = (await conn.execute(select(suppressions.c.email_hash))).all()
        attempts = dict(
            (await conn.execute(select(deliveries.c.recipient, deliveries.c.attempts))).all()
        )
    assert bounced == {f"person{i}@example.org" for i in range(60) if i % 10 == 2}
    assert len(suppressed) == len(bounced)
    assert attempts["person1@example.org"] == 3
    assert attempts["person4@example.org"] == 2


async def test_retry_failed_requeues_and_delivers(engine: AsyncEngine, database_url: str) -> None:
    await add_subscribers(engine, 5)
    plan = FaultPlan(
        choose=lambda r: (
            Fault(stage="data", code=554, times=1) if r == "person3@example.org" else None
        )
    )
    service, smtp, task = await start_service(engine, database_url, plan)
    try:
        announcement_id = await queue_now(engine)
        await wait_until(lambda: _status_is(engine, announcement_id, S.PARTIALLY_FAILED))
        assert await control.retry_failed(engine, announcement_id, actor="test") == 1
        service.workers[0].wake()
        await wait_until(lambda: _status_is(engine, announcement_id, S.SENT))
    finally:
        await stop_service(service, smtp, task)
    assert sorted(r.recipient for r in smtp.received) == sorted(
        f"person{i}@example.org" for i in range(5)
    )


async def test_channel_pauses_when_errors_exceed_the_rate(
    engine: AsyncEngine, database_url: str
) -> None:
    await add_subscribers(engine, 40)
    plan = FaultPlan(choose=lambda r: Fault(stage="rcpt", code=451, times=99))
    service, smtp, task = await start_service(
        engine, database_url, plan, pause_min_samples=10, pause_error_rate=0.5
    )
    try:
        announcement_id = await queue_now(engine)
        paused = await wait_until(lambda: control.paused_channels(engine))
        assert "email" in paused
        assert service.workers[0].paused
        assert smtp.received == []
        plan.choose = lambda r: None  # the mail server is repaired
        await control.set_paused(engine, "email", False, None)
        await wait_until(lambda: _status_is(engine, announcement_id, S.SENT))
    finally:
        await stop_service(service, smtp, task)
    assert len(smtp.received) == 40


async def test_cancel_during_sending_stops_the_rest(engine: AsyncEngine, database_url: str) -> None:
    await add_subscribers(engine, 300)
    plan = FaultPlan(delay=0.02)
    service, smtp, task = await start_service(engine, database_url, plan, window=20)
    try:
        announcement_id = await queue_now(engine)
        await smtp.handler.wait_for(10)
        await workflow.cancel(engine, announcement_id, Operator(name="test"))
        count_at_cancel = len(smtp.received)
        await wait_until(lambda: _no_sending(engine))
    finally:
        await stop_service(service, smtp, task)
    final = await statuses(engine)
    assert list(final.values()).count("cancelled") > 200
    assert len(smtp.received) <= count_at_cancel + 20  # at most the in-flight window more
    assert sum(1 for s in final.values() if s == "sent") == len(smtp.received)


async def _no_sending(engine: AsyncEngine) -> bool:
    return "sending" not in set((await statuses(engine)).values())


async def test_expired_lease_returns_rows_to_the_queue(engine: AsyncEngine) -> None:
    from bzi_broadcast.delivery.outbox import Outbox
    from bzi_broadcast.store.announcements import Announcements

    await add_subscribers(engine, 3)
    announcement_id = await Announcements(engine).create(
        example_announcement(), actor="t", status=S.SCHEDULED, publish_at=datetime.now(UTC)
    )
    await release(engine, announcement_id)
    dead = Outbox(engine, worker_id="dead", lease=timedelta(seconds=1))
    assert len(await dead.claim("email", 10)) == 3
    alive = Outbox(engine, worker_id="alive", lease=timedelta(seconds=60))
    assert await alive.claim("email", 10) == []
    later = datetime.now(UTC) + timedelta(seconds=2)
    assert await alive.requeue_expired_leases(later) == 3
    assert len(await alive.claim("email", 10, now=later)) == 3


async def test_a_worker_outlives_a_database_outage(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Claims fail three times (the database restarts): the worker logs it once, keeps trying,
    and claims again once the database answers; it never ends on its own."""
    from sqlalchemy.exc import OperationalError

    from bzi_broadcast.delivery.outbox import Outbox
    from bzi_broadcast.delivery.worker import Worker, WorkerSettings
    from bzi_broadcast.store.announcements import Announcements

    class Flaky(Outbox):
        calls = 0

        async def claim(
            self, channel: str, limit: int, now: datetime | None = None
        ) -> list[Claimed]:
            self.calls += 1
            if self.calls <= 3:
                raise OperationalError("SELECT", {}, ConnectionRefusedError("database restarting"))
            return await super().claim(channel, limit, now)

    outbox = Flaky(engine, worker_id="w", lease=timedelta(minutes=5))
    caplog.set_level("INFO", logger="bzi_broadcast.delivery.worker")
    worker = Worker(
        _Unused(), outbox, Announcements(engine), settings=WorkerSettings(poll_interval=0.01)
    )
    running = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: _claimed_after_outage(outbox), timeout=10)
        assert not running.done()
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == ["worker round failed channel=email"]
    assert "worker recovered channel=email" in caplog.text


async def _claimed_after_outage(outbox: object) -> bool:
    return getattr(outbox, "calls", 0) >= 5


class _Unused:
    """A channel that is never asked to send (nothing is queued)."""

    name = "email"
    concurrency = 1

    def prepare(self, record: object) -> object:
        return record

    async def send(self, prepared: object, delivery: Claimed) -> Receipt:
        raise AssertionError("nothing is queued, so nothing is sent")

    async def aclose(self) -> None:
        return None


async def test_the_sweep_stops_rows_requeued_after_a_cancel(engine: AsyncEngine) -> None:
    """A send that failed for now after the cancel put its row back in the queue, where nothing
    claims it (the announcement is not sending): the sweep's ``stop_leftovers`` cancels it."""
    from bzi_broadcast.delivery.lifecycle import DeliveryStatus
    from bzi_broadcast.delivery.outbox import Outbox, Outcome
    from bzi_broadcast.store.announcements import Announcements

    await add_subscribers(engine, 3)
    announcement_id = await Announcements(engine).create(
        example_announcement(), actor="t", status=S.SCHEDULED, publish_at=datetime.now(UTC)
    )
    await release(engine, announcement_id)
    outbox = Outbox(engine, worker_id="w", lease=timedelta(minutes=5))
    claimed = await outbox.claim("email", 10)
    cancelled = await workflow.cancel(engine, announcement_id, Operator(name="t"), settle=0)
    assert cancelled.in_flight == 3
    now = datetime.now(UTC)
    await outbox.record(
        [
            Outcome(id=c.id, status=DeliveryStatus.QUEUED, attempts=1, at=now, next_attempt_at=now)
            for c in claimed
        ]
    )
    assert set((await statuses(engine)).values()) == {"queued"}
    assert await control.stop_leftovers(engine) == 3
    assert set((await statuses(engine)).values()) == {"cancelled"}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_and_auth_are_used(security: str, tls_files: tuple[str, str]) -> None:
    import ssl

    from bzi_broadcast.channels.smtp import SmtpPool, SmtpServer
    from bzi_broadcast.errors import ChannelAuthError

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    async with SmtpCapture(
        tls=context, implicit_tls=security == "tls", credentials=("bzi", "geheim")
    ) as smtp:
        good = SmtpPool(
            SmtpServer(
                port=smtp.port,
                security=security,  # type: ignore[arg-type]
                username="bzi",
                password="geheim",
                verify_tls=False,
            )
        )
        await good.send("news@example.org", "a@example.org", b"Subject: x\r\n\r\nHallo\r\n")
        await good.send("news@example.org", "b@example.org", b"Subject: y\r\n\r\nHallo\r\n")
        await good.aclose()
        wrong = SmtpPool(
            SmtpServer(
                port=smtp.port,
                security=security,  # type: ignore[arg-type]
                username="bzi",
                password="falsch",
                verify_tls=False,
            )
        )
        with pytest.raises(ChannelAuthError):
            await wrong.send("news@example.org", "c@example.org", b"Subject: z\r\n\r\nx\r\n")
        await wrong.aclose()
    assert [r.recipient for r in smtp.received] == ["a@example.org", "b@example.org"]
    assert "password='geheim'" not in repr(SmtpServer(password="geheim"))
