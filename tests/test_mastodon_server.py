"""The local Mastodon server, driven by the real Mastodon.py client over HTTP (in a thread, as
the channel will run it)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestServer
from mastodon import Mastodon, MastodonAPIError, MastodonRatelimitError, MastodonUnauthorizedError

from bzi_broadcast.content import Announcement
from bzi_broadcast.render import Renderer, ThreadLimits
from bzi_broadcast.testing.mastodon import Fault, MastodonServer

T = TypeVar("T")


@pytest.fixture
async def server() -> AsyncIterator[tuple[MastodonServer, str]]:
    api = MastodonServer(token="secret", processing_seconds=0.3)
    http = TestServer(api.app(), host="127.0.0.1")
    await http.start_server()
    yield api, f"http://127.0.0.1:{http.port}"
    await http.close()


def client(url: str, token: str = "secret") -> Mastodon:
    return Mastodon(
        access_token=token,
        api_base_url=url,
        ratelimit_method="throw",
        version_check_mode="created",
        mastodon_version="4.3.0",
        request_timeout=10,
    )


async def call(work: Callable[[], T]) -> T:
    return await asyncio.to_thread(work)


async def test_instance_limits_and_credentials(server: tuple[MastodonServer, str]) -> None:
    api, url = server
    api.max_characters = 1000
    mastodon = client(url)
    instance: Any = await call(mastodon.instance_v2)
    assert instance.configuration.statuses.max_characters == 1000
    assert instance.configuration.statuses.characters_reserved_per_url == 23
    assert instance.configuration.media_attachments.description_limit == 1500
    account: Any = await call(mastodon.account_verify_credentials)
    assert account.username == "bzi"
    with pytest.raises(MastodonUnauthorizedError):
        await call(client(url, "wrong").account_verify_credentials)


async def test_seed_thread_posts_in_order_with_idempotency(
    server: tuple[MastodonServer, str], renderer: Renderer, example: Announcement
) -> None:
    api, url = server
    mastodon = client(url)
    posts = renderer.mastodon(example).posts
    parent = None
    for number, post in enumerate(posts):
        status: Any = await call(
            partial(
                mastodon.status_post,
                post.text,
                in_reply_to_id=parent,
                visibility=str(post.visibility),
                language=post.language,
                idempotency_key=f"announcement-1-part-{number}",
            )
        )
        parent = status.id
    again: Any = await call(
        lambda: mastodon.status_post(
            posts[-1].text,
            in_reply_to_id=None,
            idempotency_key=f"announcement-1-part-{len(posts) - 1}",
        )
    )
    assert again.id == parent  # a retry with the same key returns the original
    thread = api.thread()
    assert len(thread) == len(posts)
    assert [s["text"] for s in thread] == [p.text for p in posts]
    assert all(thread[i]["in_reply_to_id"] == thread[i - 1]["id"] for i in range(1, len(thread)))


async def test_too_long_missing_parent_and_unprocessed_media(
    server: tuple[MastodonServer, str],
) -> None:
    _api, url = server
    mastodon = client(url)
    with pytest.raises(MastodonAPIError, match="character limit of 500"):
        await call(lambda: mastodon.status_post("x" * 501))
    long_url_post = "Link: https://example.org/" + "a" * 900
    assert (await call(lambda: mastodon.status_post(long_url_post))) is not None
    with pytest.raises(MastodonAPIError, match="Record not found"):
        await call(lambda: mastodon.status_post("Antwort", in_reply_to_id="424242"))
    media: Any = await call(
        lambda: mastodon.media_post(
            io.BytesIO(b"\xff\xd8fake"), mime_type="image/jpeg", description="Podium"
        )
    )
    assert media.url is None  # 202: still processing
    with pytest.raises(MastodonAPIError, match="finished processing"):
        await call(lambda: mastodon.status_post("Bild", media_ids=[media.id]))
    polled: Any = await call(lambda: mastodon.media(media.id))
    assert polled.url is None  # 206 while processing
    ready = await wait_processed(mastodon, media.id)
    assert ready.url is not None
    posted: Any = await call(lambda: mastodon.status_post("Bild", media_ids=[ready.id]))
    assert posted.media_attachments[0].description == "Podium"
    with pytest.raises(MastodonAPIError, match="Description is too long"):
        await call(
            lambda: mastodon.media_post(
                io.BytesIO(b"x"), mime_type="image/jpeg", description="x" * 1501
            )
        )


async def wait_processed(mastodon: Mastodon, media_id: str, timeout: float = 10) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            media: Any = await call(lambda: mastodon.media(media_id))
            if media.url:
                return media
            await asyncio.sleep(0.05)


async def test_rate_limit_headers_and_429(server: tuple[MastodonServer, str]) -> None:
    api, url = server
    api.requests_per_window = 3
    mastodon = client(url)
    await call(mastodon.account_verify_credentials)
    assert mastodon.ratelimit_limit == 3
    assert mastodon.ratelimit_remaining == 2
    await call(mastodon.account_verify_credentials)
    await call(mastodon.account_verify_credentials)
    with pytest.raises(MastodonRatelimitError):
        await call(mastodon.account_verify_credentials)
    assert mastodon.ratelimit_reset > 0


async def test_injected_server_error(server: tuple[MastodonServer, str]) -> None:
    api, url = server
    api.inject("POST /api/v1/statuses", Fault(status=503, error="Service Unavailable"))
    mastodon = client(url)
    with pytest.raises(MastodonAPIError):
        await call(lambda: mastodon.status_post("Hallo"))
    assert (await call(lambda: mastodon.status_post("Hallo"))) is not None
    assert len(api.thread()) == 1


def test_a_thousand_character_instance_needs_fewer_parts(
    renderer: Renderer, example: Announcement
) -> None:
    short = renderer.mastodon(example, ThreadLimits(max_characters=500))
    long = renderer.mastodon(example, ThreadLimits(max_characters=1000))
    assert len(long.posts) < len(short.posts)
