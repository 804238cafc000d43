"""The Mastodon channel end to end: outbox → Mastodon.py (thread pool) → the local server."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.config import Settings
from bzi_broadcast.content import Announcement, load_announcement
from bzi_broadcast.delivery import control
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.render import Renderer, ThreadLimits
from bzi_broadcast.service import Service
from bzi_broadcast.staff import media
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.schema import deliveries
from bzi_broadcast.testing.mastodon import Fault, MastodonServer
from bzi_broadcast.testing.smtp import SmtpCapture

from .conftest import EXAMPLE
from .test_delivery import settings_for, wait_until


async def run_announcement(
    engine: AsyncEngine,
    database_url: str,
    base_url: str,
    token: str = "secret",
    announcement: Announcement | None = None,
) -> tuple[int, Service]:
    smtp = await SmtpCapture().start()
    base = settings_for(database_url, smtp.port)
    settings = base.model_copy(
        update={
            "mastodon": base.mastodon.model_copy(
                update={"enabled": True, "base_url": base_url, "access_token": SecretStr(token)}
            )
        }
    )
    service = Service(settings)
    task = asyncio.create_task(service.run())
    store = Announcements(engine)
    announcement_id = await store.create(
        announcement or load_announcement(EXAMPLE),
        actor="t",
        status=S.SCHEDULED,
        publish_at=datetime.now(UTC),
    )
    try:
        await wait_until(lambda: _finished(store, announcement_id), timeout=60)
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)
        await smtp.stop()
    return announcement_id, service


async def _finished(store: Announcements, announcement_id: int) -> bool:
    return (await store.get(announcement_id)).status in (S.SENT, S.PARTIALLY_FAILED)


async def test_thread_is_posted_in_order_with_the_instance_limit(
    engine: AsyncEngine, database_url: str, mastodon_api: tuple[MastodonServer, str]
) -> None:
    api, url = mastodon_api
    api.max_characters = 1000
    announcement_id, _service = await run_announcement(engine, database_url, url)
    thread = api.thread()
    expected = (
        Renderer().mastodon(load_announcement(EXAMPLE), ThreadLimits(max_characters=1000)).posts
    )
    assert [s["text"] for s in thread] == [p.text for p in expected]
    assert all(thread[i]["in_reply_to_id"] == thread[i - 1]["id"] for i in range(1, len(thread)))
    row = await mastodon_row(engine, announcement_id)
    assert row.status == "sent"
    assert row.remote_id == thread[0]["url"]


async def test_a_failure_mid_thread_continues_without_duplicates(
    engine: AsyncEngine, database_url: str, mastodon_api: tuple[MastodonServer, str]
) -> None:
    api, url = mastodon_api
    # Part 3 fails with a 503 (call 3); its retry is call 4; part 4 is posted but its answer is
    # lost (call 5): the retry with the same Idempotency-Key gets the original back.
    api.inject("POST /api/v1/statuses", Fault(status=503, error="Service Unavailable", on_call=3))
    api.inject("POST /api/v1/statuses", Fault(drop=True, after=True, on_call=5))
    announcement_id, _service = await run_announcement(engine, database_url, url)
    thread = api.thread()
    texts = [s["text"] for s in thread]
    assert len(texts) == len(set(texts))  # no part posted twice
    assert len(thread) == len(Renderer().mastodon(load_announcement(EXAMPLE)).posts)
    assert all(thread[i]["in_reply_to_id"] == thread[i - 1]["id"] for i in range(1, len(thread)))
    assert (await Announcements(engine).get(announcement_id)).status == S.SENT
    posts_tried = [c for c in api.calls if c[1] == "/api/v1/statuses"]
    assert len(posts_tried) == len(thread) + 2
    keys = [c[2].get("Idempotency-Key") for c in posts_tried]
    assert keys[2] == keys[3]  # the 503'd part was retried with its key
    assert keys[4] == keys[5]  # and so was the part whose answer was lost


async def test_a_wrong_token_pauses_the_channel_as_needing_reconnect(
    engine: AsyncEngine, database_url: str, mastodon_api: tuple[MastodonServer, str]
) -> None:
    api, url = mastodon_api
    smtp = await SmtpCapture().start()
    base = settings_for(database_url, smtp.port)
    settings = base.model_copy(
        update={
            "mastodon": base.mastodon.model_copy(
                update={"enabled": True, "base_url": url, "access_token": SecretStr("wrong")}
            )
        }
    )
    service = Service(settings)
    task = asyncio.create_task(service.run())
    try:
        await Announcements(engine).create(
            load_announcement(EXAMPLE), actor="t", status=S.SCHEDULED, publish_at=datetime.now(UTC)
        )
        paused = await wait_until(lambda: control.paused_channels(engine), timeout=30)
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)
        await smtp.stop()
    assert "muss neu verbunden werden" in (paused["mastodon"] or "")
    assert api.thread() == []
    calls_with_wrong_token = [c for c in api.calls if c[1] == "/api/v1/statuses"]
    assert len(calls_with_wrong_token) <= 1  # no retry storm


async def test_image_is_uploaded_with_alt_text_and_processed_first(
    engine: AsyncEngine,
    database_url: str,
    mastodon_api: tuple[MastodonServer, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, url = mastodon_api
    monkeypatch.chdir(tmp_path)  # local images are read below the service's image directory
    (tmp_path / "podium.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    data = json.loads(load_announcement(EXAMPLE).model_dump_json())
    data["image"] = {"src": "podium.jpg", "alt": "Podium der Regionalkonferenz in Potsdam"}
    announcement = Announcement.model_validate(data)
    await run_announcement(engine, database_url, url, announcement=announcement)
    first = api.thread()[0]
    assert first["media_attachments"][0]["description"] == "Podium der Regionalkonferenz in Potsdam"
    assert first["media_attachments"][0]["url"]  # processed before the status was created
    polls = [c for c in api.calls if c[1].startswith("/api/v1/media/")]
    assert polls  # it waited for processing (206 → 200)


async def test_an_instance_with_an_unusable_limit_fails_the_row_with_a_clear_message(
    engine: AsyncEngine, database_url: str, mastodon_api: tuple[MastodonServer, str]
) -> None:
    api, url = mastodon_api
    api.max_characters = 20  # fewer than a numbered post needs
    announcement_id, _service = await run_announcement(engine, database_url, url)
    row = await mastodon_row(engine, announcement_id)
    assert row.status == "failed"
    assert "unbrauchbare Grenzen" in row.last_error
    assert "max_characters" in row.last_error
    assert api.thread() == []
    assert row.attempts == 1  # permanent: no retries


async def test_an_image_is_uploaded_from_the_media_store_not_fetched_over_http(
    engine: AsyncEngine, database_url: str, mastodon_api: tuple[MastodonServer, str]
) -> None:
    """An announcement's image is one of our own ``/medien/`` addresses (issue 13, item 3): the
    channel reads its bytes from the store. Nothing answers at the public address here (and the
    image is not public before release anyway), so a fetch over HTTP could not succeed."""
    api, url = mastodon_api
    jpeg = (
        b"\xff\xd8\xff\xe0\x00\x07JFIF\x00" + b"\xff\xc0\x00\x11\x08\x00\x20\x00\x30" + b"\x01" * 64
    )
    stored = await media.store(engine, jpeg, None)
    data = json.loads(load_announcement(EXAMPLE).model_dump_json())
    src = media.media_url(Settings().email.public_url, stored.token)
    data["image"] = {"src": src, "alt": "Podium"}
    await run_announcement(
        engine, database_url, url, announcement=Announcement.model_validate(data)
    )
    first = api.thread()[0]
    assert first["media_attachments"][0]["description"] == "Podium"
    assert api.media[first["media_attachments"][0]["id"]].content == jpeg


async def test_an_address_outside_the_media_store_is_refused_not_fetched(
    engine: AsyncEngine, database_url: str, mastodon_api: tuple[MastodonServer, str]
) -> None:
    """An announcement stored before remote images were fetched at saving: no request leaves."""
    from aiohttp import web

    api, url = mastodon_api
    seen: list[str] = []

    async def image(request: web.Request) -> web.Response:
        seen.append(request.path)
        raise web.HTTPFound("/podium.jpg")

    images = web.Application()
    images.router.add_get("/{tail:.*}", image)
    web_server = TestServer(images, host="127.0.0.1")
    await web_server.start_server()
    data = json.loads(load_announcement(EXAMPLE).model_dump_json())
    data["image"] = {"src": f"http://127.0.0.1:{web_server.port}/redir/img.png", "alt": "Podium"}
    try:
        announcement_id, _service = await run_announcement(
            engine, database_url, url, announcement=Announcement.model_validate(data)
        )
    finally:
        await web_server.close()
    assert seen == []
    assert api.thread() == []
    row = await mastodon_row(engine, announcement_id)
    assert row.status == "failed"
    assert "nicht in der Medienablage" in row.last_error


async def mastodon_row(engine: AsyncEngine, announcement_id: int) -> Any:
    """The announcement's one Mastodon delivery row."""
    async with engine.connect() as conn:
        return (
            await conn.execute(
                select(deliveries).where(
                    deliveries.c.announcement_id == announcement_id,
                    deliveries.c.channel == "mastodon",
                )
            )
        ).one()
