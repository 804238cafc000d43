"""Every field of an announcement has a length cap, every list a count cap (issue 13, item 4):
one character or entry over it is refused with the field's path and a German message, exactly at
it is accepted. And while the largest announcement the caps allow renders as a preview (through
the API and through the editor), ``/healthz`` answers within a second."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from bzi_broadcast.content import model
from bzi_broadcast.content.loader import validate_announcement
from bzi_broadcast.errors import ContentError

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
)

Data = dict[str, Any]


def text(length: int, word: str = "Wort") -> str:
    """Words (spaces between, none at the ends) of exactly ``length`` characters."""
    filled = ((word + " ") * (length // (len(word) + 1) + 1))[: length - 1]
    return filled + "."


def url(length: int) -> str:
    head = "https://example.org/"
    return head + "a" * (length - len(head))


# (field path in the document, the cap, a value of a given length)
STRINGS: list[tuple[str, int, Callable[[int], str]]] = [
    ("title", model.MAX_TITLE, text),
    ("summary", model.MAX_SUMMARY, text),
    ("link", model.MAX_URL, url),
    ("image.src", model.MAX_URL, url),
    ("image.alt", model.MAX_ALT, text),
    ("hashtags[0]", model.MAX_HASHTAG, lambda n: "h" * n),
    ("channels.email.subject", model.MAX_TITLE, text),
    ("channels.email.preheader", model.MAX_LINE, text),
    ("channels.telegram.preview_url", model.MAX_URL, url),
    ("blocks[0].name", model.MAX_LINE, text),
    ("blocks[0].place", model.MAX_LINE, text),
    ("blocks[0].organisers[0]", model.MAX_LINE, text),
    ("blocks[0].formats[0].kind", model.MAX_LINE, text),
    ("blocks[0].formats[0].title", model.MAX_LINE, text),
    ("blocks[0].formats[0].led_by", model.MAX_LINE, text),
    ("blocks[0].description", model.MAX_MARKDOWN, text),
    ("blocks[1].speaker", model.MAX_LINE, text),
    ("blocks[1].role", model.MAX_LINE, text),
    ("blocks[1].text", model.MAX_PROSE, text),
    ("blocks[2].intro", model.MAX_PROSE, text),
    ("blocks[2].partners[0].name", model.MAX_LINE, text),
    ("blocks[2].partners[0].role", model.MAX_LINE, text),
    ("blocks[2].partners[0].url", model.MAX_URL, url),
    ("blocks[2].closing", model.MAX_PROSE, text),
    ("blocks[3].text", model.MAX_MARKDOWN, text),
    ("blocks[4].label", model.MAX_LINE, text),
    ("blocks[4].url", model.MAX_URL, url),
    ("blocks[4].description", model.MAX_LINE, text),
]

# (list path, the cap, one entry for it)
LISTS: list[tuple[str, int, Callable[[], Any]]] = [
    ("blocks", model.MAX_BLOCKS, lambda: {"type": "text", "text": "Noch ein Absatz."}),
    ("topics", model.MAX_TOPICS, lambda: "kommunen"),
    ("hashtags", model.MAX_HASHTAGS, lambda: "Integration"),
    ("blocks[0].organisers", model.MAX_NAMES, lambda: "Ein Verein"),
    ("blocks[0].formats", model.MAX_FORMATS, lambda: {"kind": "Workshop", "title": "Teilhabe"}),
    ("blocks[2].partners", model.MAX_PARTNERS, lambda: {"name": "Ein Verein", "role": "funded_by"}),
]


def base() -> Data:
    """The seed with one block of every type and every optional field present."""
    data = seed()
    data["link"] = "https://example.org/mehr"
    data["image"] = {"src": "https://example.org/bild.png", "alt": "Ein Bild"}
    data["hashtags"] = ["Integration"]
    data["channels"] = {
        "email": {"subject": "Betreff", "preheader": "Vorschau"},
        "telegram": {"preview_url": "https://example.org/vorschau"},
    }
    blocks = data["blocks"]
    assert [b["type"] for b in blocks[:3]] == ["event", "quote", "thanks"]
    blocks[0]["organisers"] = ["Ein Verein"]
    blocks[0]["formats"] = [{"kind": "Workshop", "title": "Teilhabe", "led_by": "BZI"}]
    blocks[0]["description"] = "Eine Beschreibung."
    blocks[2]["partners"][0]["role"] = "Gastgeber"
    del blocks[3:]
    blocks.append({"type": "text", "text": "Ein Absatz."})
    blocks.append(
        {"type": "link", "label": "Mehr", "url": "https://example.org/", "description": "Dazu"}
    )
    return data


def put(data: Data, path: str, value: Any) -> Data:
    """``data`` with the value at ``blocks[2].partners[0].name`` (say) replaced."""
    changed = copy.deepcopy(data)
    parts = [p for chunk in path.replace("]", "").split(".") for p in chunk.split("[")]
    node: Any = changed
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    node[int(last) if last.isdigit() else last] = value
    return changed


def get(data: Data, path: str) -> Any:
    parts = [p for chunk in path.replace("]", "").split(".") for p in chunk.split("[")]
    node: Any = data
    for part in parts:
        node = node[int(part)] if part.isdigit() else node[part]
    return node


def problems(data: Data) -> list[tuple[str, str]]:
    try:
        validate_announcement(data)
    except ContentError as exc:
        return [(p.path, p.message) for p in exc.problems]
    return []


def test_the_base_document_is_valid() -> None:
    assert problems(base()) == []


@pytest.mark.parametrize(("path", "cap", "make"), STRINGS, ids=[s[0] for s in STRINGS])
def test_one_character_over_the_cap_is_refused_naming_the_field(
    path: str, cap: int, make: Callable[[int], str]
) -> None:
    assert problems(put(base(), path, make(cap))) == []
    assert problems(put(base(), path, make(cap + 1))) == [
        (path, f"zu lang (höchstens {cap} Zeichen)")
    ]


@pytest.mark.parametrize(("path", "cap", "entry"), LISTS, ids=[s[0] for s in LISTS])
def test_one_entry_over_the_count_is_refused_naming_the_list(
    path: str, cap: int, entry: Callable[[], Any]
) -> None:
    data = base()
    kept = list(get(data, path))
    at_cap = kept + [entry() for _ in range(cap - len(kept))]
    assert problems(put(data, path, at_cap)) == []
    assert problems(put(data, path, [*at_cap, entry()])) == [
        (path, f"zu viele Einträge (höchstens {cap})")
    ]


def test_a_huge_field_is_refused_by_its_length_before_any_other_check() -> None:
    """The length is checked first: an 80,000-character word is refused at once, not after the
    Markdown parser or the whitespace normaliser ran over it."""
    data = put(base(), "blocks[3].text", "W" * 80_000)
    started = time.perf_counter()
    assert problems(data) == [
        ("blocks[3].text", f"zu lang (höchstens {model.MAX_MARKDOWN} Zeichen)")
    ]
    assert time.perf_counter() - started < 0.5


def maximal() -> Data:
    """Every string at its cap, in single words as long as the cap allows where the renderer
    has to split them (the costly case); lists as long as the API's 256 KB body allows."""
    data = base()
    for path, cap, make in STRINGS:
        data = put(data, path, make(cap))
    data = put(data, "blocks[3].text", "W" * model.MAX_MARKDOWN)  # one word to split
    return put(data, "hashtags", ["h" * model.MAX_HASHTAG] * model.MAX_HASHTAGS)


def test_the_maximal_document_is_valid() -> None:
    assert problems(maximal()) == []


async def healthz_answers_quickly_while(base_url: str, preview: Awaitable[int]) -> None:
    """Poll ``/healthz`` while the preview runs; each answer within 1 s."""
    pending = asyncio.ensure_future(preview)
    timeout = aiohttp.ClientTimeout(total=1)
    answered = 0
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not pending.done() or answered == 0:
            started = time.perf_counter()
            async with http.get(f"{base_url}/healthz") as answer:
                assert answer.status == 200
            assert time.perf_counter() - started < 1
            answered += 1
            await asyncio.wait([pending], timeout=0.05)  # next poll, or stop once it's done
    assert await asyncio.wait_for(pending, 60) == 200


async def test_healthz_answers_while_a_maximal_api_preview_renders(api: Api) -> None:  # noqa: F811
    async def preview() -> int:
        # without the image: the API fetches a remote image when it takes it (example.org fails)
        body = {key: value for key, value in maximal().items() if key != "image"}
        answer = await api.call("POST", "/announcements/preview", json_body=body)
        assert answer.status == 200, answer.body
        return answer.status

    await healthz_answers_quickly_while(api.url, preview())


def maximal_fields() -> list[tuple[str, str]]:
    values = {
        "title": text(model.MAX_TITLE),
        "summary": text(model.MAX_SUMMARY),
        "blocks__0__name": text(model.MAX_LINE),
        "blocks__0__description": text(model.MAX_MARKDOWN),
        "blocks__1__text": text(model.MAX_PROSE),
        "blocks__2__intro": text(model.MAX_PROSE),
        "blocks__2__closing": text(model.MAX_PROSE),
        "blocks__3__text": "W" * model.MAX_MARKDOWN,
        "blocks__4__url": url(model.MAX_URL),
        "channels__email__preheader": text(model.MAX_LINE),
    }
    return replaced(example_fields(), **values)


async def test_healthz_answers_while_a_maximal_editor_preview_renders(
    site: Site,  # noqa: F811
) -> None:
    async with session(site, EDITOR) as http:
        fields = [("csrf", await csrf(http)), *maximal_fields()]

        async def preview() -> int:
            status, _fragment, _where = await post(http, "/admin/ankuendigungen/vorschau", fields)
            return status

        await healthz_answers_quickly_while(site.url, preview())
