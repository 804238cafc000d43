"""Hostile files on the command line (issue 13, item 11): each is refused with exit 2 and a German
message naming the problem, never a traceback, within seconds and in bounded memory.

Every file goes through the real CLI in a child process whose address space is capped at 1 GB
(``RLIMIT_AS``) and whose run is cut off after 10 s: a bomb that expands shows up as a timeout or
a MemoryError traceback, not as a slow machine."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import EXAMPLE

MEMORY_CAP = 1024**3
TIME_CAP = 10  # seconds, for a process start (about 1 s) plus the refusal

# The classic "billion laughs": 362 bytes that expand to 10**9 strings when aliases are followed.
ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, in German, under the memory and time caps."""
    return subprocess.run(
        [sys.executable, "-m", "bzi_broadcast", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "BZI_LANG": "de"},
        preexec_fn=_capped,
        timeout=TIME_CAP,
    )


def refused(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr[-2000:]


def example_data() -> dict[str, object]:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# --- announcement files: preview reads them as queue does, through load_announcement ---


def test_yaml_nested_100000_deep_is_refused_with_the_depth(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("title: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    refused(cli("preview", str(deep)), "zu tief verschachtelt", "höchstens 50 Ebenen")


def test_json_nested_100000_deep_is_refused_with_the_depth(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"title": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001, encoding="utf-8")
    refused(cli("preview", str(deep)), "zu tief verschachtelt", "höchstens 50 Ebenen")


def test_json_arrays_nested_deep_inside_strings_do_not_count(tmp_path: Path) -> None:
    """Brackets inside strings are text, not nesting: the example with one such title passes."""
    data = example_data()
    data["title"] = "[" * 60 + " Klammern " + "}" * 60
    data["summary"] = 'Ein "Zitat" mit { und ['
    plain = tmp_path / "brackets.json"
    plain.write_text(json.dumps(data, ensure_ascii=False, default=str), encoding="utf-8")
    result = cli("preview", str(plain))
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB, encoding="utf-8")
    assert len(ALIAS_BOMB.encode()) <= 400
    refused(cli("preview", str(bomb)), "Verweise", "Zeile 2")


def test_dev_zero_behind_a_yaml_name_is_refused_without_reading_it(tmp_path: Path) -> None:
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    refused(cli("preview", str(zero)), "keine gewöhnliche Datei")


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    refused(cli("preview", str(fifo)), "keine gewöhnliche Datei")


def test_a_file_over_1_mb_is_refused_by_its_size(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("title: " + "x" * 1_100_000 + "\n", encoding="utf-8")
    refused(cli("preview", str(big)), "größer als 1 MB")


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_duplicate_keys_are_refused_naming_the_key_and_its_line(
    tmp_path: Path, suffix: str
) -> None:
    if suffix == "yaml":
        text = "title: Erster Titel\nsummary: Kurz\ntitle: Zweiter Titel\nblocks: []\n"
    else:
        text = '{\n  "title": "Erster",\n  "summary": "Kurz",\n  "title": "Zweiter"\n}\n'
    doubled = tmp_path / f"doubled.{suffix}"
    doubled.write_text(text, encoding="utf-8")
    line = "Zeile 3" if suffix == "yaml" else "Zeile 4"
    refused(cli("preview", str(doubled)), "„title“ kommt mehrfach vor", line)


def test_duplicate_keys_deep_inside_a_block_are_refused(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        "  - type: event\n", "  - type: event\n    type: event\n", 1
    )
    assert text != EXAMPLE.read_text(encoding="utf-8")
    doubled = tmp_path / "block.yaml"
    doubled.write_text(text, encoding="utf-8")
    refused(cli("preview", str(doubled)), "„type“ kommt mehrfach vor")


def test_the_title_length_message_is_german_and_names_the_field(tmp_path: Path) -> None:
    data = example_data()
    data["title"] = "x" * 201
    long_title = tmp_path / "long.yaml"
    long_title.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    result = cli("preview", str(long_title))
    refused(result, "title", "zu lang (höchstens 200 Zeichen)")
    assert "Value should" not in result.stderr


# --- the subscriber import (CSV) ---


def import_csv(tmp_path: Path, csv_file: Path) -> subprocess.CompletedProcess[str]:
    database = f"sqlite+aiosqlite:///{tmp_path / 'import.db'}"
    return cli("subscribers", "import", str(csv_file), "--database", database)


def test_a_200000_character_csv_field_is_refused_with_its_line(tmp_path: Path) -> None:
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        f"email,consent_source\nada@example.org,Formular\nbob@example.org,{'x' * 200_000}\n",
        encoding="utf-8",
    )
    refused(import_csv(tmp_path, csv_file), "Zeile 3", "Feld ist länger als")


def test_a_missing_csv_file_exits_2_with_a_message(tmp_path: Path) -> None:
    refused(import_csv(tmp_path, tmp_path / "fehlt.csv"), "fehlt.csv", "kann nicht gelesen werden")


def test_a_directory_as_csv_file_exits_2(tmp_path: Path) -> None:
    folder = tmp_path / "ordner.csv"
    folder.mkdir()
    refused(import_csv(tmp_path, folder), "ordner.csv", "keine gewöhnliche Datei")


def test_a_csv_file_not_in_utf8_exits_2_naming_the_byte(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("email,consent_source\njörg@example.org,Formular\n".encode("latin-1"))
    refused(import_csv(tmp_path, latin), "nicht UTF-8-kodiert", "Byte 22")


def test_dev_zero_as_csv_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    zero = tmp_path / "zero.csv"
    zero.symlink_to("/dev/zero")
    refused(import_csv(tmp_path, zero), "keine gewöhnliche Datei")


# --- the configuration file (TOML) ---


def preview_with_config(config: Path) -> subprocess.CompletedProcess[str]:
    return cli("--config", str(config), "preview", str(EXAMPLE))


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        (b"[web\nport = 1\n", "kein gültiges TOML"),
        (b"[web]\nport = 1\nport = 2\n", "kein gültiges TOML"),
        ('[organisation]\nname = "Jörg"\n'.encode("latin-1"), "UTF-8"),
    ],
    ids=["syntax", "duplicate-key", "latin-1"],
)
def test_a_malformed_config_file_exits_2_naming_it(
    tmp_path: Path, text: bytes, phrase: str
) -> None:
    config = tmp_path / "bzi.toml"
    config.write_bytes(text)
    refused(preview_with_config(config), "bzi.toml", phrase)


def test_a_config_nested_100000_deep_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "deep.toml"
    config.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    refused(preview_with_config(config), "deep.toml", "zu tief verschachtelt")


def test_dev_zero_as_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "zero.toml"
    config.symlink_to("/dev/zero")
    refused(preview_with_config(config), "zero.toml", "keine gewöhnliche Datei")


def test_dev_zero_as_secret_file_exits_2(tmp_path: Path) -> None:
    secret = tmp_path / "secret_key"
    secret.symlink_to("/dev/zero")
    result = subprocess.run(
        [sys.executable, "-m", "bzi_broadcast", "serve"],
        capture_output=True,
        text=True,
        env={**os.environ, "BZI_LANG": "de", "BZI_SECURITY_SECRET_KEY_FILE": str(secret)},
        preexec_fn=_capped,
        timeout=TIME_CAP,
        cwd=tmp_path,
    )
    refused(result, "BZI_SECURITY_SECRET_KEY_FILE", "keine gewöhnliche Datei")
