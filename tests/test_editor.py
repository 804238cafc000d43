"""The announcement editor through HTTP, against a running service on SQLite and PostgreSQL: the
form for every block, problems beside their fields with everything typed kept, stale edits,
image uploads, the live preview, escaping, the four-eyes steps, scheduling in Europe/Berlin across
DST changes, CSRF, and „Test an mich senden“."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from playwright.async_api import async_playwright
from pydantic import SecretStr
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.config import MastodonSettings, Settings, Topic
from bzi_broadcast.content import Announcement, load_announcement
from bzi_broadcast.content.model import Image, LinkBlock, TextBlock
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.render import ThreadLimits
from bzi_broadcast.service import Service
from bzi_broadcast.staff import media, workflow
from bzi_broadcast.staff.accounts import Role, add_user
from bzi_broadcast.store.schema import announcements, users
from bzi_broadcast.testing.mastodon import MastodonServer
from bzi_broadcast.testing.smtp import SmtpCapture
from bzi_broadcast.testing.telegram import UPLOAD, Limits, TelegramServer
from bzi_broadcast.web.editor import berlin_moment
from bzi_broadcast.web.editor_preview import MastodonLimits

from .conftest import ARTIFACTS, EXAMPLE, require_or_skip
from .pictures import png
from .test_admin import CSRF, PASSWORD, client, login
from .test_delivery import serving, settings_for, wait_until

TOKEN = "123456:TEST-TOKEN"
CHROMIUM = Path("/usr/bin/chromium")
EDITOR, PUBLISHER, OTHER = "eva@bzi.example.org", "paul@bzi.example.org", "pia@bzi.example.org"
Fields = list[tuple[str, str]]


@dataclass
class Site:
    url: str
    smtp: SmtpCapture
    telegram: TelegramServer
    public_url: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _settings(
    database_url: str, smtp_port: int, telegram_port: int, mastodon_port: int
) -> Settings:
    """Telegram and Mastodon on local servers; the web on a known port, so that the images'
    public addresses (``email.public_url``) work from the browser."""
    base = settings_for(database_url, smtp_port)
    port = free_port()
    topics = [
        Topic(id="veranstaltungen", de="Veranstaltungen", en="Events"),
        Topic(id="kommunen", de="Kommunen", en="Municipalities"),
        Topic(id="teilhabe", de="Teilhabe", en="Participation"),
    ]
    telegram = {
        "enabled": True,
        "bot": False,
        "token": SecretStr(TOKEN),
        "base_url": f"http://127.0.0.1:{telegram_port}/bot",
    }
    mastodon = {
        "enabled": True,
        "base_url": f"http://127.0.0.1:{mastodon_port}",
        "access_token": SecretStr("secret"),
    }
    return base.model_copy(
        update={
            "subscribers": base.subscribers.model_copy(update={"topics": topics}),
            "telegram": base.telegram.model_copy(update=telegram),
            "mastodon": base.mastodon.model_copy(update=mastodon),
            "web": base.web.model_copy(update={"port": port}),
            "email": base.email.model_copy(update={"public_url": f"http://127.0.0.1:{port}"}),
        }
    )


@pytest.fixture
async def site(database_url: str, engine: AsyncEngine) -> AsyncIterator[Site]:
    for email, name, role in (
        (EDITOR, "Eva", Role.EDITOR),
        (PUBLISHER, "Paul", Role.PUBLISHER),
        (OTHER, "Pia", Role.PUBLISHER),
    ):
        await add_user(engine, email=email, name=name, role=role, password=PASSWORD)
    api = TelegramServer(
        token=TOKEN, limits=Limits(per_second=1000, per_chat_per_second=1000), accept_private=True
    )
    http = TestServer(api.app(), host="127.0.0.1")
    instance = TestServer(
        MastodonServer(token="secret", max_characters=300).app(), host="127.0.0.1"
    )
    await http.start_server()
    await instance.start_server()
    try:
        async with SmtpCapture() as smtp:
            settings = _settings(database_url, smtp.port, http.port or 0, instance.port or 0)
            async with serving(Service(settings)) as url:
                yield Site(url=url, smtp=smtp, telegram=api, public_url=settings.email.public_url)
    finally:
        await instance.close()
        await http.close()


@contextlib.asynccontextmanager
async def session(site: Site, email: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with client(site.url) as http:
        status, _page = await login(http, email, PASSWORD)
        assert status == 303
        yield http


async def csrf(http: aiohttp.ClientSession, path: str = "/admin/ankuendigungen/neu") -> str:
    async with http.get(path) as answer:
        found = CSRF.search(await answer.text())
    assert found
    return found.group(1)


def multipart(fields: Sequence[tuple[str, str]], image: tuple[str, bytes] | None = None) -> Any:
    data = aiohttp.FormData()
    for name, value in fields:
        data.add_field(name, value)
    filename, content = image or ("", b"")
    data.add_field("image-file", content, filename=filename, content_type="image/png")
    return data


async def post(
    http: aiohttp.ClientSession,
    path: str,
    fields: Fields,
    image: tuple[str, bytes] | None = None,
) -> tuple[int, str, str]:
    """Status, page, and where a redirect pointed."""
    async with http.post(path, data=multipart(fields, image), allow_redirects=False) as answer:
        return answer.status, await answer.text(), answer.headers.get("Location", "")


async def step(
    http: aiohttp.ClientSession, announcement_id: int, name: str, **values: str
) -> tuple[int, str, str]:
    page_path = f"/admin/ankuendigungen/{announcement_id}"
    async with http.get(page_path) as answer:
        page = await answer.text()
    token = CSRF.search(page)
    version = re.search(r'name="version" value="(\d+)"', page)
    assert token and version
    form = {"csrf": token.group(1), "version": version.group(1), **values}
    async with http.post(f"{page_path}/{name}", data=form, allow_redirects=False) as answer:
        return answer.status, await answer.text(), answer.headers.get("Location", "")


def created_id(location: str) -> int:
    found = re.fullmatch(r"/admin/ankuendigungen/(\d+)\?hinweis=\w+", location)
    assert found, location
    return int(found.group(1))


# --- the example, typed into the form ------------------------------------------------------------

# As typed into a textarea: the browser sends CR LF line breaks inside each paragraph.
QUOTE = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["blocks"][1]["text"].replace(
    "\n", "\r\n"
)
PROJECT = "„Weltoffene Kommunen – vom Dialog zum Zusammenhalt“"
FORUM = "Weltoffene Kommunen – Vom Verwalten zum Gestalten"
WORKSHOP = "Miteinander in Vielfalt – Teilhabe und Partizipation in der weltoffenen Kommune"


def example_fields() -> Fields:
    """config/examples/weltoffene-kommunen.yaml as a person types it, plus a text and a link."""
    return [
        ("title", "Weltoffene Kommunen – Vom Dialog zum Zusammenhalt"),
        ("language", "de"),
        (
            "summary",
            f"Im Rahmen der Auftaktveranstaltung des Modellprojekts {PROJECT} fand am 5. November "
            "in Potsdam die 1. Regionalkonferenz des Themenforums „Integration vor Ort“ zur Fort- "
            "und Weiterentwicklung des Nationalen Aktionsplans Integration statt.",
        ),
        ("topics", "veranstaltungen"),
        ("topics", "kommunen"),
        ("topics", "teilhabe"),
        ("link", ""),
        ("hashtags", "WeltoffeneKommunen, Integration #Teilhabe"),
        ("publish_at", "2025-11-10T10:00"),
        ("expires_at", ""),
        ("archive", "ja"),
        ("image-src", ""),
        ("image-width", ""),
        ("image-height", ""),
        ("image-alt", ""),
        ("blocks-0-type", "event"),
        ("blocks-0-name", "1. Regionalkonferenz des Themenforums „Integration vor Ort“"),
        ("blocks-0-start", "2025-11-05"),
        ("blocks-0-start-time", ""),
        ("blocks-0-end", ""),
        ("blocks-0-end-time", ""),
        ("blocks-0-place", "Potsdam"),
        ("blocks-0-organisers", f"Modellprojekt {PROJECT}"),
        ("blocks-0-formats-0-kind", "Diskussionsforum"),
        ("blocks-0-formats-0-title", FORUM),
        ("blocks-0-formats-0-led_by", "mit Beteiligung des BZI"),
        ("blocks-0-formats-1-kind", "Workshop"),
        ("blocks-0-formats-1-title", WORKSHOP),
        ("blocks-0-formats-1-led_by", "geleitet vom BZI"),
        (
            "blocks-0-description",
            f"Der BZI beteiligte sich aktiv an dieser Veranstaltung, diskutierte im "
            f"Diskussionsforum „{FORUM}“ und leitete den Workshop „{WORKSHOP}“.",
        ),
        ("blocks-1-type", "quote"),
        ("blocks-1-speaker", "Dr. Nergiz"),
        ("blocks-1-role", "Bundeszuwanderungs- und Integrationsrat (BZI)"),
        ("blocks-1-text", QUOTE),
        ("blocks-2-type", "thanks"),
        ("blocks-2-intro", f"Das Modellprojekt {PROJECT} wird getragen von:"),
        ("blocks-2-partners-0-name", "PHINEO gAG"),
        ("blocks-2-partners-0-role", "implemented_by"),
        ("blocks-2-partners-0-role_label", ""),
        ("blocks-2-partners-0-url", "https://www.phineo.org"),
        ("blocks-2-partners-1-name", "Bertelsmann Stiftung"),
        ("blocks-2-partners-1-role", "in_cooperation_with"),
        ("blocks-2-partners-1-role_label", ""),
        ("blocks-2-partners-1-url", "https://www.bertelsmann-stiftung.de"),
        (
            "blocks-2-partners-2-name",
            "Die Beauftragte der Bundesregierung für Migration, Flüchtlinge und Integration",
        ),
        ("blocks-2-partners-2-role", "funded_by"),
        ("blocks-2-partners-2-role_label", ""),
        ("blocks-2-partners-2-url", "https://www.integrationsbeauftragte.de"),
        (
            "blocks-2-closing",
            "Wir danken für die spannende Veranstaltung und freuen uns auf die weitere "
            "Zusammenarbeit!",
        ),
        ("blocks-3-type", "text"),
        ("blocks-3-text", "Mehr zum **Modellprojekt** folgt.\r\n\r\n- eins\r\n- zwei"),
        ("blocks-4-type", "link"),
        ("blocks-4-label", "Zur Projektseite"),
        ("blocks-4-url", "https://www.phineo.org/projekte"),
        ("blocks-4-description", ""),
        ("channels-email-subject", ""),
        (
            "channels-email-preheader",
            "Der BZI auf der 1. Regionalkonferenz des Themenforums „Integration vor Ort“ "
            "in Potsdam",
        ),
        ("channels-mastodon-visibility", "public"),
        ("channels-mastodon-content_warning", ""),
        ("channels-telegram-preview_url", ""),
        ("translation_group", ""),
    ]


def expected_example() -> Announcement:
    example = load_announcement(EXAMPLE)
    extra = (
        TextBlock(type="text", text="Mehr zum **Modellprojekt** folgt.\n\n- eins\n- zwei"),
        LinkBlock(type="link", label="Zur Projektseite", url="https://www.phineo.org/projekte"),
    )
    return example.model_copy(update={"blocks": (*example.blocks, *extra)})


def with_csrf(token: str, fields: Fields, action: str = "save") -> Fields:
    return [("csrf", token), *fields, ("action", action)]


def replaced(fields: Fields, **values: str) -> Fields:
    """``fields`` with some values changed (names with ``-`` spelled with ``__``)."""
    wanted = {name.replace("__", "-"): value for name, value in values.items()}
    return [(name, wanted.pop(name, value) if name in wanted else value) for name, value in fields]


async def create_example(http: aiohttp.ClientSession) -> int:
    token = await csrf(http)
    status, page, location = await post(
        http, "/admin/ankuendigungen/neu", with_csrf(token, example_fields())
    )
    assert status == 303, page
    return created_id(location)


def input_value(page: str, name: str) -> str:
    found = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', page)
    assert found, name
    return unescape(found.group(1))


def textarea_value(page: str, name: str) -> str:
    found = re.search(rf'name="{re.escape(name)}"[^>]*>(.*?)</textarea>', page, re.S)
    assert found, name
    return unescape(found.group(1))


async def count_announcements(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(announcements))).scalar_one()
        )


# --- the form ------------------------------------------------------------------------------------


async def test_the_form_writes_every_block_type_and_reads_it_back(
    site: Site, engine: AsyncEngine
) -> None:
    async with session(site, EDITOR) as http:
        async with http.get("/admin/ankuendigungen/neu") as answer:
            page = await answer.text()
        assert answer.status == 200
        assert 'enctype="multipart/form-data"' in page
        assert 'type="checkbox" id="topics-kommunen" name="topics" value="kommunen"' in page
        token = CSRF.search(page)
        assert token
        shaped = [("csrf", token.group(1)), ("title", "Entwurf"), ("action", "add-event")]
        status, page, _where = await post(http, "/admin/ankuendigungen/neu", shaped)
        assert status == 200
        assert 'name="blocks-0-type" value="event"' in page
        assert 'value="add-format-0"' in page  # formats are optional: none until added
        assert input_value(page, "title") == "Entwurf"  # kept while the form changed shape

        announcement_id = await create_example(http)
        async with http.get(f"/admin/ankuendigungen/{announcement_id}?hinweis=angelegt") as answer:
            page = await answer.text()
    saved = await workflow.load(engine, announcement_id)
    assert saved.announcement == expected_example()
    assert saved.status == S.DRAFT
    assert saved.publish_at == datetime(2025, 11, 10, 9, 0, tzinfo=UTC)  # 10:00 in Berlin (CET)
    assert input_value(page, "blocks-2-partners-1-name") == "Bertelsmann Stiftung"
    assert input_value(page, "publish_at") == "2025-11-10T10:00"
    assert input_value(page, "hashtags") == "WeltoffeneKommunen Integration Teilhabe"
    assert "Denn all politics are local!" in textarea_value(page, "blocks-1-text")
    assert "Der Entwurf ist angelegt." in page


async def test_buttons_add_move_and_remove_blocks_formats_and_partners(site: Site) -> None:
    async with session(site, EDITOR) as http:
        token = await csrf(http)
        fields = with_csrf(token, example_fields(), "up-partner-2-1")
        status, page, _where = await post(http, "/admin/ankuendigungen/neu", fields)
        assert status == 200
        assert input_value(page, "blocks-2-partners-0-name") == "Bertelsmann Stiftung"
        assert input_value(page, "blocks-2-partners-1-name") == "PHINEO gAG"
        fields = with_csrf(token, example_fields(), "remove-format-0-0")
        _status, page, _where = await post(http, "/admin/ankuendigungen/neu", fields)
        assert input_value(page, "blocks-0-formats-0-kind") == "Workshop"
        assert 'name="blocks-0-formats-1-kind"' not in page
        fields = with_csrf(token, example_fields(), "down-0")
        _status, page, _where = await post(http, "/admin/ankuendigungen/neu", fields)
        assert input_value(page, "blocks-0-type") == "quote"
        assert input_value(page, "blocks-1-type") == "event"
        assert input_value(page, "blocks-1-place") == "Potsdam"
        fields = with_csrf(token, example_fields(), "add-partner-2")
        _status, page, _where = await post(http, "/admin/ankuendigungen/neu", fields)
        assert re.search(r'name="blocks-2-partners-3-name" value=""\s+autofocus', page)


async def test_an_invalid_form_keeps_what_was_typed_and_marks_each_field(
    site: Site, engine: AsyncEngine
) -> None:
    fields = replaced(
        example_fields(),
        title="",
        blocks__1__speaker="",
        blocks__0__end="2025-11-01",
        blocks__2__partners__1__url="keine Adresse",
        channels__telegram__preview_url="ftp://x",
        blocks__2__partners__0__role="other",
    )
    async with session(site, EDITOR) as http:
        status, page, _where = await post(
            http, "/admin/ankuendigungen/neu", with_csrf(await csrf(http), fields)
        )
    assert status == 400
    assert await count_announcements(engine) == 0
    for name in (
        "title",
        "blocks-1-speaker",
        "blocks-0-end",
        "blocks-2-partners-1-url",
        "channels-telegram-preview_url",
        "blocks-2-partners-0-role_label",  # "other" role: its own label is missing
    ):
        assert re.search(rf'id="{name}" name="{name}"[^>]*aria-invalid="true"', page), name
        assert f'<a href="#{name}">' in page  # the summary links to the field
        assert f'id="{name}-fehler"' in page
    assert "Das Ende liegt vor dem Beginn." in page
    assert "Block 3 (Dank), Partner 2: Website" in page
    assert input_value(page, "blocks-2-partners-1-url") == "keine Adresse"
    assert input_value(page, "blocks-0-end") == "2025-11-01"
    assert "Denn all politics are local!" in textarea_value(page, "blocks-1-text")
    assert "Noch keine Vorschau möglich" in page


async def test_a_stale_edit_is_refused_and_overwrites_nothing(
    site: Site, engine: AsyncEngine
) -> None:
    async with session(site, EDITOR) as eva, session(site, PUBLISHER) as paul:
        announcement_id = await create_example(eva)
        path = f"/admin/ankuendigungen/{announcement_id}"
        eva_token, paul_token = await csrf(eva, path), await csrf(paul, path)
        first = replaced(example_fields(), title="Fassung von Eva")
        status, _page, location = await post(
            eva, path, [*with_csrf(eva_token, first), ("version", "1")]
        )
        assert status == 303
        assert location == f"{path}?hinweis=gespeichert"
        second = replaced(example_fields(), title="Fassung von Paul")
        status, page, _where = await post(
            paul, path, [*with_csrf(paul_token, second), ("version", "1")]
        )
    assert status == 409
    assert "von jemand anderem geändert" in page
    assert input_value(page, "title") == "Fassung von Paul"  # Paul's text is still there
    assert input_value(page, "version") == "1"  # and saving again is refused again
    saved = await workflow.load(engine, announcement_id)
    assert saved.announcement.title == "Fassung von Eva"
    assert saved.version == 2


async def test_editing_a_submitted_announcement_makes_it_a_draft_again(
    site: Site, engine: AsyncEngine
) -> None:
    async with session(site, EDITOR) as http:
        announcement_id = await create_example(http)
        status, _page, _where = await step(http, announcement_id, "einreichen")
        assert status == 303
        path = f"/admin/ankuendigungen/{announcement_id}"
        async with http.get(path) as answer:
            page = await answer.text()
        assert "wird die Ankündigung wieder ein Entwurf" in page
        fields = [*with_csrf(await csrf(http, path), example_fields()), ("version", "1")]
        status, _page, location = await post(http, path, fields)
    assert location == f"{path}?hinweis=entwurf"
    assert (await workflow.load(engine, announcement_id)).status == S.DRAFT


# --- images --------------------------------------------------------------------------------------


def test_images_are_recognised_by_their_bytes() -> None:
    assert media.sniff(png(3, 2)) == media.ImageInfo(content_type="image/png", width=3, height=2)
    gif = b"GIF89a" + struct.pack("<HH", 40, 30) + b"\x00" * 20
    assert media.sniff(gif).content_type == "image/gif"
    jpeg = (
        b"\xff\xd8\xff\xe0"
        + struct.pack(">H", 16)
        + b"JFIF\x00" * 2
        + b"\x00\x00\x00\x00"
        + b"\xff\xc0"
        + struct.pack(">HBHH", 17, 8, 480, 640)
        + b"\x00" * 12
    )
    assert media.sniff(jpeg) == media.ImageInfo(content_type="image/jpeg", width=640, height=480)
    lossy = b"RIFF\x00\x00\x00\x00WEBPVP8 \x00\x00\x00\x00" + b"\x00\x00\x00\x9d\x01\x2a"
    lossy += struct.pack("<HH", 300, 200) + b"\x00" * 10
    assert media.sniff(lossy) == media.ImageInfo(content_type="image/webp", width=300, height=200)
    lossless = b"RIFF\x00\x00\x00\x00WEBPVP8L\x00\x00\x00\x00\x2f"
    lossless += struct.pack("<I", (99) | (49 << 14)) + b"\x00" * 10
    assert media.sniff(lossless).width == 100
    assert media.sniff(lossless).height == 50
    extended = b"RIFF\x00\x00\x00\x00WEBPVP8X\x00\x00\x00\x00" + b"\x00" * 4
    extended += (1199).to_bytes(3, "little") + (799).to_bytes(3, "little")
    assert (media.sniff(extended).width, media.sniff(extended).height) == (1200, 800)
    for bad in (b"Hallo, ich bin ein Text.", b"\x89PNG\r\n\x1a\n", b"", b"<svg></svg>"):
        with pytest.raises(media.ImageRefused):
            media.sniff(bad)
    with pytest.raises(media.ImageRefused, match="höchstens 10000"):
        media.sniff(png(20000, 1))


async def test_an_upload_must_be_a_real_image_of_at_most_8_mb(
    site: Site, engine: AsyncEngine
) -> None:
    async with session(site, EDITOR) as http:
        token = await csrf(http)
        fields = with_csrf(token, replaced(example_fields(), image__alt="Ein Bild"))
        status, page, _where = await post(
            http, "/admin/ankuendigungen/neu", fields, ("foto.png", b"Das ist nur Text.\n" * 10)
        )
        assert status == 400
        assert "kein Bild im Format PNG, JPEG, GIF oder WebP" in page
        assert re.search(r'id="image-file" name="image-file"[^>]*aria-invalid="true"', page)
        assert input_value(page, "blocks-2-partners-1-name") == "Bertelsmann Stiftung"
        assert textarea_value(page, "image-alt") == "Ein Bild"
        oversized = png() + b"\x00" * (media.MAX_BYTES + 1)
        status, page, _where = await post(
            http, "/admin/ankuendigungen/neu", fields, ("gross.png", oversized)
        )
        assert status == 400
        assert "Das Bild ist größer als 8 MB." in page
        assert input_value(page, "title") == "Weltoffene Kommunen – Vom Dialog zum Zusammenhalt"
        assert await count_announcements(engine) == 0

        image = png(6, 4)
        without_alt = with_csrf(token, example_fields())
        status, page, _where = await post(
            http, "/admin/ankuendigungen/neu", without_alt, ("bild.png", image)
        )
        assert status == 400  # the alt text is required: the image waits in the form
        assert re.search(r'id="image-alt" name="image-alt"[^>]*aria-invalid="true"', page)
        src = input_value(page, "image-src")
        media_token = media.token_of(site.public_url, src)
        assert media_token is not None, src  # an unguessable token, not a sequential id
        fields = replaced(
            example_fields(),
            image__src=src,
            image__width=input_value(page, "image-width"),
            image__height=input_value(page, "image-height"),
            image__alt="Teilnehmende der Regionalkonferenz in Potsdam",
        )
        status, _page, location = await post(
            http, "/admin/ankuendigungen/neu", with_csrf(token, fields)
        )
        assert status == 303
        async with http.get(f"/medien/{media_token}") as answer:
            assert answer.status == 404  # private until its announcement is released
        async with http.get(f"/admin/medien/{media_token}") as answer:  # staff see it
            assert answer.status == 200
            assert await answer.read() == image
            assert answer.headers["Content-Type"] == "image/png"
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["Cache-Control"].startswith("private")
        status, _page, _where = await post(
            http,
            "/admin/ankuendigungen/neu",
            with_csrf(token, example_fields(), "preview"),
            ("nochmal.png", image),
        )
        assert input_value(_page, "image-src") == src  # the same bytes are the same image
        staff_src = f"{site.public_url}/admin/medien/{media_token}"
        assert f'<img src="{staff_src}"' in _page  # the form shows it as staff may see it
        _status, fragment, _where = await post(
            http, "/admin/ankuendigungen/vorschau", with_csrf(token, fields)
        )
        preview_src = re.search(
            rf'src="({re.escape(site.public_url)}/medien/{media_token}\?vorschau=[^"]+)"',
            unescape(fragment),
        )
        assert preview_src, "the preview's frames (no cookies there) get a signed address"
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.get(unescape(preview_src.group(1))) as answer:
                assert answer.status == 200
            async with anonymous.get(f"{site.public_url}/medien/{media_token}?vorschau=x") as no:
                assert no.status == 404
    saved = await workflow.load(engine, created_id(location))
    assert saved.announcement.image == Image(
        src=src, alt="Teilnehmende der Regionalkonferenz in Potsdam", width=6, height=4
    )


# --- the preview ---------------------------------------------------------------------------------


async def test_the_preview_fragment_shows_every_channel_with_counts(site: Site) -> None:
    async with session(site, EDITOR) as http:
        token = await csrf(http)
        fields = [("csrf", token), *example_fields()]
        status, fragment, _where = await post(http, "/admin/ankuendigungen/vorschau", fields)
        assert status == 200
        assert "<html" not in fragment  # a fragment, not a page
        assert fragment.count('sandbox=""') == 2
        assert "allow-scripts" not in fragment
        assert "Desktop (640 px)" in fragment
        assert "Smartphone (375 px)" in fragment
        posts = re.findall(r"(\d+)/(\d+) · (\d+) von 300 Zeichen", fragment)
        assert len(posts) > 1  # split with the instance's limit, not the default 500
        assert all(int(length) <= 300 for _n, _total, length in posts)
        assert "Grenze der Instanz: 300 Zeichen" in fragment
        assert re.search(r"1/1 · \d+ von 4096 UTF-16-Einheiten", fragment)
        assert '<a href="https://www.phineo.org" rel="noopener noreferrer">PHINEO gAG</a>' in (
            fragment
        )
        broken = [("csrf", token), *replaced(example_fields(), title="")]
        _status, fragment, _where = await post(http, "/admin/ankuendigungen/vorschau", broken)
        assert "Noch keine Vorschau möglich" in fragment
        assert "Titel: Bitte ausfüllen." in fragment
        status, _fragment, _where = await post(
            http, "/admin/ankuendigungen/vorschau", example_fields()
        )
        assert status == 403


XSS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


@pytest.mark.parametrize("payload", XSS)
async def test_what_people_type_is_escaped_everywhere(site: Site, payload: str) -> None:
    single = f"A {payload} B"
    url = "https://example.org/?q=" + payload.replace(" ", "")
    text_fields = {
        name: single
        for name, value in example_fields()
        if value
        and not name.endswith(("type", "role", "start", "url", "visibility", "at"))
        and name not in ("language", "topics", "hashtags", "archive")
    }
    fields = [(name, text_fields.get(name, value)) for name, value in example_fields()]
    fields = replaced(
        fields,
        link=url,
        blocks__4__url=url,
        blocks__2__partners__0__url=url,
        channels__email__subject=single,
        channels__mastodon__content_warning=single,
        blocks__2__partners__2__role="other",
        blocks__2__partners__2__role_label=single,
    )
    async with session(site, EDITOR) as http:
        token = await csrf(http)
        _status, fragment, _where = await post(
            http, "/admin/ankuendigungen/vorschau", [("csrf", token), *fields]
        )
        status, page, location = await post(
            http, "/admin/ankuendigungen/neu", with_csrf(token, fields)
        )
        assert status == 303, page
        async with http.get(location) as answer:
            page = await answer.text()
        invalid = replaced(fields, hashtags=payload, topics=payload, title="")
        _status, invalid_page, _where = await post(
            http, "/admin/ankuendigungen/neu", with_csrf(token, invalid)
        )
    assert "Mastodon-Thread" in fragment
    for html in (page, fragment, invalid_page):
        assert payload not in html
        assert "<img src=x" not in html
        assert "<script>" not in html
        assert html.count("<script") == html.count('<script src="/static/admin.js"')
    assert page.count(str(markup_escape(single))) > 10  # every field shows it, escaped
    assert str(markup_escape(payload)) in invalid_page
    for frame in re.findall(r"<iframe[^>]*>", fragment):
        assert 'sandbox=""' in frame


def markup_escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


# --- the steps -----------------------------------------------------------------------------------


async def test_editors_submit_and_only_another_publisher_approves(
    site: Site, engine: AsyncEngine
) -> None:
    async with session(site, EDITOR) as eva:
        by_eva = await create_example(eva)
        status, _page, location = await step(eva, by_eva, "einreichen")
        assert (status, location) == (303, f"/admin/ankuendigungen/{by_eva}?hinweis=einreichen")
        async with eva.get(f"/admin/ankuendigungen/{by_eva}") as answer:
            page = await answer.text()
        assert "/freigeben" not in page
        status, page, _where = await step(eva, by_eva, "freigeben")
        assert status == 403
        assert "fehlt Ihrer Rolle die Berechtigung" in page
        status, page, _where = await step(eva, by_eva, "planen", at="2030-05-04T10:30")
        assert status == 403
    assert (await workflow.load(engine, by_eva)).status == S.IN_REVIEW
    async with session(site, PUBLISHER) as paul:
        by_paul = await create_example(paul)
        await step(paul, by_paul, "einreichen")
        async with paul.get(f"/admin/ankuendigungen/{by_paul}") as answer:
            page = await answer.text()
        assert "/freigeben" not in page  # not offered to the author …
        assert "Vier-Augen-Prinzip" in page
        status, page, _where = await step(paul, by_paul, "freigeben")  # … and refused
        assert status == 403
        assert "Eine andere Person muss Ihre eigene Ankündigung freigeben" in page
        status, _page, _where = await step(paul, by_eva, "freigeben")
        assert status == 303
    assert (await workflow.load(engine, by_paul)).status == S.IN_REVIEW
    assert (await workflow.load(engine, by_eva)).status == S.APPROVED
    async with session(site, OTHER) as pia:
        async with pia.get(f"/admin/ankuendigungen/{by_paul}") as answer:
            assert "/freigeben" in await answer.text()
        status, _page, _where = await step(pia, by_paul, "freigeben")
        assert status == 303
    assert (await workflow.load(engine, by_paul)).approved_by is not None


async def test_scheduling_reads_berlin_time_across_both_dst_changes(
    site: Site, engine: AsyncEngine
) -> None:
    async with session(site, EDITOR) as eva:
        announcement_id = await create_example(eva)
        await step(eva, announcement_id, "einreichen")
    async with session(site, PUBLISHER) as paul:
        await step(paul, announcement_id, "freigeben")
        status, page, _where = await step(paul, announcement_id, "planen", at="2027-03-28T02:30")
        assert status == 400
        assert "28.03.2027, 02:30 gibt es in Europe/Berlin nicht" in page
        assert 'name="at" value="2027-03-28T02:30"' in page  # what was typed stays
        assert (await workflow.load(engine, announcement_id)).status == S.APPROVED
        status, _page, location = await step(paul, announcement_id, "planen", at="2027-10-31T02:30")
        assert location.endswith("?hinweis=planen-doppelt")
        planned = await workflow.load(engine, announcement_id)
        assert planned.status == S.SCHEDULED
        assert planned.publish_at == datetime(2027, 10, 31, 0, 30, tzinfo=UTC)  # first: CEST
        async with paul.get(location) as answer:
            page = await answer.text()
        assert "gibt es in dieser Nacht zweimal" in page
        assert "02:30 Uhr MESZ (00:30 UTC)" in page
        status, _page, _where = await step(paul, announcement_id, "planen", at="2027-07-01T10:00")
        assert status == 303  # rescheduled
    assert (await workflow.load(engine, announcement_id)).publish_at == datetime(
        2027, 7, 1, 8, 0, tzinfo=UTC
    )


def test_berlin_times_convert_in_winter_and_summer() -> None:
    assert berlin_moment("2027-01-15T12:00") == (datetime(2027, 1, 15, 11, 0, tzinfo=UTC), False)
    assert berlin_moment("2027-03-28T03:30") == (datetime(2027, 3, 28, 1, 30, tzinfo=UTC), False)
    assert berlin_moment("2027-10-31T02:30") == (datetime(2027, 10, 31, 0, 30, tzinfo=UTC), True)
    assert berlin_moment("2027-10-31T03:00") == (datetime(2027, 10, 31, 2, 0, tzinfo=UTC), False)


async def test_cancel_needs_the_tick_and_anything_can_be_copied(
    site: Site, engine: AsyncEngine
) -> None:
    async with session(site, EDITOR) as eva:
        announcement_id = await create_example(eva)
        status, page, _where = await step(eva, announcement_id, "abbrechen")
        assert status == 400
        assert "Bitte bestätigen Sie den Abbruch" in page
        status, _page, _where = await step(eva, announcement_id, "abbrechen", confirm="yes")
        assert status == 303
        assert (await workflow.load(engine, announcement_id)).status == S.CANCELLED
        async with eva.get(f"/admin/ankuendigungen/{announcement_id}") as answer:
            page = await answer.text()
        assert "kann nicht mehr geändert werden" in page
        assert '<fieldset class="frame" disabled>' in page
        status, _page, location = await step(eva, announcement_id, "kopieren")
        assert status == 303
        copy = await workflow.load(engine, created_id(location))
    assert copy.status == S.DRAFT
    assert copy.announcement.title == expected_example().title


async def test_a_sent_announcement_links_to_its_delivery_and_can_only_be_copied(
    site: Site, engine: AsyncEngine
) -> None:
    async with session(site, EDITOR) as http:
        announcement_id = await create_example(http)
        async with engine.begin() as conn:
            await conn.execute(
                update(announcements)
                .where(announcements.c.id == announcement_id)
                .values(status=str(S.SENT))
            )
        path = f"/admin/ankuendigungen/{announcement_id}"
        async with http.get(path) as answer:
            page = await answer.text()
        assert f'href="{path}/versand"' in page
        assert '<fieldset class="frame" disabled>' in page
        assert f'action="{path}/kopieren"' in page
        assert f'action="{path}/einreichen"' not in page
        assert f'action="{path}/abbrechen"' not in page
        fields = [*with_csrf(await csrf(http, path), example_fields()), ("version", "1")]
        status, page, _where = await post(http, path, fields)
        assert status == 409
        assert "kann nicht mehr geändert werden" in page
        async with http.get(f"{path}?lang=en") as answer:
            assert answer.status == 200
    assert (await workflow.load(engine, announcement_id)).status == S.SENT


async def test_every_post_needs_the_csrf_token(site: Site, engine: AsyncEngine) -> None:
    async with session(site, EDITOR) as http:
        announcement_id = await create_example(http)
        for path in (
            "/admin/ankuendigungen/neu",
            "/admin/ankuendigungen/vorschau",
            f"/admin/ankuendigungen/{announcement_id}",
            f"/admin/ankuendigungen/{announcement_id}/einreichen",
            "/admin/konto/telegram",
        ):
            fields = [*example_fields(), ("action", "save"), ("version", "1")]
            status, _page, _where = await post(http, path, fields)
            assert status == 403, path
    assert await count_announcements(engine) == 1
    assert (await workflow.load(engine, announcement_id)).status == S.DRAFT


async def test_send_a_test_to_my_address_and_my_telegram_chat(
    site: Site, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:  # as /verbinden does (tests/test_staff_telegram.py)
        await conn.execute(
            update(users)
            .where(users.c.email == EDITOR)
            .values(telegram_chat_id=4242, telegram_linked_at=datetime.now(UTC))
        )
    async with session(site, EDITOR) as http:
        announcement_id = await create_example(http)
        status, page, _where = await step(http, announcement_id, "test")
    assert status == 200, page
    assert "E-Mail an eva@bzi.example.org gesendet." in page
    assert "Telegram: 1 Nachricht an Chat 4242 gesendet." in page

    async def mailed() -> bool:
        return any(r.recipient == EDITOR for r in site.smtp.received)

    await wait_until(mailed, timeout=10)
    message = next(r for r in site.smtp.received if r.recipient == EDITOR).message()
    assert message["Subject"] == "[Test] Weltoffene Kommunen – Vom Dialog zum Zusammenhalt"
    html = message.get_body(("html",))
    assert html is not None
    assert "Dr. Nergiz" in html.get_content()
    sent = site.telegram.messages_to(4242)
    assert len(sent) == 1
    assert sent[0].text.startswith("[Test] Weltoffene Kommunen")


async def test_a_test_send_shows_the_drafts_private_image(site: Site, engine: AsyncEngine) -> None:
    """The draft's image answers 404 at its public address until release; the test mail links it
    signed for an hour, and Telegram gets it uploaded from the store."""
    async with engine.begin() as conn:
        await conn.execute(
            update(users)
            .where(users.c.email == EDITOR)
            .values(telegram_chat_id=4243, telegram_linked_at=datetime.now(UTC))
        )
    async with session(site, EDITOR) as http:
        token = await csrf(http)
        fields = with_csrf(token, replaced(example_fields(), image__alt="Das Podium"))
        status, page, location = await post(
            http, "/admin/ankuendigungen/neu", fields, ("bild.png", png(6, 4))
        )
        assert status == 303, page
        status, page, _where = await step(http, created_id(location), "test")
    assert status == 200, page
    assert "Telegram: 2 Nachrichten an Chat 4243 gesendet." in page  # a caption, then the rest

    async def mailed() -> bool:
        return any(r.recipient == EDITOR for r in site.smtp.received)

    await wait_until(mailed, timeout=10)
    message = next(r for r in site.smtp.received if r.recipient == EDITOR).message()
    html = message.get_body(("html",))
    assert html is not None
    found = re.search(r'<img[^>]+src="([^"]+/medien/[^"]+)"', html.get_content())
    assert found, html.get_content()
    address = found.group(1).replace("&amp;", "&")
    assert "?vorschau=" in address
    async with aiohttp.ClientSession() as anonymous, anonymous.get(address) as answer:
        assert answer.status == 200
        assert await answer.read() == png(6, 4)
    photos = [p["photo"] for m, p in site.telegram.calls if m == "sendPhoto"]
    assert photos == [UPLOAD]  # the bytes, not the address nobody outside may fetch yet


async def test_an_image_address_is_fetched_at_saving_only_if_https_and_public(
    site: Site, engine: AsyncEngine
) -> None:
    """The channels never fetch an address typed in: saving fetches it, within the rules of
    issue 13, item 3, or refuses it."""
    async with session(site, EDITOR) as http:
        token = await csrf(http)
        for src, why in (
            ("http://169.254.169.254/latest/meta-data", "nur https-Adressen"),
            ("https://169.254.169.254/latest/meta-data", "nicht im öffentlichen Internet"),
            ("https://127.0.0.1/bild.png", "nicht im öffentlichen Internet"),
        ):
            fields = replaced(example_fields(), image__src=src, image__alt="Ein Bild")
            status, page, _where = await post(
                http, "/admin/ankuendigungen/neu", with_csrf(token, fields)
            )
            assert status == 400
            assert why in unescape(page)
            assert input_value(page, "image-src") == ""
    assert await count_announcements(engine) == 0


async def test_without_an_answering_instance_the_preview_uses_the_default_limits() -> None:
    closed = free_port()
    settings = MastodonSettings(enabled=True, base_url=f"http://127.0.0.1:{closed}")
    assert await MastodonLimits(settings).get() == (ThreadLimits(), False)
    assert await MastodonLimits(MastodonSettings(enabled=False)).get() == (ThreadLimits(), False)


# --- in the browser ------------------------------------------------------------------------------


@pytest.mark.browser
async def test_the_live_preview_renders_in_chromium_under_the_sites_csp(site: Site) -> None:
    """admin.js refreshes the preview while typing; the sandboxed email iframes render, with the
    uploaded image, under the site's Content-Security-Policy; nothing typed runs."""
    require_or_skip(CHROMIUM.exists() and shutil.which("chromium") is not None, "/usr/bin/chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"]
        )
        try:
            context = await browser.new_context(
                viewport={"width": 1600, "height": 1000}, locale="de-DE"
            )
            page = await context.new_page()
            trouble: list[str] = []
            page.on("pageerror", lambda error: trouble.append(str(error)))
            page.on("dialog", lambda dialog: trouble.append(f"dialog: {dialog.message}"))
            page.on(
                "console",
                lambda message: (
                    trouble.append(message.text)
                    if "Content Security Policy" in message.text
                    else None
                ),
            )
            await page.goto(f"{site.url}/admin/anmelden")
            await page.get_by_label("E-Mail-Adresse").fill(EDITOR)
            await page.get_by_label("Passwort").fill(PASSWORD)
            await page.get_by_role("button", name="Anmelden").click()
            await page.goto(f"{site.url}/admin/ankuendigungen/neu")
            await page.get_by_role("button", name="Text", exact=True).click()
            await page.locator("#title").fill("Live-Vorschau")
            await page.locator("#blocks-0-text").fill("Erster Absatz <script>alert(1)</script>")

            async def frames_show(text: str) -> bool:
                frames = page.frames[1:]
                bodies = [await f.evaluate("document.body.innerText") for f in frames]
                return len(bodies) == 2 and all(text in body for body in bodies)

            await wait_until(lambda: frames_show("Live-Vorschau"), timeout=15)
            assert await frames_show("<script>alert(1)</script>")  # shown as text, not run
            picture = ARTIFACTS / "editor-bild.png"
            picture.write_bytes(png(300, 200))
            await page.locator("#image-file").set_input_files(str(picture))
            await page.locator("#image-alt").fill("Ein Rechteck in der Akzentfarbe")
            await (
                page.locator(".form-actions")
                .get_by_role("button", name="Vorschau aktualisieren")
                .click()
            )
            await wait_until(lambda: frames_show("Live-Vorschau"), timeout=15)
            for frame in page.frames[1:]:
                widths = await frame.evaluate(
                    "Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)"
                )
                assert widths == [300]  # loaded inside the sandbox, under the page's CSP
            await page.screenshot(path=str(ARTIFACTS / "editor-1600px.png"), full_page=True)
        finally:
            await browser.close()
    assert trouble == []
