"""One contract, two servers: the Mastodon channel against ``mastodon-mock`` (a third-party
Mastodon API server, run unmodified) and against our local server (bzi_broadcast/testing, used by
the demo and the benchmarks), so that neither the client nor our server drifts from the other.

What each test assumes about a server, as the Mastodon API docs describe it:
- ``GET /api/v1/accounts/verify_credentials`` and ``GET /api/v1/accounts/:id/statuses`` (newest
  first) show what was posted; a status carries ``in_reply_to_id`` and its media's
  ``description``.
- ``POST /api/v1/statuses`` with an ``Idempotency-Key`` seen before returns the first status
  instead of creating a second.
- A 429 carries ``X-RateLimit-Reset`` as an ISO 8601 time (docs: api/rate-limits).

Faults: mastodon-mock injects a 429 through its ``/api/v1/_mock/faults`` control plane, with the
ISO reset header set explicitly (its default for that header is Unix seconds, which real
Mastodon does not send; not copied). It cannot lose a response after doing the work (its
"timeout" fault waits *before* the work), so that test puts a small aiohttp proxy in front of
either server that forwards the request and then drops the connection instead of answering.

Where mastodon-mock 0.6.1 differs from real Mastodon (noted, not copied into our server): it
reports version 4.6.0 without ``configuration.media_attachments.description_limit`` (Mastodon has
it from 4.4), does not check the alt text's length, and answers ``POST /api/v2/media`` with 200
and a processed attachment every time (Mastodon may answer 202 and process later, which our
server does). Where our server lacked what the client uses on mastodon-mock and on Mastodon, it
was added: the synchronous ``POST /api/v1/media`` that Mastodon.py picks for servers reporting a
version before 3.1.4 (GoToSocial, Pleroma, Akkoma).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from mastodon import Mastodon
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.channels.mastodon import MastodonChannel
from bzi_broadcast.content import Announcement, load_announcement
from bzi_broadcast.errors import TransientError
from bzi_broadcast.render import Renderer, ThreadLimits
from bzi_broadcast.store.parts import Parts
from bzi_broadcast.testing.mastodon import Fault, MastodonServer

from .conftest import EXAMPLE, MASTODON_MOCK_TOKEN, run_mastodon_mock
from .test_mastodon_channel import run_announcement

ALT = "Podium der Regionalkonferenz in Potsdam"


@dataclass
class Remote:
    name: str
    base: str
    token: str
    local: MastodonServer | None = None

    async def inject_429(self, reset: datetime) -> None:
        """The next ``GET /api/v2/instance`` answers 429 with ``X-RateLimit-Reset: reset``."""
        header = reset.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if self.local is not None:
            fault = Fault(
                status=429, error="Too many requests", headers=(("X-RateLimit-Reset", header),)
            )
            self.local.inject("GET /api/v2/instance/", fault)  # Mastodon.py asks with a slash
            return
        rule = {
            "match": {"methods": ["GET"], "path_regex": "^/api/v2/instance/?$"},
            "effect": {"type": "ratelimit", "headers": {"X-RateLimit-Reset": header}},
            "count": 1,
        }
        async with aiohttp.ClientSession() as http:
            answer = await http.post(f"{self.base}/api/v1/_mock/faults", json=rule)
            assert answer.status == 200, await answer.text()

    async def statuses(self) -> list[dict[str, Any]]:
        """The account's statuses, oldest first, as the API shows them."""
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            me = await (await http.get(f"{self.base}/api/v1/accounts/verify_credentials")).json()
            url = f"{self.base}/api/v1/accounts/{me['id']}/statuses?limit=40"
            found: list[dict[str, Any]] = await (await http.get(url)).json()
        return list(reversed(found))


@pytest.fixture(params=["mastodon-mock", "local"])
async def remote(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Remote]:
    if request.param == "mastodon-mock":
        async with run_mastodon_mock(tmp_path / "mastodon-mock") as base:
            yield Remote("mastodon-mock", base, MASTODON_MOCK_TOKEN)
        return
    api = MastodonServer(token="secret", processing_seconds=0.2)
    http = TestServer(api.app(), host="127.0.0.1")
    await http.start_server()
    yield Remote("local", f"http://127.0.0.1:{http.port}", "secret", local=api)
    await http.close()


@dataclass
class LosingProxy:
    """Forwards everything to ``upstream``; for the listed calls of ``POST /api/v1/statuses`` it
    lets the server do the work, then closes the connection instead of answering."""

    upstream: str
    lose: set[int]
    keys: list[str | None] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as http,
            http.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body
            ) as answer,
        ):
            content = await answer.read()
            status, answer_headers = answer.status, answer.headers.copy()
        if request.method == "POST" and request.path == "/api/v1/statuses":
            self.keys.append(request.headers.get("Idempotency-Key"))
            if len(self.keys) in self.lose and request.transport is not None:
                request.transport.close()  # the status exists; the client never hears of it
                return web.Response(status=504)
        for name in ("Content-Length", "Transfer-Encoding", "Connection"):
            answer_headers.popall(name, None)
        return web.Response(status=status, body=content, headers=answer_headers)


def announcement_with_image(directory: Path) -> Announcement:
    (directory / "podium.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    data = json.loads(load_announcement(EXAMPLE).model_dump_json())
    data["image"] = {"src": "podium.jpg", "alt": ALT}
    return Announcement.model_validate(data)


def assert_one_reply_chain(statuses: list[dict[str, Any]], announcement: Announcement) -> None:
    # Both servers advertise 500 characters and 23 per URL.
    posts = Renderer().mastodon(announcement, ThreadLimits()).posts
    assert len(statuses) == len(posts) > 1
    assert statuses[0]["in_reply_to_id"] is None
    for previous, status in itertools.pairwise(statuses):
        assert status["in_reply_to_id"] == previous["id"]
    assert [m["description"] for m in statuses[0]["media_attachments"]] == [ALT]
    assert all(not s["media_attachments"] for s in statuses[1:])


async def test_the_seed_example_is_one_reply_chain_with_alt_text(
    engine: AsyncEngine,
    database_url: str,
    remote: Remote,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # the image is read below the working directory
    announcement = announcement_with_image(tmp_path)
    await run_announcement(
        engine, database_url, remote.base, remote.token, announcement=announcement
    )
    assert_one_reply_chain(await remote.statuses(), announcement)


async def test_a_lost_answer_is_retried_with_its_key_and_posts_no_second_status(
    engine: AsyncEngine,
    database_url: str,
    remote: Remote,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    announcement = announcement_with_image(tmp_path)
    proxy = LosingProxy(remote.base, lose={2})  # part 2 is posted, its answer lost
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    front = TestServer(app, host="127.0.0.1")
    await front.start_server()
    try:
        await run_announcement(
            engine,
            database_url,
            f"http://127.0.0.1:{front.port}",
            remote.token,
            announcement=announcement,
        )
    finally:
        await front.close()
    statuses = await remote.statuses()
    assert_one_reply_chain(statuses, announcement)  # no second copy of part 2
    assert proxy.keys[1] is not None
    assert proxy.keys[1] == proxy.keys[2]  # the retry carried the same Idempotency-Key
    assert len(proxy.keys) == len(statuses) + 1


async def test_a_429_is_a_transient_error_that_waits_for_the_reset(remote: Remote) -> None:
    reset = datetime.now(UTC) + timedelta(seconds=120)
    await remote.inject_429(reset)
    client = Mastodon(
        access_token=remote.token,
        api_base_url=remote.base,
        ratelimit_method="throw",
        version_check_mode="none",
        request_timeout=10,
    )
    channel = MastodonChannel(client, Renderer(), Parts(None))  # type: ignore[arg-type]
    try:
        with pytest.raises(TransientError) as raised:
            await channel.limits()
        assert raised.value.retry_after is not None
        assert 100 <= raised.value.retry_after <= 122  # the header has whole seconds
        assert (await channel.limits()).thread.max_characters == 500  # answered after the 429
    finally:
        await channel.aclose()
