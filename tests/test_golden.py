"""Golden tests: the seed example rendered on every channel, compared with reviewed files.

After an intended change, regenerate with ``BZI_UPDATE_GOLDEN=1 make unit`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bzi_broadcast.content import Announcement
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
