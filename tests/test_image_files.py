"""An announcement file's own image: read beside the file when it is queued, stored like an upload,
and delivered from the store — whatever directory the service runs in."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.content import load_announcement
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.errors import ContentError
from bzi_broadcast.service import Service
from bzi_broadcast.staff import media
from bzi_broadcast.staff.remote_images import Address, FetchPolicy
from bzi_broadcast.store.announcements import AnnouncementRecord, Announcements
from bzi_broadcast.store.schema import announcements
from bzi_broadcast.testing.mastodon import MastodonServer
from bzi_broadcast.testing.smtp import SmtpCapture

from .pictures import png
from .test_delivery import serving, settings_for, wait_until
from .test_store import add_subscribers

PUBLIC_URL = "https://bzi.example.org"
ANNOUNCEMENT = """\
title: Sommerfest
image:
  src: {src}
  alt: Gäste auf dem Rathausplatz
blocks:
  - type: text
    text: Wir feiern.
"""


def announcement_file(directory: Path, src: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ankuendigung.yaml"
    path.write_text(ANNOUNCEMENT.format(src=src), encoding="utf-8")
    return path


def queue_cli(
    database_url: str, cwd: Path, file: str, public_url: str = PUBLIC_URL
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bzi_broadcast", "queue", file, "--now"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "BZI_DATABASE_URL": database_url, "BZI_EMAIL_PUBLIC_URL": public_url},
        timeout=120,
    )


# --- at queue time ------------------------------------------------------------------------------


async def test_the_image_is_stored_and_the_announcement_points_at_it(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    image = png(width=40, height=30)
    (tmp_path / "bilder").mkdir()
    (tmp_path / "bilder" / "fest.png").write_bytes(image)
    file = announcement_file(tmp_path, "bilder/fest.png")
    adopted = await media.adopt_file_image(
        engine, load_announcement(file), file=file, public_url=PUBLIC_URL + "/"
    )
    assert adopted.image is not None
    match = re.fullmatch(rf"{PUBLIC_URL}/medien/([A-Za-z0-9_-]{{22}})", adopted.image.src)
    assert match, adopted.image.src
    stored = await media.fetch(engine, match.group(1))
    assert stored is not None
    assert stored.data == image
    assert stored.content_type == "image/png"
    assert (adopted.image.width, adopted.image.height) == (40, 30)
    assert adopted.image.alt == "Gäste auf dem Rathausplatz"
    again = await media.adopt_file_image(
        engine, load_announcement(file), file=file, public_url=PUBLIC_URL
    )
    assert again == adopted  # the same bytes are the same stored image


async def test_an_image_address_is_fetched_now_and_refused_if_not_public(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """An address is not left for the channels to fetch at send time (issue 13, item 3)."""
    file = announcement_file(tmp_path, "https://bilder.example/fest.png")

    async def inside(_host: str, _port: int) -> list[Address]:
        return [IPv4Address("10.0.0.1")]

    with pytest.raises(ContentError) as caught:
        await media.adopt_file_image(
            engine,
            load_announcement(file),
            file=file,
            public_url=PUBLIC_URL,
            policy=FetchPolicy(resolve=inside),
        )
    assert [p.path for p in caught.value.problems] == ["image.src"]
    assert "nicht im öffentlichen Internet" in caught.value.problems[0].message


def _refusal_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name → (image.src as written, what the message must name)."""
    directory = tmp_path / "ankuendigungen"
    (directory / "bilder").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(png())
    (directory / "bild.png").write_bytes(png())
    (directory / "text.png").write_text("kein Bild, nur Text\n", encoding="utf-8")
    (directory / "bilder" / "weg.png").symlink_to(tmp_path / "secret.png")
    inside = str(directory / "bild.png")
    return {
        "parent": ("../secret.png", "außerhalb"),
        "deeper-parent": ("bilder/../../secret.png", "außerhalb"),
        "link-outside": ("bilder/weg.png", "außerhalb"),
        "absolute": (inside, "relativ zur Ankündigungsdatei"),
        "text-file": ("text.png", "kein Bild im Format PNG, JPEG, GIF oder WebP"),
        "missing": ("fehlt.png", "nicht lesbar"),
        "directory": ("bilder", "nicht lesbar"),
    }


@pytest.mark.parametrize(
    "case",
    ["parent", "deeper-parent", "link-outside", "absolute", "text-file", "missing", "directory"],
)
def test_a_bad_image_file_is_refused_naming_field_and_file(tmp_path: Path, case: str) -> None:
    src, reason = _refusal_cases(tmp_path)[case]
    file = announcement_file(tmp_path / "ankuendigungen", src)
    with pytest.raises(ContentError) as caught:
        media.read_file_image(file, src)
    assert [p.path for p in caught.value.problems] == ["image.src"]
    message = caught.value.message
    assert reason in message
    assert Path(src).name in message
    assert str(file) in message


def test_an_image_over_8_mb_is_refused(tmp_path: Path) -> None:
    (tmp_path / "gross.png").write_bytes(png() + b"\x00" * media.MAX_BYTES)
    file = announcement_file(tmp_path, "gross.png")
    with pytest.raises(ContentError, match="größer als 8 MB"):
        media.read_file_image(file, "gross.png")


async def _queued(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count: int = (
            await conn.execute(select(func.count()).select_from(announcements))
        ).scalar_one()
        return count


async def test_queue_refuses_a_text_file_named_png_and_queues_nothing(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "a"
    file = announcement_file(directory, "bild.png")
    (directory / "bild.png").write_text("kein Bild\n", encoding="utf-8")
    result = await asyncio.to_thread(queue_cli, database_url, directory, file.name)
    assert result.returncode == 2, result.stderr
    assert "image.src" in result.stderr
    assert str(directory.resolve() / "bild.png") in result.stderr
    assert "Traceback" not in result.stderr
    assert await _queued(engine) == 0


# --- at send time, from another directory -------------------------------------------------------


async def _finished(engine: AsyncEngine) -> AnnouncementRecord | None:
    store = Announcements(engine)
    async with engine.connect() as conn:
        ids = (await conn.execute(select(announcements.c.id))).scalars().all()
    records = [await store.get(i) for i in ids]
    return next((r for r in records if r.status in (S.SENT, S.PARTIALLY_FAILED)), None)


async def test_a_queued_file_image_reaches_email_and_mastodon_from_another_directory(
    engine: AsyncEngine,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mastodon_api: tuple[MastodonServer, str],
) -> None:
    api, mastodon_url = mastodon_api
    image = png(width=12, height=8)
    directory_a, directory_b = tmp_path / "a", tmp_path / "b"
    file = announcement_file(directory_a, "bild.png")
    (directory_a / "bild.png").write_bytes(image)
    directory_b.mkdir()
    monkeypatch.chdir(directory_b)  # the service runs where no bild.png is
    await add_subscribers(engine, 1)
    async with SmtpCapture() as smtp:
        base = settings_for(database_url, smtp.port)
        mastodon = {"enabled": True, "base_url": mastodon_url, "access_token": SecretStr("secret")}
        settings = base.model_copy(update={"mastodon": base.mastodon.model_copy(update=mastodon)})
        public_url = settings.email.public_url  # where the service says it is (behind a proxy)
        async with serving(Service(settings)) as url, aiohttp.ClientSession() as client:
            queued = await asyncio.to_thread(
                queue_cli, database_url, directory_a, file.name, public_url
            )
            assert queued.returncode == 0, queued.stderr
            record = await wait_until(lambda: _finished(engine), timeout=60)
            assert record is not None
            assert record.status == S.SENT
            sent = record.announcement()
            assert sent.image is not None
            token = media.token_of(public_url, sent.image.src)
            assert token is not None, sent.image.src
            async with client.get(f"{url}/medien/{token}") as answer:  # released: public
                assert answer.status == 200
                assert answer.content_type == "image/png"
                assert await answer.read() == image
        mails = await smtp.handler.wait_for(1, timeout=30)
    html = mails[0].message().get_body(("html",))
    assert html is not None
    assert f'src="{sent.image.src}"' in html.get_content()
    first = api.thread()[0]
    attachment = first["media_attachments"][0]
    assert attachment["description"] == "Gäste auf dem Rathausplatz"
    assert api.media[attachment["id"]].content == image
