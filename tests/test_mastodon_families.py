"""The Mastodon channel against every server family's instance document.

Each document in tests/fixtures/mastodon_instances was written from the family's published API
docs or source (its ``_source`` key says where; it is stripped before the document is served).
The local server serves it (``/api/v2/instance`` answers 404 for the v1-only ones, as Mastodon
before 4.0 and Pleroma before ``show2.json`` do) and enforces the limits below, so a thread split
with wrong limits would be refused with a 422. Mastodon.py also reads the v1 path to learn the
version; the local server answers it with the same document, which is enough for that (it reads
only ``version``).

EXPECTED is written by hand from the same sources, not from our parser: what the document says,
and the family's documented default where it says nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from mastodon import Mastodon
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.channels.mastodon import MastodonChannel
from bzi_broadcast.channels.mastodon_instance import InstanceLimits, detect, family_defaults
from bzi_broadcast.content import Announcement, load_announcement
from bzi_broadcast.errors import PermanentError
from bzi_broadcast.render import Renderer, ThreadLimits
from bzi_broadcast.render.counting import mastodon_length
from bzi_broadcast.store.parts import Parts
from bzi_broadcast.testing.mastodon import MastodonServer

from .conftest import EXAMPLE
from .test_mastodon_channel import run_announcement

FIXTURES = Path(__file__).parent / "fixtures" / "mastodon_instances"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Expected:
    family: str
    version: str
    max_characters: int
    url_length: int
    description_limit: int
    image_size_limit: int
    max_media_attachments: int


EXPECTED = {
    # Mastodon: alt text 1,500 (MediaAttachment::MAX_DESCRIPTION_LENGTH; in the document from 4.4).
    "mastodon-3.5-v1": Expected("mastodon", "3.5.3", 500, 23, 1500, 10 * MIB, 4),
    "mastodon-4.0-v2": Expected("mastodon", "4.0.2", 500, 23, 1500, 10 * MIB, 4),
    "mastodon-4.2-v2": Expected("mastodon", "4.2.1", 500, 23, 1500, 16 * MIB, 4),
    "mastodon-4.3-v2": Expected("mastodon", "4.3.0", 500, 23, 1500, 16 * MIB, 4),
    "mastodon-4.4-v2": Expected("mastodon", "4.4.0", 500, 23, 1500, 16 * MIB, 4),
    "mastodon-4.5-v2": Expected("mastodon", "4.5.0", 500, 23, 1500, 16 * MIB, 4),
    # GoToSocial: media-description-max-chars defaults to 1,500 and is never in the document.
    "gotosocial-0.17-v2": Expected("gotosocial", "0.17.0", 5000, 25, 1500, 40 * MIB, 6),
    "gotosocial-0.19-v2": Expected("gotosocial", "0.19.0", 5000, 25, 1500, 40 * MIB, 6),
    # Akkoma: only Pleroma's extras; max_media_attachments missing → Pleroma's default 1,000.
    "akkoma-3.x-v1": Expected("akkoma", "3.13.2", 5000, 23, 5000, 16_000_000, 1000),
    # Pleroma: characters_reserved_per_url 0 (URL at full length) cannot be expressed: 23.
    "pleroma-2.x-v1": Expected("pleroma", "2.7.0", 5000, 23, 5000, 16_000_000, 1000),
    "pleroma-2.x-v2": Expected("pleroma", "2.7.0", 5000, 23, 5000, 16_000_000, 1000),
}


def fixture(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text("utf-8"))
    assert document.pop("_source")  # every document says where it was taken from
    return document


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(EXPECTED)


@pytest.fixture
async def family_server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str]]:
    """The local server serving one family's document and enforcing its limits."""
    name: str = request.param
    want = EXPECTED[name]
    api = MastodonServer(
        token="secret",
        instance_document=fixture(name),
        has_instance_v2=name.endswith("-v2"),
        max_characters=want.max_characters,
        url_length=want.url_length,
        description_limit=want.description_limit,
    )
    http = TestServer(api.app(), host="127.0.0.1")
    await http.start_server()
    request.node.api = api
    yield name, f"http://127.0.0.1:{http.port}"
    await http.close()


def client(url: str) -> Mastodon:
    """Built as service.py builds it without ``server_version``: no version assumed."""
    return Mastodon(
        access_token="secret",
        api_base_url=url,
        ratelimit_method="throw",
        version_check_mode="none",
        request_timeout=10,
    )


@pytest.mark.parametrize("family_server", sorted(EXPECTED), indirect=True)
async def test_the_limits_are_read_with_the_familys_defaults(
    family_server: tuple[str, str],
) -> None:
    name, url = family_server
    channel = MastodonChannel(client(url), Renderer(), Parts(None))  # type: ignore[arg-type]
    try:
        limits = await channel.limits()
    finally:
        await channel.aclose()
    want = EXPECTED[name]
    assert (limits.family, limits.version) == (want.family, want.version)
    assert limits.thread == ThreadLimits(
        max_characters=want.max_characters, url_length=want.url_length
    )
    assert limits.description_limit == want.description_limit
    assert limits.image_size_limit == want.image_size_limit
    assert limits.max_media_attachments == want.max_media_attachments


@pytest.mark.parametrize("family_server", sorted(EXPECTED), indirect=True)
async def test_a_thread_with_an_image_is_posted_within_the_limits(
    engine: AsyncEngine,
    database_url: str,
    family_server: tuple[str, str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, url = family_server
    api: MastodonServer = request.node.api
    monkeypatch.chdir(tmp_path)  # the image is read below the working directory
    (tmp_path / "podium.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    data = json.loads(load_announcement(EXAMPLE).model_dump_json())
    data["image"] = {"src": "podium.jpg", "alt": "Podium der Regionalkonferenz in Potsdam"}
    announcement = Announcement.model_validate(data)
    await run_announcement(engine, database_url, url, announcement=announcement)
    want = EXPECTED[name]
    limits = ThreadLimits(max_characters=want.max_characters, url_length=want.url_length)
    expected = Renderer().mastodon(announcement, limits).posts
    thread = api.thread()
    assert [s["text"] for s in thread] == [p.text for p in expected]
    assert all(thread[i]["in_reply_to_id"] == thread[i - 1]["id"] for i in range(1, len(thread)))
    for status in thread:
        length = mastodon_length(
            status["text"], url_length=want.url_length, spoiler_text=status["spoiler_text"]
        )
        assert length <= want.max_characters
    media = thread[0]["media_attachments"]
    assert [m["description"] for m in media] == ["Podium der Regionalkonferenz in Potsdam"]


@pytest.mark.parametrize(
    ("version", "family", "own"),
    [
        ("4.3.0", "mastodon", "4.3.0"),
        ("4.2.1+glitch", "mastodon", "4.2.1"),
        ("4.0.0+hometown-1.1.0", "mastodon", "4.0.0"),
        ("0.19.0+git-5a3c1b2", "gotosocial", "0.19.0"),
        ("3.5.3+0.17.0-git-ccbc7e2", "gotosocial", "0.17.0-git-ccbc7e2"),  # injected version
        ("2.7.2 (compatible; Akkoma 3.13.2)", "akkoma", "3.13.2"),
        ("2.7.2 (compatible; Pleroma 2.7.0-12-gabc1234)", "pleroma", "2.7.0-12-gabc1234"),
    ],
)
def test_family_and_version_come_from_the_version_string(
    version: str, family: str, own: str
) -> None:
    assert detect({"version": version}) == (family, own)


def test_null_limits_get_the_defaults_of_the_detected_version() -> None:
    document = fixture("mastodon-3.5-v1")
    document["configuration"]["statuses"]["max_characters"] = None
    document["configuration"]["media_attachments"]["image_size_limit"] = None
    limits = InstanceLimits.parse(document)
    assert limits.thread.max_characters == 500
    assert (
        limits.image_size_limit == family_defaults(detect(document)[0], (3, 5, 3)).image_size_limit
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("statuses", "max_characters"), -1),
        (("statuses", "max_characters"), "viele"),
        (("statuses", "characters_reserved_per_url"), True),
        (("media_attachments", "description_limit"), -1500),
        (("media_attachments", "image_size_limit"), [16]),
    ],
)
def test_an_unusable_limit_is_a_permanent_error_naming_it(
    path: tuple[str, str], value: object
) -> None:
    document = fixture("mastodon-4.4-v2")
    document["configuration"][path[0]][path[1]] = value
    with pytest.raises(PermanentError) as raised:
        InstanceLimits.parse(document)
    assert "unbrauchbare Grenzen" in raised.value.message
    assert path[1] in raised.value.message


def test_a_document_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(PermanentError, match="unbrauchbare Grenzen"):
        InstanceLimits.parse(["not", "an", "instance"])


def test_pleromas_octet_stream_means_any_type_and_gotosocials_list_is_kept() -> None:
    # Pleroma lists only application/octet-stream: it takes every file (instance_view.ex).
    assert InstanceLimits.parse(fixture("pleroma-2.x-v2")).supported_mime_types == frozenset()
    gotosocial = InstanceLimits.parse(fixture("gotosocial-0.19-v2"))
    assert {"image/jpeg", "image/png", "image/webp"} <= gotosocial.supported_mime_types
