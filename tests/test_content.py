"""The announcement model and file loader: valid files load, every bad input is named."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import pytest

from bzi_broadcast.content import Announcement, load_announcement, parse_announcement
from bzi_broadcast.content.model import EventBlock, LinkBlock, PartnerRole, QuoteBlock, ThanksBlock
from bzi_broadcast.errors import ContentError
from bzi_broadcast.i18n import use_locale

MINIMAL = {"title": "Hallo", "blocks": [{"type": "text", "text": "Ein *kurzer* Text."}]}


def problems_of(raw: str, fmt: str = "yaml") -> list[str]:
    with pytest.raises(ContentError) as caught:
        parse_announcement(raw, fmt=fmt, source="x")
    return [str(problem) for problem in caught.value.problems]


def test_example_keeps_the_seed_facts(example: Announcement) -> None:
    event, quote, thanks = example.blocks
    assert isinstance(event, EventBlock)
    assert event.start == date(2025, 11, 5)
    assert event.place == "Potsdam"
    assert [f.kind for f in event.formats] == ["Diskussionsforum", "Workshop"]
    assert isinstance(quote, QuoteBlock)
    assert quote.speaker == "Dr. Nergiz"
    assert quote.text.startswith("Die Vision einer weltoffenen Kommune")
    assert quote.text.endswith("vonnöten.")
    assert "all politics are local!" in quote.text
    assert isinstance(thanks, ThanksBlock)
    assert [p.role for p in thanks.partners] == [
        PartnerRole.IMPLEMENTED_BY,
        PartnerRole.IN_COOPERATION_WITH,
        PartnerRole.FUNDED_BY,
    ]
    assert thanks.partners[0].name == "PHINEO gAG"


def test_naive_publish_time_is_berlin_local(example: Announcement) -> None:
    assert example.publish_at == datetime.fromisoformat("2025-11-10T10:00:00+01:00")


def test_summer_time_offset_applies() -> None:
    a = parse_announcement(json.dumps({**MINIMAL, "publish_at": "2026-07-01 09:30"}), fmt="json")
    assert a.publish_at is not None
    assert a.publish_at.utcoffset() is not None
    assert a.publish_at.isoformat() == "2026-07-01T09:30:00+02:00"


def test_announcement_is_immutable(example: Announcement) -> None:
    with pytest.raises(Exception, match="frozen"):
        example.title = "anders"  # type: ignore[misc]


def test_single_line_fields_lose_line_breaks() -> None:
    a = parse_announcement(
        json.dumps({**MINIMAL, "title": "Zeile 1\r\nBcc: evil@example.org"}), fmt="json"
    )
    assert a.title == "Zeile 1 Bcc: evil@example.org"


def test_json_and_yaml_give_the_same_announcement(example: Announcement) -> None:
    as_json = example.model_dump_json()
    assert parse_announcement(as_json, fmt="json") == example


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("title: [unclosed", "kein gültiges YAML"),
        ("- just\n- a list\n", "erwartet wird ein Objekt"),
        ("title: Hallo\n", "blocks (Zeile 1): Pflichtfeld fehlt"),
        ("blocks:\n  - type: text\n    text: x\n", "title (Zeile 1): Pflichtfeld fehlt"),
        (
            "title: T\nblocks:\n  - type: poll\n",
            "blocks[0] (Zeile 3): unbekannter Blocktyp „poll“",
        ),
        (
            "title: T\nimage:\n  src: a.png\nblocks:\n  - type: text\n    text: x\n",
            "image.alt (Zeile 2): Pflichtfeld fehlt",
        ),
        (
            "title: T\nblocks:\n  - type: event\n    name: E\n    start: 2025-02-30\n",
            "blocks[0].start (Zeile 5): „2025-02-30“: dieses Datum oder diese Uhrzeit gibt es",
        ),
        ("title: T\nlanguage: fr\nblocks: []\n", "language (Zeile 2): ungültiger Wert „fr“"),
        (
            "title: T\nblocks:\n  - type: text\n    text: x\n    colour: red\n",
            "blocks[0].colour (Zeile 5): unbekanntes Feld",
        ),
        (
            "title: T\npublish_at: 2026-03-29 02:30\nblocks:\n  - type: text\n    text: x\n",
            "publish_at (Zeile 2): diese Uhrzeit gibt es in Europe/Berlin nicht",
        ),
        (
            "title: T\nblocks:\n  - type: link\n    label: L\n    url: javascript:alert(1)\n",
            "blocks[0].url (Zeile 5): ist keine gültige http(s)-Adresse",
        ),
        (
            "title: T\npublish_at: 2025-11-10 10:00\nexpires_at: 2025-11-01 10:00\n"
            "blocks:\n  - type: text\n    text: x\n",
            "expires_at muss nach publish_at liegen",
        ),
    ],
)
def test_bad_yaml_names_field_and_line(raw: str, expected: str) -> None:
    assert any(expected in problem for problem in problems_of(raw)), problems_of(raw)


def test_every_problem_is_reported_at_once() -> None:
    raw = "title: ''\nlanguage: xx\nblocks:\n  - type: quote\n    speaker: A\n"
    problems = problems_of(raw)
    assert len(problems) == 3
    assert problems[0].startswith("title (Zeile 1)")


def test_bad_json_names_the_line() -> None:
    problems = problems_of('{\n  "title": "T",\n  "blocks": [\n}', fmt="json")
    assert len(problems) == 1
    assert "kein gültiges JSON" in problems[0]
    assert "Zeile 4" in problems[0]


def test_json_field_errors_carry_lines() -> None:
    raw = '{\n  "title": "T",\n  "blocks": [\n    {"type": "link", "label": "L"}\n  ]\n}'
    assert problems_of(raw, fmt="json") == ["blocks[0].url (Zeile 4): Pflichtfeld fehlt"]


def test_unknown_file_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "announcement.txt"
    path.write_text("title: T", encoding="utf-8")
    with pytest.raises(ContentError, match=r"unbekanntes Dateiformat „\.txt“"):
        load_announcement(path)


def test_missing_file_is_a_content_error(tmp_path: Path) -> None:
    with pytest.raises(ContentError, match="kann nicht gelesen werden"):
        load_announcement(tmp_path / "missing.yaml")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("title: Grüße\n".encode("latin-1"))
    with pytest.raises(ContentError, match="nicht UTF-8"):
        load_announcement(path)


def test_problems_are_translated_to_english() -> None:
    with use_locale("en"), pytest.raises(ContentError) as caught:
        parse_announcement("title: T\nlanguage: fr\nblocks: []\n", fmt="yaml")
    text = caught.value.message
    assert "invalid value “fr” (allowed: de, en)" in text
    assert "(line 2)" in text


def test_links_in_markdown_are_limited_to_safe_schemes() -> None:
    a = parse_announcement(
        json.dumps(
            {
                "title": "T",
                "blocks": [
                    {"type": "text", "text": "[x](javascript:alert(1)) [y](https://ok.example)"},
                    {"type": "link", "label": "L", "url": "https://ok.example/a?b=1"},
                ],
            }
        ),
        fmt="json",
    )
    assert isinstance(a.blocks[1], LinkBlock)


def test_event_range_must_not_end_before_it_starts() -> None:
    raw = (
        "title: T\nblocks:\n  - type: event\n    name: E\n    start: 2025-11-05\n"
        "    end: 2025-11-04\n"
    )
    assert any("end liegt vor start" in p for p in problems_of(raw))


def test_event_range_kinds_must_match() -> None:
    raw = (
        "title: T\nblocks:\n  - type: event\n    name: E\n    start: 2025-11-05\n"
        "    end: 2025-11-05 12:00\n"
    )
    assert any("beide Datum" in p for p in problems_of(raw))
