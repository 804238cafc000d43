"""Media privacy (issue 13, item 12): images are addressed by an unguessable token and stay
private until an announcement that uses them is released; staff see them at ``/admin/medien/``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from alembic import command
from argon2 import PasswordHasher
from sqlalchemy import Connection, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.content import load_announcement
from bzi_broadcast.content.model import Image
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.service import Service
from bzi_broadcast.staff import accounts, media
from bzi_broadcast.staff.accounts import Role, add_user
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.engine import alembic_config, create_engine, migrate
from bzi_broadcast.store.schema import announcements
from bzi_broadcast.store.schema import media as media_table
from bzi_broadcast.testing.smtp import SmtpCapture

from .conftest import EXAMPLE
from .pictures import png
from .test_admin import PASSWORD, client, login
from .test_delivery import serving, settings_for, wait_until

PUBLIC_URL = "http://127.0.0.1:8080"  # the settings' default public address


@pytest.fixture
async def site(
    database_url: str, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    monkeypatch.setattr(accounts, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024))
    await add_user(
        engine, email="eva@bzi.example.org", name="Eva", role=Role.EDITOR, password=PASSWORD
    )
    async with (
        SmtpCapture() as smtp,
        serving(Service(settings_for(database_url, smtp.port))) as url,
    ):
        yield url


async def status_of(http: aiohttp.ClientSession, path: str) -> int:
    async with http.get(path, allow_redirects=False) as answer:
        await answer.read()
        return answer.status


async def test_tokens_are_random_and_long(engine: AsyncEngine) -> None:
    first = await media.store(engine, png(shade=1), None)
    second = await media.store(engine, png(shade=2), None)
    assert media.TOKEN.fullmatch(first.token) and media.TOKEN.fullmatch(second.token)
    assert first.token != second.token
    assert media.media_url(PUBLIC_URL, first.token) == f"{PUBLIC_URL}/medien/{first.token}"
    assert media.token_of(PUBLIC_URL, f"{PUBLIC_URL}/medien/{first.id}") is None


async def test_an_unreleased_image_is_private_and_staff_see_it(
    site: str, engine: AsyncEngine
) -> None:
    stored = await media.store(engine, png(), None)  # uploaded for a preview, say
    async with client(site) as http:
        assert await status_of(http, f"/medien/{stored.token}") == 404
        assert await status_of(http, f"/medien/{stored.id}") == 404  # no sequential ids
        assert await status_of(http, "/medien/" + "9" * 24) == 404  # not 500
        assert await status_of(http, f"/admin/medien/{stored.token}") == 303  # log in first
        assert (await login(http, "eva@bzi.example.org", PASSWORD))[0] == 303
        async with http.get(f"/admin/medien/{stored.token}") as answer:
            assert answer.status == 200
            assert await answer.read() == stored.data
            assert answer.headers["Cache-Control"].startswith("private")
        assert await status_of(http, f"/medien/{stored.token}") == 404  # still not public
        assert await status_of(http, "/admin/medien/" + "9" * 24) == 404


async def test_an_image_is_public_once_its_announcement_is_released(
    site: str, engine: AsyncEngine
) -> None:
    stored = await media.store(engine, png(), None)
    other = await media.store(engine, png(shade=9), None)
    example = load_announcement(EXAMPLE)
    image = Image(src=media.media_url(PUBLIC_URL, stored.token), alt="Podium")
    store = Announcements(engine)
    draft_image = Image(src=media.media_url(PUBLIC_URL, other.token), alt="Entwurf")
    await store.create(example.model_copy(update={"image": draft_image}), actor="t")
    async with client(site) as http:
        assert await status_of(http, f"/medien/{stored.token}") == 404
        released = await store.create(
            example.model_copy(update={"image": image}),
            actor="t",
            status=S.SCHEDULED,
            publish_at=datetime.now(UTC),
        )

        async def is_released() -> bool:
            return (await store.get(released)).status != S.SCHEDULED

        await wait_until(is_released, timeout=30)
        async with http.get(f"/medien/{stored.token}") as answer:
            assert answer.status == 200
            assert await answer.read() == stored.data
            assert "immutable" in answer.headers["Cache-Control"]
        assert await status_of(http, f"/medien/{other.token}") == 404  # its draft is a draft


OLD_MEDIA = sa.table(
    "media",
    *(sa.column(name) for name in ("id", "sha256", "content_type", "data", "width", "height")),
    sa.column("created_at"),
)
OLD_ANNOUNCEMENTS = sa.table(
    "announcements",
    *(sa.column(name) for name in ("title", "language", "status", "released_at")),
    sa.column("content", sa.JSON),
    *(sa.column(name) for name in ("created_at", "updated_at")),
)


async def test_the_migration_gives_existing_images_tokens_and_new_addresses(
    tmp_path: Path,
) -> None:
    """Rows stored before 0011 get tokens; announcements naming ``/medien/<id>`` are rewritten,
    and the image of one already released is public."""
    engine = create_engine(f"sqlite:///{tmp_path / 'alt.sqlite3'}")
    example = json.loads(load_announcement(EXAMPLE).model_dump_json())
    now = datetime.now(UTC).replace(tzinfo=None)

    def upgrade(revision: str) -> Callable[[Connection], None]:
        def run(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

        return run

    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade("0010"))
            for number, released in ((1, now), (2, None)):
                await conn.execute(
                    sa.insert(OLD_MEDIA).values(
                        id=number,
                        sha256=str(number) * 64,
                        content_type="image/png",
                        data=png(shade=number),
                        width=3,
                        height=2,
                        created_at=now,
                    )
                )
                image = {"src": f"{PUBLIC_URL}/medien/{number}", "alt": "Bild"}
                await conn.execute(
                    sa.insert(OLD_ANNOUNCEMENTS).values(
                        title="T",
                        language="de",
                        status="sent" if released else "draft",
                        released_at=released,
                        content={**example, "image": image},
                        created_at=now,
                        updated_at=now,
                    )
                )
        await migrate(engine)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(media_table).order_by(media_table.c.id))).all()
            contents = (
                await conn.execute(select(announcements.c.content).order_by(announcements.c.id))
            ).scalars()
            sources = [c["image"]["src"] for c in contents]
    finally:
        await engine.dispose()
    assert [media.TOKEN.fullmatch(r.token) is not None for r in rows] == [True, True]
    assert sources == [media.media_url(PUBLIC_URL, r.token) for r in rows]
    assert [r.published_at is not None for r in rows] == [True, False]


async def test_telegram_sends_a_stored_image_as_an_upload_not_its_address(
    engine: AsyncEngine, database_url: str
) -> None:
    """The image is private until released and its bytes are here: Telegram gets them, not an
    address to fetch (issue 13, item 3)."""
    from bzi_broadcast.testing.telegram import UPLOAD, Limits, TelegramServer

    from .test_telegram_channel import TOKEN, add_telegram_subscribers, run_telegram

    stored = await media.store(engine, png(), None)
    src = media.media_url(PUBLIC_URL, stored.token)
    announcement = load_announcement(EXAMPLE).model_copy(
        update={"image": Image(src=src, alt="Podium")}
    )
    api = TelegramServer(token=TOKEN, limits=Limits(per_second=300, per_chat_per_second=10))
    api.add_chat(1001)
    await add_telegram_subscribers(engine, [1001])
    store, announcement_id, _mails = await run_telegram(
        engine, database_url, api, announcement=announcement, per_chat_per_second=10.0
    )
    assert (await store.get(announcement_id)).status == S.SENT
    photos = [params["photo"] for method, params in api.calls if method == "sendPhoto"]
    assert photos == [UPLOAD]
