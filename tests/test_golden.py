"""Golden tests: the seed example, and each block type alone in German and English, rendered on
every channel and compared with reviewed files (``golden/blocks/<type>.<channel>.<lang>.*``).

After an intended change, regenerate with ``BZI_UPDATE_GOLDEN=1 make unit`` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bzi_broadcast.content import Announcement, parse_announcement
from bzi_broadcast.content.model import BLOCK_TYPES
from bzi_broadcast.render import Renderer

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("BZI_UPDATE_GOLDEN") == "1"


def outputs(renderer: Renderer, example: Announcement) -> dict[str, str]:
    r = renderer.render(example, channels=("email", "mastodon", "telegram", "web"))
    assert r.email and r.mastodon and r.telegram and r.web
    as_json = json.dumps(r.to_json(), ensure_ascii=False, indent=2)
    return {
        "preview.json": as_json,
        "email.txt": r.email.text,
        "email.html": r.email.html,
        "web.html": r.web.html,
        "entry.atom": r.web.atom_entry,
    }


@pytest.mark.parametrize(
    "name", ["preview.json", "email.txt", "email.html", "web.html", "entry.atom"]
)
def test_seed_example_matches_golden(name: str, renderer: Renderer, example: Announcement) -> None:
    actual = outputs(renderer, example)[name]
    path = GOLDEN / f"weltoffene-kommunen.{name}"
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with BZI_UPDATE_GOLDEN=1 and review"
    assert actual == path.read_text(encoding="utf-8")


# --- one block on every channel, in German and in English ----------------------------------------

BLOCK_GOLDEN = GOLDEN / "blocks"
LANGUAGES = ("de", "en")
BLOCK_CHANNELS = {
    "email.html": "html",
    "email.txt": "txt",
    "mastodon": "txt",
    "telegram": "html",
    "web": "html",
}
# Every field of each block is filled in, so a golden file shows the whole reading order.
BLOCKS: dict[str, dict[str, dict[str, object]]] = {
    "event": {
        "de": {
            "type": "event",
            "name": "Sommerfest der Integrationsbeiräte",
            "start": "2026-07-04 15:00",
            "end": "2026-07-04 19:00",
            "place": "Rathausplatz, Mainz",
            "organisers": ["BZI", "Landesverband der Beiräte Rheinland-Pfalz"],
            "formats": [
                {
                    "kind": "Podium",
                    "title": "Teilhabe vor Ort",
                    "led_by": "moderiert von Aylin Demir",
                },
                {"kind": "Lesung", "title": "Angekommen"},
            ],
            "description": "Mit **Musik** und Essen aus aller Welt. Anmeldung bis 30. Juni.",
        },
        "en": {
            "type": "event",
            "name": "Summer party of the integration councils",
            "start": "2026-07-04 15:00",
            "end": "2026-07-04 19:00",
            "place": "Town hall square, Mainz",
            "organisers": ["BZI", "State association of the councils in Rhineland-Palatinate"],
            "formats": [
                {
                    "kind": "Panel",
                    "title": "Taking part locally",
                    "led_by": "chaired by Aylin Demir",
                },
                {"kind": "Reading", "title": "Arrived"},
            ],
            "description": "With **music** and food from all over the world. Register by 30 June.",
        },
    },
    "quote": {
        "de": {
            "type": "quote",
            "speaker": "Aylin Demir",
            "role": "Vorsitzende des Integrationsbeirats Mainz",
            "text": "Teilhabe beginnt vor Ort.\n\nWer mitredet, gestaltet mit.",
        },
        "en": {
            "type": "quote",
            "speaker": "Aylin Demir",
            "role": "Chair of the Mainz integration council",
            "text": "Taking part starts locally.\n\nThose who have a say help shape things.",
        },
    },
    "thanks": {
        "de": {
            "type": "thanks",
            "intro": "Das Sommerfest wurde möglich durch:",
            "partners": [
                {"name": "Stadt Mainz", "role": "funded_by", "url": "https://www.mainz.de"},
                {"name": "Brücken e. V.", "role": "Verpflegung"},
            ],
            "closing": "Bis zum nächsten Mal!",
        },
        "en": {
            "type": "thanks",
            "intro": "The summer party was made possible by:",
            "partners": [
                {"name": "City of Mainz", "role": "funded_by", "url": "https://www.mainz.de"},
                {"name": "Brücken e. V.", "role": "Catering"},
            ],
            "closing": "See you next time!",
        },
    },
    "text": {
        "de": {
            "type": "text",
            "text": "Am **Samstag** öffnen wir das Rathaus.\n\n- Führungen ab 10 Uhr\n"
            "- Kinderprogramm\n\nMehr auf [unserer Website](https://bzi.example.org/sommerfest).",
        },
        "en": {
            "type": "text",
            "text": "On **Saturday** we open the town hall.\n\n- Tours from 10 am\n"
            "- Children's programme\n\nMore on [our website](https://bzi.example.org/sommerfest).",
        },
    },
    "link": {
        "de": {
            "type": "link",
            "description": "Alle Präsentationen und Fotos des Tages",
            "label": "Fotos und Dokumentation ansehen",
            "url": "https://bzi.example.org/regionalkonferenz/dokumentation",
        },
        "en": {
            "type": "link",
            "description": "All presentations and photos of the day",
            "label": "See photos and documentation",
            "url": "https://bzi.example.org/regionalkonferenz/dokumentation",
        },
    },
}
TITLES = {"de": "Nachrichten aus dem Rat", "en": "News from the council"}
_EMAIL_CONTENT = re.compile(
    r'<td class="content"[^>]*>\n(.*?)</td></tr>\n<tr><td class="footer"', re.S
)
_EMAIL_FOOTER = "\n________________________________________\n"
_POST_BREAK = "\n\n――――――――\n\n"  # between the posts or messages of one golden file


def block_announcement(block_type: str, language: str) -> Announcement:
    data = {
        "title": TITLES[language],
        "language": language,
        "blocks": [BLOCKS[block_type][language]],
    }
    return parse_announcement(json.dumps(data), fmt="json")


def block_output(renderer: Renderer, announcement: Announcement, channel: str) -> str:
    """What a reader sees of the block on ``channel``: the content, without the shared frame."""
    if channel == "mastodon":
        return _POST_BREAK.join(post.text for post in renderer.mastodon(announcement).posts) + "\n"
    if channel == "telegram":
        messages = renderer.telegram(announcement).messages
        return _POST_BREAK.join(message.text for message in messages) + "\n"
    if channel == "web":
        return renderer.web(announcement).html + "\n"
    email = renderer.email(announcement)
    if channel == "email.txt":
        return email.text.split(_EMAIL_FOOTER)[0].rstrip() + "\n"
    match = _EMAIL_CONTENT.search(email.html)
    assert match, "the email's content cell is missing"
    return match.group(1).rstrip() + "\n"


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("channel", BLOCK_CHANNELS)
@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_block_matches_golden(
    block_type: str, channel: str, language: str, renderer: Renderer
) -> None:
    actual = block_output(renderer, block_announcement(block_type, language), channel)
    name = channel.split(".")[0]
    path = BLOCK_GOLDEN / f"{block_type}.{name}.{language}.{BLOCK_CHANNELS[channel]}"
    if channel == "email.txt":
        path = path.with_name(f"{block_type}.email-text.{language}.txt")
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with BZI_UPDATE_GOLDEN=1 and review"
    assert actual == path.read_text(encoding="utf-8")


def test_every_block_type_has_golden_samples() -> None:
    assert sorted(BLOCKS) == sorted(BLOCK_TYPES)
