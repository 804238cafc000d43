"""The announcement overview and the delivery dashboard against a running service: figures that
match the deliveries table while sending and after, failures with their reasons, retry, pause and
resume, the Mastodon thread links, roles, CSRF, and escaped titles."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.content import load_announcement
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.service import Service
from bzi_broadcast.staff import workflow
from bzi_broadcast.staff.accounts import Role, User, add_user
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.schema import audit_log, deliveries
from bzi_broadcast.testing.mastodon import MastodonServer
from bzi_broadcast.testing.smtp import Fault, FaultPlan, SmtpCapture

from .conftest import EXAMPLE
from .test_admin import CSRF, PASSWORD, client, login
from .test_delivery import example_announcement, queue_now, serving, settings_for, wait_until
from .test_store import add_subscribers

XSS = '<script>alert("x")</script>'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"


async def _staff(engine: AsyncEngine) -> dict[str, User]:
    made = {}
    for name, role in (("Eva", Role.EDITOR), ("Paul", Role.PUBLISHER), ("Pia", Role.PUBLISHER)):
        email = f"{name.lower()}@bzi.example.org"
        user_id = await add_user(engine, email=email, name=name, role=role, password=PASSWORD)
        made[name] = User(id=user_id, email=email, name=name, role=role, language="de")
    return made


async def _as(base: str, name: str) -> aiohttp.ClientSession:
    http = client(base)
    status, _page = await login(http, f"{name.lower()}@bzi.example.org", PASSWORD)
    assert status == 303
    return http


async def _page(http: aiohttp.ClientSession, path: str) -> str:
    async with http.get(path) as answer:
        assert answer.status == 200, await answer.text()
        return await answer.text()


async def _figures(http: aiohttp.ClientSession, announcement_id: int) -> dict[str, Any]:
    async with http.get(f"/admin/ankuendigungen/{announcement_id}/versand.json") as answer:
        assert answer.status == 200
        data: dict[str, Any] = await answer.json()
    return data


async def _post(
    http: aiohttp.ClientSession, path: str, *, csrf: bool = True, **fields: str
) -> aiohttp.ClientResponse:
    if csrf:
        token = CSRF.search(await _page(http, "/admin"))
        assert token
        fields["csrf"] = token.group(1)
    async with http.post(path, data=fields, allow_redirects=False) as answer:
        await answer.read()
        return answer


async def _table_counts(engine: AsyncEngine, announcement_id: int) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(deliveries.c.status, func.count())
            .where(deliveries.c.announcement_id == announcement_id, deliveries.c.channel == "email")
            .group_by(deliveries.c.status)
        )
        return {status: int(count) for status, count in rows}


async def _status_is(engine: AsyncEngine, announcement_id: int, status: S) -> bool:
    return (await Announcements(engine).get(announcement_id)).status == status


async def _actions(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(audit_log.c.action))).scalars())


def _email(figures: dict[str, Any]) -> dict[str, Any]:
    email: dict[str, Any] = next(c for c in figures["channels"] if c["channel"] == "email")
    return email


async def test_figures_match_the_table_while_sending_and_a_failure_is_retried(
    engine: AsyncEngine, database_url: str
) -> None:
    await _staff(engine)
    await add_subscribers(engine, 150)
    refused = "person3@example.org"  # refused once at DATA: failed, then sent by "retry failed"
    plan = FaultPlan(
        delay=0.01,
        choose=lambda r: Fault(stage="data", code=554, times=1) if r == refused else None,
    )
    async with (
        SmtpCapture(plan) as smtp,
        serving(Service(settings_for(database_url, smtp.port, window=10))) as base,
        await _as(base, "Paul") as http,
    ):
        announcement_id = await queue_now(engine)
        await smtp.handler.wait_for(20)
        before = await _table_counts(engine, announcement_id)
        during = _email(await _figures(http, announcement_id))
        after = await _table_counts(engine, announcement_id)
        assert before.get("sent", 0) <= during["sent"] <= after.get("sent", 0)
        assert during["total"] == 150
        assert 0 < during["done"] < 150  # caught in the middle (the server is slow on purpose)

        await wait_until(lambda: _status_is(engine, announcement_id, S.PARTIALLY_FAILED))
        final = await _figures(http, announcement_id)
        assert final["live"] is False
        counts = await _table_counts(engine, announcement_id)
        email = _email(final)
        assert {s: email[s] for s in counts} == counts == {"sent": 149, "failed": 1}
        page = await _page(http, f"/admin/ankuendigungen/{announcement_id}/versand")
        assert "554" in page  # the server's reason, grouped with its count
        assert "p…@example.org" in page
        assert refused not in page  # the recipient is masked
        assert '<title id="sends-title">' in page  # the chart, with its table
        assert "Fehlgeschlagene erneut senden" in page

        answer = await _post(http, f"/admin/ankuendigungen/{announcement_id}/versand/wiederholen")
        assert answer.status == 303
        assert "meldung=erneut&anzahl=1" in answer.headers["Location"]
        await wait_until(lambda: _status_is(engine, announcement_id, S.SENT))
        assert sorted(r.recipient for r in smtp.received).count(refused) == 1
        assert _email(await _figures(http, announcement_id))["sent"] == 150
        page = await _page(http, answer.headers["Location"])
        assert "1 fehlgeschlagene Zustellung wird erneut gesendet." in page
    assert "announcement.retry_failed" in await _actions(engine)


async def test_pause_stops_claiming_and_resume_continues(
    engine: AsyncEngine, database_url: str
) -> None:
    await _staff(engine)
    await add_subscribers(engine, 200)
    async with SmtpCapture(FaultPlan(delay=0.02)) as smtp:
        service = Service(settings_for(database_url, smtp.port, window=5))
        async with serving(service) as base, await _as(base, "Paul") as http:
            announcement_id = await queue_now(engine)
            await smtp.handler.wait_for(10)
            versand = f"/admin/ankuendigungen/{announcement_id}/versand"
            answer = await _post(http, f"{versand}/pausieren", channel="email")
            assert answer.status == 303
            await wait_until(lambda: _paused_and_settled(service, engine, announcement_id))
            held = len(smtp.received)
            counts = await _table_counts(engine, announcement_id)
            assert counts["sent"] == held
            assert counts["queued"] == 200 - held
            with pytest.raises(TimeoutError):  # nothing more is claimed while paused
                await smtp.handler.wait_for(held + 1, timeout=1.5)
            email = _email(await _figures(http, announcement_id))
            assert email["paused"] is True
            assert email["eta"] == ""
            page = await _page(http, versand)
            assert "Pausiert" in page
            assert "pausiert von Paul" in page
            assert "E-Mail fortsetzen" in page

            answer = await _post(http, f"{versand}/fortsetzen", channel="email")
            assert answer.status == 303
            await wait_until(lambda: _status_is(engine, announcement_id, S.SENT))
            assert len(smtp.received) == 200
            assert "E-Mail pausieren" in await _page(http, versand)
    actions = await _actions(engine)
    assert "channel.paused" in actions
    assert "channel.resumed" in actions


async def _paused_and_settled(service: Service, engine: AsyncEngine, announcement_id: int) -> bool:
    """The running worker adopted the pause and handed back what it had claimed."""
    counts = await _table_counts(engine, announcement_id)
    return service.workers[0].paused and counts.get("sending", 0) == 0


async def test_editors_see_without_buttons_and_every_post_needs_its_token(
    engine: AsyncEngine, database_url: str
) -> None:
    await _staff(engine)
    await add_subscribers(engine, 3)
    announcement_id = await queue_now(engine)
    versand = f"/admin/ankuendigungen/{announcement_id}/versand"
    async with (
        SmtpCapture() as smtp,
        serving(Service(settings_for(database_url, smtp.port))) as base,
    ):
        await wait_until(lambda: _status_is(engine, announcement_id, S.SENT))
        async with await _as(base, "Eva") as http:
            page = await _page(http, versand)
            assert "3 von 3 erledigt" in page
            assert f'action="{versand}/' not in page  # no buttons for editors
            assert (await _figures(http, announcement_id))["channels"][0]["sent"] == 3
            for action in ("wiederholen", "pausieren", "fortsetzen"):
                answer = await _post(http, f"{versand}/{action}", channel="email")
                assert answer.status == 403
        async with await _as(base, "Paul") as http:
            answer = await _post(http, f"{versand}/pausieren", csrf=False, channel="email")
            assert answer.status == 403
            assert (await _post(http, f"{versand}/wiederholen", csrf=False)).status == 403
            assert (await _post(http, f"{versand}/pausieren", channel="fax")).status == 400
            answer = await _post(http, f"{versand}/wiederholen")  # nothing failed: a clear 409
            assert answer.status == 409
            assert (
                await _post(http, "/admin/ankuendigungen/999/versand/wiederholen")
            ).status == 404
            async with http.get("/admin/ankuendigungen/999/versand") as missing:
                assert missing.status == 404
    actions = await _actions(engine)
    assert not {"channel.paused", "channel.resumed", "announcement.retry_failed"} & set(actions)


async def test_overview_newest_first_with_filter_approvals_and_escaped_titles(
    engine: AsyncEngine, database_url: str
) -> None:
    staff = await _staff(engine)
    first = await workflow.create(
        engine, example_announcement(title="Erste Ankündigung"), staff["Eva"]
    )
    hostile = await workflow.create(engine, example_announcement(title=XSS), staff["Eva"])
    await workflow.submit(engine, hostile, staff["Eva"], version=1)
    mine = await workflow.create(engine, example_announcement(title="Von Paul"), staff["Paul"])
    await workflow.submit(engine, mine, staff["Paul"], version=1)
    sent = await queue_now(engine)
    async with (
        SmtpCapture() as smtp,
        serving(Service(settings_for(database_url, smtp.port))) as base,
    ):
        await wait_until(lambda: _status_is(engine, sent, S.SENT))
        async with await _as(base, "Paul") as http:
            page = await _page(http, "/admin")
            assert XSS not in page
            assert ESCAPED in page
            assert page.index(ESCAPED) < page.index("Erste Ankündigung")  # newest first
            assert "1 Ankündigung wartet auf Ihre Freigabe." in page  # not his own submission
            assert 'href="/admin/ankuendigungen/neu"' in page
            assert f'href="/admin/ankuendigungen/{first}"' in page
            assert f'href="/admin/ankuendigungen/{sent}/versand"' in page
            assert f'href="/admin/ankuendigungen/{first}/versand"' not in page  # not released
            assert "Zur Freigabe" in page and "Gesendet" in page and "Eva" in page
            filtered = await _page(http, "/admin?status=in_review")
            assert ESCAPED in filtered and "Von Paul" in filtered
            assert "Erste Ankündigung" not in filtered
            assert "Keine Ankündigungen mit diesem Status." in await _page(
                http, "/admin?status=expired"
            )
        async with await _as(base, "Eva") as http:
            assert "wartet auf Ihre Freigabe" not in await _page(
                http, "/admin"
            )  # editors approve none
        async with await _as(base, "Pia") as http:
            assert "2 Ankündigungen warten auf Ihre Freigabe." in await _page(http, "/admin")


async def test_dashboard_escapes_titles_and_reasons(engine: AsyncEngine, database_url: str) -> None:
    await _staff(engine)
    await add_subscribers(engine, 2)
    store = Announcements(engine)
    hostile = await store.create(
        example_announcement(title=XSS),
        actor="test",
        status=S.SCHEDULED,
        publish_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    plan = FaultPlan(choose=lambda r: Fault(stage="data", code=554, times=9))
    async with (
        SmtpCapture(plan) as smtp,
        serving(Service(settings_for(database_url, smtp.port))) as base,
    ):
        await wait_until(lambda: _status_is(engine, hostile, S.PARTIALLY_FAILED))
        async with engine.begin() as conn:  # a server that echoes hostile text in its reply
            await conn.execute(
                deliveries.update()
                .where(deliveries.c.announcement_id == hostile)
                .values(last_error=f"PermanentError: 554 {XSS}")
            )
        async with await _as(base, "Paul") as http:
            page = await _page(http, f"/admin/ankuendigungen/{hostile}/versand")
    assert XSS not in page
    assert page.count(ESCAPED) >= 3  # the heading, the title and the failure reason


@pytest.fixture
async def mastodon_api() -> AsyncIterator[str]:
    http = TestServer(MastodonServer(token="secret").app(), host="127.0.0.1")
    await http.start_server()
    yield f"http://127.0.0.1:{http.port}"
    await http.close()


async def test_the_posted_mastodon_thread_is_linked(
    engine: AsyncEngine, database_url: str, mastodon_api: str
) -> None:
    await _staff(engine)
    async with SmtpCapture() as smtp:
        base_settings = settings_for(database_url, smtp.port)
        settings = base_settings.model_copy(
            update={
                "mastodon": base_settings.mastodon.model_copy(
                    update={
                        "enabled": True,
                        "base_url": mastodon_api,
                        "access_token": SecretStr("secret"),
                    }
                )
            }
        )
        announcement_id = await Announcements(engine).create(
            load_announcement(EXAMPLE),
            actor="test",
            status=S.SCHEDULED,
            publish_at=datetime.now(UTC),
        )
        async with serving(Service(settings)) as base, await _as(base, "Eva") as http:
            await wait_until(lambda: _status_is(engine, announcement_id, S.SENT), timeout=60)
            page = await _page(http, f"/admin/ankuendigungen/{announcement_id}/versand")
            figures = await _figures(http, announcement_id)
    links = re.findall(r'href="(https://mastodon\.local/@bzi/\d+)"', page)
    async with engine.connect() as conn:
        first = (
            await conn.execute(
                select(deliveries.c.remote_id).where(deliveries.c.channel == "mastodon")
            )
        ).scalar_one()
    assert len(links) >= 2  # the example is a thread of several posts
    assert links[0] == first  # the receipt of the delivery: the thread's first post
    assert len(set(links)) == len(links)
    mastodon = [c for c in figures["channels"] if c["channel"] == "mastodon"]
    assert mastodon[0]["sent"] == 1
