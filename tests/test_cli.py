"""``bzi-broadcast preview`` as a user runs it: output formats, exit codes, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bzi_broadcast.cli import main

from .conftest import EXAMPLE


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bzi_broadcast", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_preview_prints_every_channel_with_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "E-Mail" in out
    assert "Betreff: Weltoffene Kommunen – Vom Dialog zum Zusammenhalt" in out
    assert "Mastodon – " in out and "/500 Zeichen" in out
    assert "Telegram – " in out and "/4096 UTF-16-Einheiten" in out


def test_preview_json_has_exactly_the_documented_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", str(EXAMPLE), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"email", "mastodon", "telegram"}
    assert set(data["email"]) == {"subject", "preheader", "html", "text"}
    assert set(data["mastodon"]) == {"posts"}
    assert all(
        set(p) == {"text", "spoiler_text", "language", "visibility"}
        for p in data["mastodon"]["posts"]
    )
    assert all(set(m) == {"text", "parse_mode"} for m in data["telegram"]["messages"])


def test_preview_json_for_one_channel(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "preview",
                str(EXAMPLE),
                "--json",
                "--channel",
                "mastodon",
                "--mastodon-limit",
                "300",
                "--url-length",
                "30",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ["mastodon"]
    assert len(data["mastodon"]["posts"]) > 3


def test_preview_html_writes_one_self_contained_page(tmp_path: Path) -> None:
    out = tmp_path / "preview.html"
    assert main(["preview", str(EXAMPLE), "--html", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.count("<iframe") == 2
    assert "width: 375px" in page
    assert "von 500 Zeichen" in page
    assert "von 4096 UTF-16-Einheiten" in page
    assert "<script" not in page and "<link" not in page


def test_invalid_file_exits_2_names_the_problem_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: T\nblocks:\n  - type: poll\n", encoding="utf-8")
    out = tmp_path / "preview.html"
    result = run("preview", str(bad), "--html", str(out))
    assert result.returncode == 2
    assert "blocks[0] (Zeile 3): unbekannter Blocktyp „poll“" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [bad]


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = run("preview", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "kann nicht gelesen werden" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_template_override_exits_2(tmp_path: Path) -> None:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "link.j2").write_text("{% macro email_html(b) %}{{ b.url ", "utf-8")
    result = run("--templates", str(tmp_path), "preview", str(EXAMPLE))
    assert result.returncode == 2
    assert "link.j2" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_limit_is_refused() -> None:
    result = run("preview", str(EXAMPLE), "--mastodon-limit", "zehn")
    assert result.returncode == 2
    assert "zehn" in result.stderr


def test_messages_in_english_when_asked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: T\nblocks: []\nlanguage: fr\n", encoding="utf-8")
    result = run("preview", str(bad), env={"BZI_LANG": "en"})
    assert result.returncode == 2
    assert "language (line 3): invalid value “fr”" in result.stderr
