"""A channel that raises something other than a ``DeliveryError`` has a bug; the worker still
records the attempt (unknown outcome, retried later with backoff) and logs the traceback, so the
row never stays claimed and unexplained until its lease runs out."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.channels.base import Receipt
from bzi_broadcast.content import load_announcement
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.delivery.lifecycle import DeliveryStatus
from bzi_broadcast.delivery.outbox import Claimed, Outbox
from bzi_broadcast.delivery.release import email_fan_out, release
from bzi_broadcast.delivery.worker import Worker
from bzi_broadcast.store.announcements import AnnouncementRecord, Announcements
from bzi_broadcast.store.schema import deliveries

from .conftest import EXAMPLE
from .test_scale_out import people


class _Broken:
    """A channel with a bug: its send raises AttributeError."""

    name = "email"
    concurrency = 1

    def prepare(self, record: AnnouncementRecord) -> object:
        return record

    async def send(self, prepared: object, delivery: Claimed) -> Receipt:
        raise AttributeError("'NoneType' object has no attribute 'url'")

    async def aclose(self) -> None:
        return None


async def test_an_unexpected_exception_is_an_attempt_with_its_reason_and_a_log(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await people(engine, 2)
    announcement_id = await Announcements(engine).create(
        load_announcement(EXAMPLE), actor="t", status=S.SCHEDULED, publish_at=datetime.now(UTC)
    )
    await release(engine, announcement_id, fan_outs={"email": email_fan_out})
    outbox = Outbox(engine, worker_id="host-1-a", lease=timedelta(minutes=5))
    worker = Worker(_Broken(), outbox, Announcements(engine))
    claimed = await outbox.claim("email", 10)
    assert len(claimed) == 2
    with caplog.at_level(logging.ERROR, logger="bzi_broadcast.delivery.worker"):
        await worker._send_batch(claimed)
        await worker.flush()
    async with engine.connect() as conn:
        rows = (await conn.execute(select(deliveries))).all()
    assert [(r.status, r.attempts) for r in rows] == [(DeliveryStatus.QUEUED, 1)] * 2
    assert all("Interner Fehler beim Senden (AttributeError)" in r.last_error for r in rows)
    logged = [r for r in caplog.records if "send raised unexpectedly" in r.getMessage()]
    assert len(logged) == 2
    assert all(r.exc_info is not None for r in logged)
