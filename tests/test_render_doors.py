"""What every door (file, editor, API) does with content that would make a bad thread, and that a
rendering in progress never stalls the service: a content warning that leaves no room for text is
refused with its field named; a preview renders in the renderer's thread pool, so ``/healthz``
answers while it runs."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import yaml

from bzi_broadcast.content.loader import parse_announcement
from bzi_broadcast.content.model import MAX_CONTENT_WARNING
from bzi_broadcast.errors import ContentError
from bzi_broadcast.render import Renderer
from bzi_broadcast.render.renditions import MastodonRendition

from .conftest import EXAMPLE
from .test_api import Api, api, seed  # noqa: F401 - the fixture
from .test_editor import (  # noqa: F401 - the fixture
    EDITOR,
    Site,
    csrf,
    example_fields,
    post,
    replaced,
    session,
    site,
    with_csrf,
)

FIELD = "channels.mastodon.content_warning"
# 251 family emoji: 251 grapheme clusters (one over the cap) made of 1,757 code points
TOO_LONG = "👨‍👩‍👧‍👦" * (MAX_CONTENT_WARNING + 1)
LONGEST = "👨‍👩‍👧‍👦" * MAX_CONTENT_WARNING  # the cap counts graphemes, as Mastodon does


def with_warning(warning: str) -> str:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data.setdefault("channels", {}).setdefault("mastodon", {})["content_warning"] = warning
    return yaml.safe_dump(data, allow_unicode=True)


def test_the_file_door_names_the_content_warning_and_counts_graphemes() -> None:
    with pytest.raises(ContentError) as refused:
        parse_announcement(with_warning(TOO_LONG), fmt="yaml", source="cw.yaml")
    assert [p.path for p in refused.value.problems] == [FIELD]
    assert "höchstens 250 Zeichen" in refused.value.problems[0].message
    accepted = parse_announcement(with_warning(LONGEST), fmt="yaml")
    assert accepted.channels.mastodon.content_warning == LONGEST


async def test_the_api_door_refuses_it_with_the_field_path(api: Api) -> None:  # noqa: F811
    body = seed()
    body["channels"] = {"mastodon": {"content_warning": TOO_LONG}}
    answer = await api.call("POST", "/announcements", json_body=body)
    assert answer.status == 422
    assert [e["field"] for e in answer.body["errors"]] == [FIELD]
    preview = await api.call("POST", "/announcements/preview", json_body=body)
    assert preview.status == 422


async def test_the_editor_door_marks_the_field(site: Site) -> None:  # noqa: F811
    fields = replaced(example_fields(), channels__mastodon__content_warning=TOO_LONG)
    async with session(site, EDITOR) as http:
        status, page, _where = await post(
            http, "/admin/ankuendigungen/neu", with_csrf(await csrf(http), fields)
        )
    assert status == 400
    name = "channels-mastodon-content_warning"
    assert re.search(rf'id="{name}" name="{name}"[^>]*aria-invalid="true"', page)
    assert "höchstens 250 Zeichen" in page


class HeldRendering:
    """Renderer.mastodon that waits for a go-ahead: a stand-in for a slow split whose duration
    the test controls, so "the loop stayed free" does not depend on the machine's speed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()
        original = Renderer.mastodon

        def held(renderer: Renderer, *args: Any, **kwargs: Any) -> MastodonRendition:
            self.entered.set()
            if not self.go.wait(timeout=30):
                raise AssertionError("the test never released the rendering")
            return original(renderer, *args, **kwargs)

        monkeypatch.setattr(Renderer, "mastodon", held)


async def healthz_while_held(
    base: str, held: HeldRendering, preview: Callable[[], Awaitable[int]]
) -> None:
    pending = asyncio.ensure_future(preview())
    try:
        assert await asyncio.to_thread(held.entered.wait, 10), "the preview never rendered"
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{base}/healthz") as answer,
        ):
            assert answer.status == 200
        assert not pending.done()  # answered while the rendering was still going on
    finally:
        held.go.set()
    assert await asyncio.wait_for(pending, 30) == 200


async def test_a_long_api_preview_leaves_healthz_answering(
    api: Api,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = HeldRendering(monkeypatch)

    async def preview() -> int:
        answer = await api.call("POST", "/announcements/preview", json_body=seed())
        return answer.status

    await healthz_while_held(api.url, held, preview)


async def test_a_long_editor_preview_leaves_healthz_answering(
    site: Site,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = HeldRendering(monkeypatch)
    async with session(site, EDITOR) as http:
        fields = [("csrf", await csrf(http)), *example_fields()]

        async def preview() -> int:
            status, _fragment, _where = await post(http, "/admin/ankuendigungen/vorschau", fields)
            return status

        await healthz_while_held(site.url, held, preview)
