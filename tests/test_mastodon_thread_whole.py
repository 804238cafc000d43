"""A Mastodon thread goes out whole or not at all (issue 12, 4 and 6).

Every part is checked against the instance's limits before the first is posted; a thread that
stops half-way is shown as incomplete on the dashboard, where a publisher publishes the rest or
deletes what was posted; a part first tried over 55 minutes ago (Mastodon has forgotten its
Idempotency-Key) is looked up among the account's statuses and adopted, not posted twice.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from mastodon import Mastodon
from pydantic import SecretStr
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.channels import mastodon as mastodon_channel
from bzi_broadcast.channels.images import read_local_image
from bzi_broadcast.channels.mastodon import MastodonChannel
from bzi_broadcast.content import Announcement, parse_announcement
from bzi_broadcast.content.model import Visibility
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.delivery.outbox import Claimed
from bzi_broadcast.errors import PermanentError, UnknownOutcomeError
from bzi_broadcast.render import Renderer, ThreadLimits
from bzi_broadcast.render.renditions import MastodonPost, MastodonRendition
from bzi_broadcast.service import Service
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.parts import Parts
from bzi_broadcast.store.schema import audit_log, deliveries, delivery_parts
from bzi_broadcast.testing import mastodon as local_mastodon
from bzi_broadcast.testing.mastodon import Fault, MastodonServer
from bzi_broadcast.testing.smtp import SmtpCapture

from .test_admin import CSRF
from .test_dashboard import _as, _page, _post, _staff, _status_is
from .test_delivery import serving, settings_for, wait_until

T = TypeVar("T")
INSTANCES = Path(__file__).parent / "fixtures" / "mastodon_instances"
STATUSES = "/api/v1/statuses"
REFUSED = Fault(status=422, error="Validation failed: Text character limit of 500 exceeded")


def five_parts() -> Announcement:
    """An announcement that makes a thread of exactly five posts at 500 characters."""
    paragraph = "Wir laden herzlich ein. " * 17
    blocks = [{"type": "text", "text": f"Absatz {i}: {paragraph}"} for i in range(5)]
    data = {"title": "Fünf Teile", "blocks": blocks}
    return parse_announcement(json.dumps(data), fmt="json")


def posts_to_statuses(api: MastodonServer) -> list[dict[str, Any]]:
    return [c[2] for c in api.calls if c[0] == "POST" and c[1] == STATUSES]


# --- the channel on its own: pre-flight and the hour of the Idempotency-Key --------------------


class FixedPosts:
    """A renderer that gives fixed posts: what a renderer bug or an instance's smaller limits
    could produce, which the pre-flight check must catch."""

    def __init__(self, posts: list[MastodonPost]) -> None:
        self._posts = tuple(posts)

    def mastodon(self, _announcement: Announcement, limits: ThreadLimits) -> MastodonRendition:
        return MastodonRendition(
            posts=self._posts, max_characters=limits.max_characters, url_length=limits.url_length
        )

    async def off_loop(self, work: Callable[..., T], *args: Any) -> T:
        return work(*args)


def post(text: str = "Ein Teil.", **fields: Any) -> MastodonPost:
    values: dict[str, Any] = {
        "text": text,
        "spoiler_text": "",
        "language": "de",
        "visibility": Visibility.PUBLIC,
        "length": len(text),
    }
    return MastodonPost(**(values | fields))


@contextlib.asynccontextmanager
async def channel_for(
    base_url: str, renderer: Any, engine: AsyncEngine, image_root: Path | None = None
) -> AsyncIterator[Any]:
    client = Mastodon(
        access_token="secret",
        api_base_url=base_url,
        ratelimit_method="throw",
        version_check_mode="created",
        mastodon_version="4.3.0",
        request_timeout=10,
    )
    channel = MastodonChannel(
        client, cast(Renderer, renderer), Parts(engine), image_root=image_root
    )
    try:
        yield channel
    finally:
        await channel.aclose()


async def a_delivery(engine: AsyncEngine, announcement: Announcement) -> Claimed:
    announcement_id = await Announcements(engine).create(announcement, actor="test")
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(deliveries).values(
                announcement_id=announcement_id,
                channel="mastodon",
                recipient="local",
                status="sending",
                attempts=0,
                next_attempt_at=datetime.now(UTC),
            )
        )
    delivery_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    return Claimed(
        id=delivery_id,
        announcement_id=announcement_id,
        channel="mastodon",
        recipient="local",
        subscriber_id=None,
        attempts=0,
    )


LONG = "x" * 612
CASES = {
    "too long": (
        [post(), post(), post(LONG), post()],
        "Mastodon: Teil 3 von 4: 612 von 500 Zeichen",
    ),
    "too many media": (
        [post(media=tuple(f"bild{i}.png" for i in range(5)), media_description="Bild"), post()],
        "Mastodon: Teil 1 von 2: 5 Bilder, die Instanz erlaubt 4",
    ),
    "alt text too long": (
        [post(), post(media=("bild.png",), media_description="a" * 1501)],
        "Mastodon: Teil 2 von 2: Alternativtext mit 1501 von 1500 Zeichen",
    ),
    "content warning too long": (
        [post(spoiler_text="w" * 251), post(spoiler_text="w" * 251)],
        "Mastodon: Teil 1 von 2: Inhaltswarnung mit 251 Zeichen, höchstens 250 erlaubt",
    ),
}


@pytest.mark.parametrize("case", CASES)
async def test_a_part_the_instance_would_refuse_fails_before_anything_is_posted(
    engine: AsyncEngine, mastodon_api: tuple[MastodonServer, str], case: str
) -> None:
    api, url = mastodon_api
    posts, message = CASES[case]
    delivery = await a_delivery(engine, five_parts())
    async with channel_for(url, FixedPosts(posts), engine) as channel:
        with pytest.raises(PermanentError) as refused:
            await channel.send(five_parts(), delivery)
    assert refused.value.message == message
    assert posts_to_statuses(api) == []
    assert not [c for c in api.calls if c[1] == "/api/v2/media"]  # no image uploaded either
    assert api.statuses == {}
    assert await Parts(engine).of(delivery.id) == {}  # nothing begun


def small_instance(image_size_limit: int) -> dict[str, Any]:
    """Mastodon 4.3's instance document with a small image limit, PNG only."""
    document: dict[str, Any] = json.loads((INSTANCES / "mastodon-4.3-v2.json").read_text())
    media = document["configuration"]["media_attachments"]
    media.update(image_size_limit=image_size_limit, supported_mime_types=["image/png"])
    return document


@pytest.mark.parametrize(
    ("name", "size", "message"),
    [
        ("gross.png", 1001, "Mastodon: Teil 2 von 2: Bild gross.png ist größer als 1000 Bytes"),
        (
            "foto.jpg",
            10,
            "Mastodon: Teil 2 von 2: Bild foto.jpg hat den Typ image/jpeg, den die Instanz "
            "nicht annimmt",
        ),
    ],
)
async def test_an_image_the_instance_would_refuse_fails_before_anything_is_posted(
    engine: AsyncEngine,
    mastodon_api: tuple[MastodonServer, str],
    tmp_path: Path,
    name: str,
    size: int,
    message: str,
) -> None:
    api, url = mastodon_api
    api.instance_document = small_instance(1000)
    (tmp_path / name).write_bytes(b"\x89PNG" + b"\x00" * (size - 4))
    posts = [post(), post(media=(name,), media_description="Podium")]
    delivery = await a_delivery(engine, five_parts())
    async with channel_for(url, FixedPosts(posts), engine, image_root=tmp_path) as channel:
        with pytest.raises(PermanentError) as refused:
            await channel.send(five_parts(), delivery)
    assert refused.value.message == message
    assert posts_to_statuses(api) == []
    assert not [c for c in api.calls if c[1] == "/api/v2/media"]


async def test_an_image_is_read_once_and_uploaded_from_those_bytes(
    engine: AsyncEngine,
    mastodon_api: tuple[MastodonServer, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, url = mastodon_api
    api.instance_document = small_instance(1000)
    png = b"\x89PNG" + b"\x01" * 200
    (tmp_path / "podium.png").write_bytes(png)
    reads: list[str] = []

    def counted(root: Path, src: str) -> bytes:
        reads.append(src)
        return read_local_image(root, src)

    monkeypatch.setattr(mastodon_channel, "read_local_image", counted)
    posts = [post(media=("podium.png",), media_description="Podium"), post()]
    delivery = await a_delivery(engine, five_parts())
    async with channel_for(url, FixedPosts(posts), engine, image_root=tmp_path) as channel:
        await channel.send(five_parts(), delivery)
    assert reads == ["podium.png"]
    first = api.thread()[0]
    assert api.media[first["media_attachments"][0]["id"]].content == png
    assert first["media_attachments"][0]["description"] == "Podium"


async def test_a_part_tried_over_55_minutes_ago_that_the_server_has_is_adopted(
    engine: AsyncEngine, mastodon_api: tuple[MastodonServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, url = mastodon_api
    delivery = await a_delivery(engine, five_parts())
    api.inject("POST /api/v1/statuses", Fault(drop=True, after=True, on_call=3))
    async with channel_for(url, Renderer(), engine) as channel:
        with pytest.raises(UnknownOutcomeError):  # part 3 was posted, its answer lost
            await channel.send(five_parts(), delivery)
        await _first_attempt_back(engine, delivery.id, part=2, minutes=56)
        monkeypatch.setattr(local_mastodon, "IDEMPOTENCY_TTL", 0.0)  # the hour has passed there
        await channel.send(five_parts(), delivery)
    thread = api.thread()
    assert len(thread) == 5
    assert len({s["text"] for s in thread}) == 5  # part 3 not posted a second time
    assert all(thread[i]["in_reply_to_id"] == thread[i - 1]["id"] for i in range(1, 5))
    assert len(posts_to_statuses(api)) == 5  # part 3 was looked up, not posted again
    assert [c for c in api.calls if c[1] == "/api/v1/accounts/1/statuses"]
    assert (await Parts(engine).of(delivery.id))[2].remote_id == thread[2]["id"]


async def test_a_part_tried_less_than_55_minutes_ago_is_posted_again_with_its_key(
    engine: AsyncEngine, mastodon_api: tuple[MastodonServer, str]
) -> None:
    api, url = mastodon_api
    delivery = await a_delivery(engine, five_parts())
    api.inject("POST /api/v1/statuses", Fault(drop=True, after=True, on_call=3))
    async with channel_for(url, Renderer(), engine) as channel:
        with pytest.raises(UnknownOutcomeError):
            await channel.send(five_parts(), delivery)
        await _first_attempt_back(engine, delivery.id, part=2, minutes=54)
        await channel.send(five_parts(), delivery)
    thread = api.thread()
    assert len(thread) == 5
    assert len({s["text"] for s in thread}) == 5  # the key made the repeat harmless
    keys = [headers.get("Idempotency-Key") for headers in posts_to_statuses(api)]
    assert len(keys) == 6
    assert keys[2] == keys[3]  # part 3 again, with its key
    assert not [c for c in api.calls if c[1] == "/api/v1/accounts/1/statuses"]


async def _first_attempt_back(
    engine: AsyncEngine, delivery_id: int, *, part: int, minutes: int
) -> None:
    async with engine.begin() as conn:
        changed = await conn.execute(
            update(delivery_parts)
            .where(delivery_parts.c.delivery_id == delivery_id, delivery_parts.c.part == part)
            .values(first_attempt_at=datetime.now(UTC) - timedelta(minutes=minutes))
        )
    assert changed.rowcount == 1


# --- an incomplete thread on the dashboard --------------------------------------------------------


@contextlib.asynccontextmanager
async def incomplete_thread(
    engine: AsyncEngine, database_url: str, api: MastodonServer, url: str
) -> AsyncIterator[tuple[str, int]]:
    """A running service whose five-part thread was refused at part 3 (a 422): 2 of 5 public."""
    await _staff(engine)
    api.inject("POST /api/v1/statuses", Fault(status=422, error=REFUSED.error, on_call=3))
    async with SmtpCapture() as smtp:
        base = settings_for(database_url, smtp.port)
        mastodon = {"enabled": True, "base_url": url, "access_token": SecretStr("secret")}
        settings = base.model_copy(update={"mastodon": base.mastodon.model_copy(update=mastodon)})
        announcement_id = await Announcements(engine).create(
            five_parts(), actor="test", status=S.SCHEDULED, publish_at=datetime.now(UTC)
        )
        async with serving(Service(settings)) as base_url:
            await wait_until(
                lambda: _status_is(engine, announcement_id, S.PARTIALLY_FAILED), timeout=60
            )
            yield base_url, announcement_id


async def _mastodon_row(engine: AsyncEngine, announcement_id: int) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                select(deliveries).where(
                    deliveries.c.announcement_id == announcement_id,
                    deliveries.c.channel == "mastodon",
                )
            )
        ).one()


async def _actions(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(audit_log.c.action))).scalars())


async def test_an_incomplete_thread_is_shown_and_its_rest_published_without_duplicates(
    engine: AsyncEngine, database_url: str, mastodon_api: tuple[MastodonServer, str]
) -> None:
    api, url = mastodon_api
    async with incomplete_thread(engine, database_url, api, url) as (base, announcement_id):
        row = await _mastodon_row(engine, announcement_id)
        assert row.status == "failed"
        assert row.attempts == 1  # a 422 is final: no retries
        versand = f"/admin/ankuendigungen/{announcement_id}/versand"
        async with await _as(base, "Paul") as http:
            page = await _page(http, versand)
            assert "Thread unvollständig (2 von 5 veröffentlicht)" in page
            links = re.findall(r'href="(https://mastodon\.local/@bzi/\d+)"', page)
            assert links == [s["url"] for s in api.thread()]
            assert len(links) == 2
            assert "Rest veröffentlichen" in page
            assert "Veröffentlichte Teile löschen" in page

            answer = await _post(http, f"{versand}/thread/rest", delivery=str(row.id))
            assert answer.status == 303
            await wait_until(lambda: _status_is(engine, announcement_id, S.SENT), timeout=60)
            page = await _page(http, answer.headers["Location"])
        assert "Der Rest des Mastodon-Threads wird veröffentlicht." in page
        assert "Thread unvollständig" not in page
    thread = api.thread()
    expected = Renderer().mastodon(five_parts(), ThreadLimits()).posts
    assert [s["text"] for s in thread] == [p.text for p in expected]  # each part once, in order
    assert all(thread[i]["in_reply_to_id"] == thread[i - 1]["id"] for i in range(1, 5))
    assert len(posts_to_statuses(api)) == 6  # five parts and the refused attempt
    assert (await _mastodon_row(engine, announcement_id)).status == "sent"
    assert "mastodon.thread_resumed" in await _actions(engine)


async def test_the_posted_parts_of_an_incomplete_thread_are_deleted_newest_first(
    engine: AsyncEngine, database_url: str, mastodon_api: tuple[MastodonServer, str]
) -> None:
    api, url = mastodon_api
    async with incomplete_thread(engine, database_url, api, url) as (base, announcement_id):
        posted = [s["id"] for s in api.thread()]
        row = await _mastodon_row(engine, announcement_id)
        versand = f"/admin/ankuendigungen/{announcement_id}/versand"
        api.inject("DELETE /api/v1/statuses/{id}", Fault(status=503, error="Service Unavailable"))
        async with await _as(base, "Paul") as http:
            form = await _csrf_form(http, row.id)
            async with http.post(f"{versand}/thread/loeschen", data=form) as answer:
                assert answer.status == 200  # part 2 could not be deleted: the page says which
                page = await answer.text()
            assert "1 Teil gelöscht. Teil 2 nicht gelöscht: Mastodon: Service Unavailable" in page
            assert "Thread unvollständig (1 von 5 veröffentlicht)" in page
            assert list(api.statuses) == [posted[1]]

            answer = await _post(http, f"{versand}/thread/loeschen", delivery=str(row.id))
            assert answer.status == 303  # tried again: now it went
            page = await _page(http, answer.headers["Location"])
        assert "1 veröffentlichter Teil des Threads wurde gelöscht." in page
        assert "Thread unvollständig" not in page
        assert "mastodon.local/@bzi/" not in page  # no links to deleted posts
    assert api.statuses == {}
    deletes = [c[1] for c in api.calls if c[0] == "DELETE"]
    newest_first = [f"{STATUSES}/{posted[1]}", f"{STATUSES}/{posted[0]}"]
    assert deletes == [*newest_first, newest_first[0]]
    parts = await Parts(engine).of(row.id)
    assert [p.remote_id for p in parts.values() if p.deleted_at] == posted
    assert (await _actions(engine)).count("mastodon.thread_deleted") == 2


async def _csrf_form(http: Any, delivery_id: int) -> dict[str, str]:
    token = CSRF.search(await _page(http, "/admin"))
    assert token
    return {"csrf": token.group(1), "delivery": str(delivery_id)}


async def test_an_editor_or_a_request_without_csrf_token_changes_nothing(
    engine: AsyncEngine, database_url: str, mastodon_api: tuple[MastodonServer, str]
) -> None:
    api, url = mastodon_api
    async with incomplete_thread(engine, database_url, api, url) as (base, announcement_id):
        row = await _mastodon_row(engine, announcement_id)
        versand = f"/admin/ankuendigungen/{announcement_id}/versand"
        async with await _as(base, "Eva") as http:
            page = await _page(http, versand)
            assert "Thread unvollständig (2 von 5 veröffentlicht)" in page  # editors see it
            assert "Rest veröffentlichen" not in page  # but get no buttons
            for action in ("rest", "loeschen"):
                answer = await _post(http, f"{versand}/thread/{action}", delivery=str(row.id))
                assert answer.status == 403
        async with await _as(base, "Paul") as http:
            for action in ("rest", "loeschen"):
                answer = await _post(
                    http, f"{versand}/thread/{action}", csrf=False, delivery=str(row.id)
                )
                assert answer.status == 403
        assert (await _mastodon_row(engine, announcement_id)).status == "failed"
    assert len(api.statuses) == 2
    assert not [c for c in api.calls if c[0] == "DELETE"]
    actions = await _actions(engine)
    assert "mastodon.thread_resumed" not in actions
    assert "mastodon.thread_deleted" not in actions
