"""Cancel tells the truth: it returns once the sends in flight have settled, reports the numbers
the database then holds, and no mail arrives after it returned (a slow real SMTP server)."""

from __future__ import annotations

import asyncio
import re

import aiohttp
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.store.schema import deliveries
from bzi_broadcast.testing.smtp import FaultPlan

from .test_api import Api, api, seed  # noqa: F401  (api: the fixture)
from .test_delivery import queue_now, start_service, stop_service, wait_until
from .test_operations import cli
from .test_store import add_subscribers

STOPPED = re.compile(r"(\d+) Zustellungen? gestoppt")
NUMBERS = re.compile(r"(\d+) Zustellungen? gestoppt, (\d+) bereits gesendet, (\d+) noch unterwegs")


async def counts(engine: AsyncEngine, announcement_id: int) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(deliveries.c.status, func.count())
            .where(deliveries.c.announcement_id == announcement_id)
            .group_by(deliveries.c.status)
        )
        return {str(status): int(n) for status, n in rows}


async def test_cli_cancel_reports_what_the_database_holds_and_nothing_arrives_later(
    engine: AsyncEngine, database_url: str
) -> None:
    await add_subscribers(engine, 600)
    service, smtp, task = await start_service(engine, database_url, FaultPlan(delay=0.1), window=40)
    try:
        announcement_id = await queue_now(engine)
        await smtp.handler.wait_for(10)
        result = await asyncio.to_thread(cli, database_url, "cancel", str(announcement_id))
        arrived_at_return = len(smtp.received)
        held_at_return = await counts(engine, announcement_id)
    finally:
        await stop_service(service, smtp, task)  # everything the workers still do, done
    assert result.returncode == 0, result.stderr
    final = await counts(engine, announcement_id)
    claimed = STOPPED.search(result.stdout)
    assert claimed, result.stdout
    assert int(claimed.group(1)) == final["cancelled"], (result.stdout, final)
    found = NUMBERS.search(result.stdout)
    assert found, result.stdout
    stopped, sent, in_flight = (int(n) for n in found.groups())
    assert (stopped, sent, in_flight) == (final["cancelled"], final.get("sent", 0), 0)
    assert held_at_return == final  # nothing changed after cancel returned
    assert len(smtp.received) == arrived_at_return == sent  # no mail arrived later
    assert 10 <= sent < 600


async def test_api_cancel_answers_with_the_settled_numbers(
    api: Api,  # noqa: F811
    engine: AsyncEngine,
) -> None:
    await add_subscribers(engine, 5)
    created = await api.call("POST", "/announcements", json_body=seed())
    assert created.status == 201, created.body
    path = f"/announcements/{created.body['id']}"
    answer = await api.call("POST", f"{path}/cancel")  # the editor's own draft
    assert answer.status == 200, answer.body
    assert answer.body["status"] == "cancelled"
    assert answer.body["deliveries"] == {"stopped": 0, "sent": 0, "in_flight": 0, "failed": 0}


async def test_a_worker_sends_nothing_of_a_cancelled_announcement_it_had_claimed(
    engine: AsyncEngine, database_url: str
) -> None:
    from bzi_broadcast.staff import workflow
    from bzi_broadcast.staff.permissions import Operator

    await add_subscribers(engine, 200)
    service, smtp, task = await start_service(
        engine, database_url, FaultPlan(delay=0.2), window=200
    )
    try:
        announcement_id = await queue_now(engine)
        await smtp.handler.wait_for(4)
        report = await workflow.cancel(engine, announcement_id, Operator(name="test"))
        arrived_at_return = len(smtp.received)
        await wait_until(lambda: _settled(engine, announcement_id))
    finally:
        await stop_service(service, smtp, task)
    final = await counts(engine, announcement_id)
    assert report.sent == final.get("sent", 0) == len(smtp.received) == arrived_at_return
    assert report.stopped == final["cancelled"] > 150  # the claimed window was not sent
    assert report.in_flight == 0


async def _settled(engine: AsyncEngine, announcement_id: int) -> bool:
    held = await counts(engine, announcement_id)
    return "sending" not in held and "queued" not in held


async def test_web_cancel_shows_the_settled_numbers_on_the_delivery_page(
    engine: AsyncEngine, database_url: str
) -> None:
    from bzi_broadcast.staff.accounts import Role, add_user, start_session, user_by_email

    from .test_admin import CSRF, PASSWORD

    await add_user(
        engine, email="p@bzi.example.org", name="P", role=Role.PUBLISHER, password=PASSWORD
    )
    publisher = await user_by_email(engine, "p@bzi.example.org")
    assert publisher is not None
    await add_subscribers(engine, 300)
    service, smtp, task = await start_service(engine, database_url, FaultPlan(delay=0.1), window=40)
    try:
        announcement_id = await queue_now(engine)
        await smtp.handler.wait_for(10)
        await wait_until(lambda: _bound(service))
        session = await start_session(engine, publisher, 1)
        base = f"http://127.0.0.1:{service.web_port}"
        path = f"/admin/ankuendigungen/{announcement_id}"
        async with aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            http.cookie_jar.update_cookies({"bzi_session": session})
            async with http.get(path) as form:
                token = CSRF.search(await form.text())
            assert token
            fields = {"csrf": token.group(1), "confirm": "yes"}
            async with http.post(f"{path}/abbrechen", data=fields) as answer:
                page = await answer.text()
                arrived_at_return = len(smtp.received)
                assert answer.url.path == f"{path}/versand"
    finally:
        await stop_service(service, smtp, task)
    final = await counts(engine, announcement_id)
    found = NUMBERS.search(page)
    assert found, page
    assert [int(n) for n in found.groups()] == [final["cancelled"], final.get("sent", 0), 0]
    assert len(smtp.received) == arrived_at_return == final.get("sent", 0)


async def _bound(service: object) -> bool:
    return getattr(service, "web_port", None) is not None
