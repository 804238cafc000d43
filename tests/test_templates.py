"""The template system: override directory, broken overrides, catalogs complete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from bzi_broadcast.config import RenderSettings
from bzi_broadcast.content import Announcement
from bzi_broadcast.errors import TemplateError
from bzi_broadcast.i18n import LOCALE_DIR
from bzi_broadcast.render import Renderer
from bzi_broadcast.render.environment import templates_root

ROOT = Path(__file__).resolve().parents[1]


def test_override_directory_shadows_one_partial(tmp_path: Path, example: Announcement) -> None:
    (tmp_path / "blocks").mkdir()
    original = (templates_root() / "blocks" / "quote.j2").read_text(encoding="utf-8")
    (tmp_path / "blocks" / "quote.j2").write_text(
        original.replace("— {{ b.speaker }}", "~~ {{ b.speaker }}"), encoding="utf-8"
    )
    renderer = Renderer(RenderSettings(templates_dir=tmp_path))
    assert "~~ Dr. Nergiz" in renderer.email(example).text
    assert "~~ Dr. Nergiz" in renderer.mastodon(example).posts[-1].text or any(
        "~~ Dr. Nergiz" in post.text for post in renderer.mastodon(example).posts
    )
    assert "— Dr. Nergiz" in Renderer().email(example).text


def test_override_with_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "newsletter.txt.j2").write_text(
        "{% extends 'layouts/base.j2' %}\n{% block header %}\n{{ oops(\n{% endblock %}\n",
        encoding="utf-8",
    )
    with pytest.raises(TemplateError) as caught:
        Renderer(RenderSettings(templates_dir=tmp_path))
    assert "newsletter.txt.j2" in caught.value.message
    assert "Zeile 3" in caught.value.message or "Zeile 4" in caught.value.message


def test_every_message_has_an_english_translation(tmp_path: Path) -> None:
    pot = tmp_path / "messages.pot"
    subprocess.run(
        [
            Path(sys.executable).parent / "pybabel",
            "extract",
            "-F",
            "babel.cfg",
            "-k",
            "N_",
            "-k",
            "_",
            "-k",
            "gettext",
            "-k",
            "ngettext:1,2",
            "--no-location",
            "-o",
            pot,
            ".",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    with pot.open("rb") as handle:
        wanted = {
            message.id if isinstance(message.id, str) else message.id[0]
            for message in read_po(handle)
            if message.id
        }
    with (LOCALE_DIR / "en" / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        catalog = read_po(handle)
    translated = {
        message.id if isinstance(message.id, str) else message.id[0]
        for message in catalog
        if message.id and message.string
    }
    assert wanted, "extraction found no messages"
    assert sorted(wanted - translated) == []
