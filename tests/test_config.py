"""Bad configuration stops ``serve`` at start: one clear message per problem, naming the setting
(and the file line or the environment variable it came from), exit code 2, no traceback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from bzi_broadcast.config import Settings, load_settings
from bzi_broadcast.errors import ConfigError
from bzi_broadcast.testing.smtp import SmtpCapture

from .conftest import TEST_SECRET_KEY

EXIT_BAD_CONFIGURATION = 2
ROOT = Path(__file__).resolve().parents[1]


def serve(
    workdir: Path, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BZI_")}
    return subprocess.run(
        [sys.executable, "-m", "bzi_broadcast", *args, "serve"],
        capture_output=True,
        text=True,
        env={
            **clean,
            "BZI_DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            "BZI_SECURITY_SECRET_KEY": TEST_SECRET_KEY,
            "BZI_EMAIL_PUBLIC_URL": "https://bzi.example.org",
            **env,
        },
        cwd=workdir,
        timeout=timeout,
    )


def refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == EXIT_BAD_CONFIGURATION, result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


def test_unparseable_database_url(tmp_path: Path) -> None:
    result = serve(tmp_path, BZI_DATABASE_URL="mysql://app:geheim@db/app")
    refused(result, "database.url: keine gültige Datenbank-URL", "BZI_DATABASE_URL")
    assert "geheim" not in result.stderr  # the password in the URL is masked


def test_unreachable_database(tmp_path: Path) -> None:
    result = serve(tmp_path, BZI_DATABASE_URL="postgresql://nobody:geheim@127.0.0.1:1/none")
    refused(result, "database.url: Datenbank nicht erreichbar", "127.0.0.1:1")
    assert "geheim" not in result.stderr


def test_database_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    result = serve(tmp_path, BZI_DATABASE_URL=f"sqlite:///{blocker}/sub/db.sqlite3")
    refused(result, "database.url:")


def test_missing_secret_file(tmp_path: Path) -> None:
    result = serve(tmp_path, BZI_SECURITY_SECRET_KEY_FILE="/nope")
    refused(result, "BZI_SECURITY_SECRET_KEY_FILE: Datei /nope nicht lesbar")


def test_unknown_option_in_the_file_names_its_line(tmp_path: Path) -> None:
    config = tmp_path / "bzi.toml"
    config.write_text('[web]\nport = 8080\n\n[smtp]\nhots = "mail.example.org"\n', "utf-8")
    result = serve(tmp_path, "--config", str(config))
    refused(
        result, f"smtp.hots: unbekannte Einstellung (meinten Sie „smtp.host“?; {config}, Zeile 5)"
    )


def test_environment_variable_with_a_bad_value(tmp_path: Path) -> None:
    result = serve(tmp_path, BZI_WEB_PORT="abc", BZI_SMTP_SECURITY="ssl")
    refused(
        result,
        "web.port: keine ganze Zahl (Wert: 'abc'; aus BZI_WEB_PORT)",
        "smtp.security: erlaubt: 'none', 'starttls' or 'tls' (Wert: 'ssl'; aus BZI_SMTP_SECURITY)",
    )
    assert len(result.stderr.strip().splitlines()) == 2  # one line per problem, nothing else


async def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with SmtpCapture() as smtp:
            result = await asyncio.to_thread(
                serve, tmp_path, BZI_WEB_PORT=str(port), BZI_SMTP_PORT=str(smtp.port)
            )
    refused(result, "web.port:", f"127.0.0.1:{port}")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config = tmp_path / "bzi.toml"
    config.write_text("[smtp]\nport = 'abc'\ncolour = 'red'\n[telegram]\nenabled = true\n", "utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {"BZI_SECURITY_SECRET_KEY_FILE": str(tmp_path / "missing")})
    lines = caught.value.message.splitlines()
    assert lines[0].startswith("BZI_SECURITY_SECRET_KEY_FILE: Datei")
    assert f"smtp.port: keine ganze Zahl (Wert: 'abc'; {config}, Zeile 2)" in lines
    assert f"smtp.colour: unbekannte Einstellung ({config}, Zeile 3)" in lines
    assert len(lines) == 3
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"BZI_TELEGRAM_ENABLED": "true"})
    assert caught.value.message.startswith("telegram.token: fehlt, obwohl telegram.enabled = true")


def test_no_secret_in_the_settings_repr() -> None:
    base = Settings()
    settings = base.model_copy(
        update={
            "database": base.database.model_copy(
                update={"url": "postgresql://app:db-geheim-1@db/app"}
            ),
            "smtp": base.smtp.model_copy(update={"password": SecretStr("smtp-geheim-2")}),
            "telegram": base.telegram.model_copy(update={"token": SecretStr("1:tg-geheim-3")}),
            "mastodon": base.mastodon.model_copy(
                update={"access_token": SecretStr("masto-geheim-4")}
            ),
            "security": base.security.model_copy(update={"secret_key": SecretStr("key-geheim-5")}),
        }
    )
    shown = repr(settings) + str(settings) + repr(settings.database) + str(settings.smtp)
    assert "geheim" not in shown
    assert "postgresql://app:***@db/app" in shown
    assert set(settings.secrets()) == {
        "db-geheim-1",
        "smtp-geheim-2",
        "1:tg-geheim-3",
        "masto-geheim-4",
        "key-geheim-5",
    }


def test_example_configuration_documents_every_option_with_its_default() -> None:
    example = ROOT / "config" / "bzi-broadcast.example.toml"
    assert load_settings(example, {}) == Settings()
    text = example.read_text(encoding="utf-8")
    for section, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            assert f"[{section}]" in text
            for key in annotation.model_fields:
                assert f"{key} =" in text, f"{section}.{key} is not documented"
