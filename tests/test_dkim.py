"""DKIM: what `serve` delivers verifies with OpenDKIM (Debian's, in test mode with the public keys
from a file instead of DNS) and with dkimpy; a changed List-Unsubscribe does not. Plus the
settings (file secrets, bad and partial keys, nothing in reprs or logs) and `dkim record`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast import cli
from bzi_broadcast.channels.dkim import DkimKey, DkimSigner, configured_signer
from bzi_broadcast.channels.email_mime import MessageTemplate, Sender
from bzi_broadcast.config import Settings, load_settings
from bzi_broadcast.content import Announcement
from bzi_broadcast.delivery import control
from bzi_broadcast.errors import ConfigError
from bzi_broadcast.render import Renderer
from bzi_broadcast.render.renditions import (
    PREFERENCES_PLACEHOLDER,
    UNSUBSCRIBE_PLACEHOLDER,
    EmailRendition,
)
from bzi_broadcast.service import Service
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.testing.smtp import SmtpCapture

from .conftest import TEST_SECRET_KEY, require_or_skip
from .test_delivery import example_announcement
from .test_store import add_subscribers

DOMAIN = "bzi.example.org"
RSA_SELECTOR = "news"
ED_SELECTOR = "newsed"
SENDER = Sender(address="newsletter@bzi.example.org", name="BZI – Newsletter „aktuell“")
UNSUBSCRIBE = "https://bzi.example.org/abmelden/v1.1.abc_DEF-123.xyz?x=1&y=%C3%A4"
PREFERENCES = "https://bzi.example.org/einstellungen/v1.1.q"
OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
RSA_PEM, ED_PEM = pem(RSA_KEY), pem(ED_KEY)
RSA_P = base64.b64encode(
    RSA_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
ED_P = base64.b64encode(
    ED_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
).decode()
RECORDS = {
    f"{RSA_SELECTOR}._domainkey.{DOMAIN}.": f"v=DKIM1; k=rsa; p={RSA_P}",
    f"{ED_SELECTOR}._domainkey.{DOMAIN}.": f"v=DKIM1; k=ed25519; p={ED_P}",
}
BOTH = DkimSigner(
    [
        DkimKey(domain=DOMAIN, selector=RSA_SELECTOR, private_key=RSA_PEM),
        DkimKey(domain=DOMAIN, selector=ED_SELECTOR, private_key=ED_PEM, kind="ed25519"),
    ]
)


def dns(name: bytes, timeout: int = 5) -> bytes:
    return RECORDS.get(name.decode().rstrip(".") + ".", "").encode()


def dkimpy_results(message: bytes) -> list[bool]:
    """Each DKIM-Signature's verdict, top to bottom."""
    count = len(re.findall(rb"^DKIM-Signature:", message, flags=re.M))
    checker = dkim.DKIM(message)
    return [checker.verify(idx=i, dnsfunc=dns) for i in range(count)]


def template(rendition: EmailRendition, signer: DkimSigner | None = BOTH) -> MessageTemplate:
    return MessageTemplate.build(
        rendition,
        sender=SENDER,
        list_id="newsletter.bzi.example.org",
        message_id_domain=DOMAIN,
        unsubscribe_mailto="abmelden@bzi.example.org",
        dkim=signer,
    )


def filled(prepared: MessageTemplate, to: str = "a@example.org") -> bytes:
    return prepared.fill(to=to, unsubscribe_url=UNSUBSCRIBE, preferences_url=PREFERENCES)


# --- the signer against dkimpy -------------------------------------------------------------------


def test_both_signatures_verify_and_cover_the_list_headers(
    renderer: Renderer, example: Announcement
) -> None:
    prepared = template(renderer.email(example))
    for to in ("a@example.org", "b.c@example.net"):
        message = filled(prepared, to)
        assert dkimpy_results(message) == [True, True]
        head = message.split(b"\r\n\r\n", 1)[0].decode()
        assert "a=rsa-sha256" in head and "a=ed25519-sha256" in head
        signed = re.findall(r";h=([^;]+);", re.sub(r"\s", "", head))
        assert signed and all(
            "list-unsubscribe:list-unsubscribe-post" in h and "from:to:subject" in h for h in signed
        )
    changed = message.replace(b"List-Unsubscribe: <https://", b"List-Unsubscribe: <http://")
    assert dkimpy_results(changed) == [False, False]


def test_the_wire_form_carries_the_same_signed_message(
    renderer: Renderer, example: Announcement
) -> None:
    prepared = template(renderer.email(example))
    data = prepared.fill_data(
        to="a@example.org", unsubscribe_url=UNSUBSCRIBE, preferences_url=PREFERENCES
    )
    message = data[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.")  # what the server stores
    assert dkimpy_results(message) == [True, True]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.text(alphabet=" \t\nabcäß.=-", max_size=90)
        | st.sampled_from([UNSUBSCRIBE_PLACEHOLDER, PREFERENCES_PLACEHOLDER, "  ", " \n", "\n\n"]),
        min_size=1,
        max_size=12,
    )
)
def test_the_precomputed_body_hash_equals_the_whole_message_one(pieces: list[str]) -> None:
    """Whatever whitespace surrounds the slots, the body hash from the pieces computed once is
    the one canonicalising the whole filled message gives."""
    text = "".join(pieces)
    rendition = EmailRendition(subject="Betreff", preheader="", html=f"<p>{text}</p>", text=text)
    signed = filled(template(rendition))
    unsigned = signed[signed.index(b"\r\nTo: ") + 2 :]  # the signatures come first
    assert _body_hashes(signed) == _body_hashes(BOTH.sign(unsigned))
    assert dkimpy_results(signed) == [True, True]


def _body_hashes(message: bytes) -> list[str]:
    head = re.sub(rb"\s", b"", message.split(b"\r\n\r\n", 1)[0])
    return [h.decode() for h in re.findall(rb"bh=([^;]+);", head)]


# --- `serve` into an SMTP capture, verified by OpenDKIM ------------------------------------------


def opendkim_available() -> bool:
    return Path(OPENDKIM).exists()


def opendkim_verdicts(message: bytes, tmp_path: Path) -> dict[str, str]:
    """OpenDKIM's verdict per signature, by algorithm (``{"rsa-sha256": "pass", …}``): its test
    mode (``opendkim -t``) with the public keys from a file instead of DNS; ``-vv`` prints the
    Authentication-Results header it would add."""
    keys = tmp_path / "test-keys"
    keys.write_text("".join(f"{name.rstrip('.')} {value}\n" for name, value in RECORDS.items()))
    conf = tmp_path / "opendkim.conf"
    conf.write_text(f"Mode v\nTestPublicKeys {keys}\nSyslog no\nMinimumKeyBits 2048\n")
    path = tmp_path / "message.eml"
    path.write_bytes(message)
    done = subprocess.run(
        [OPENDKIM, "-x", str(conf), "-vv", "-t", str(path)], capture_output=True, timeout=30
    )
    report = (done.stdout + done.stderr).decode(errors="replace")
    found = re.findall(r"dkim=(\w+)[^;]*header\.a=([\w-]+) header\.s=(\w+)", report)
    assert found, report
    return {algorithm: verdict for verdict, algorithm, _selector in found}


async def test_serve_delivers_mail_that_opendkim_verifies(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    require_or_skip(opendkim_available(), "OpenDKIM (apt-get install opendkim opendkim-tools)")
    await add_subscribers(engine, 3)
    async with SmtpCapture() as smtp:
        settings = load_settings(None, dkim_environment(tmp_path, database_url, smtp.port))
        service = Service(settings, engine=None)
        task = asyncio.create_task(service.run())
        try:
            await control.queue(
                Announcements(engine),
                example_announcement(),
                at=datetime.now(UTC),
                actor="test",
                allow_past=True,
            )
            received = await smtp.handler.wait_for(3)
        finally:
            service.stop()
            await asyncio.wait_for(task, 30)
    message = received[0].data
    # OpenDKIM 2.11 (Debian) verifies Ed25519-SHA256 as well as RSA-SHA256
    assert opendkim_verdicts(message, tmp_path) == {"rsa-sha256": "pass", "ed25519-sha256": "pass"}
    assert dkimpy_results(message) == [True, True]
    # the first link is the List-Unsubscribe header's: only the header changes, not the body
    changed = re.sub(rb"abmelden/[^>]+>", b"abmelden/someone-else>", message, count=1)
    assert b"/abmelden/someone-else>" in changed.split(b"\r\n\r\n", 1)[0]
    assert opendkim_verdicts(changed, tmp_path) == {"rsa-sha256": "fail", "ed25519-sha256": "fail"}
    assert dkimpy_results(changed) == [False, False]


def dkim_environment(tmp_path: Path, database_url: str, port: int) -> dict[str, str]:
    (tmp_path / "rsa.pem").write_bytes(RSA_PEM)
    (tmp_path / "ed.pem").write_bytes(ED_PEM)
    return {
        "BZI_DATABASE_URL": database_url,
        "BZI_SECURITY_SECRET_KEY": TEST_SECRET_KEY,
        "BZI_SMTP_PORT": str(port),
        "BZI_WEB_PORT": "0",
        "BZI_DELIVERY_POLL_INTERVAL": "0.05",
        "BZI_DELIVERY_FLUSH_INTERVAL": "0.05",
        "BZI_EMAIL_DKIM_DOMAIN": DOMAIN,
        "BZI_EMAIL_DKIM_SELECTOR": RSA_SELECTOR,
        "BZI_EMAIL_DKIM_PRIVATE_KEY_FILE": str(tmp_path / "rsa.pem"),
        "BZI_EMAIL_DKIM_ED25519_SELECTOR": ED_SELECTOR,
        "BZI_EMAIL_DKIM_ED25519_PRIVATE_KEY_FILE": str(tmp_path / "ed.pem"),
    }


async def test_a_service_mail_is_signed_too(tmp_path: Path) -> None:
    from bzi_broadcast.service import email_channel
    from bzi_broadcast.store.rate_slots import MemorySlots

    async with SmtpCapture() as smtp:
        settings = load_settings(None, dkim_environment(tmp_path, "sqlite://", smtp.port))
        channel = email_channel(settings, Renderer(settings), MemorySlots())
        try:
            await channel.send_single(
                "neu@example.org", "Bitte bestätigen", "<p>Hallo</p>", "Hallo"
            )
        finally:
            await channel.aclose()
    assert dkimpy_results(smtp.received[0].data) == [True, True]


# --- settings ---------------------------------------------------------------------------------


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "rsa.pem").write_bytes(RSA_PEM)
    return {
        "BZI_EMAIL_DKIM_DOMAIN": DOMAIN,
        "BZI_EMAIL_DKIM_SELECTOR": RSA_SELECTOR,
        "BZI_EMAIL_DKIM_PRIVATE_KEY_FILE": str(tmp_path / "rsa.pem"),
        **extra,
    }


def problem(environ: Mapping[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ)
    return caught.value.message


def test_the_key_comes_from_a_file_and_stays_out_of_reprs_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(None, env(tmp_path))
    assert settings.email.dkim_private_key is not None
    assert settings.email.dkim_private_key.get_secret_value() == RSA_PEM.decode().strip()
    body = RSA_PEM.decode().splitlines()[1]
    signer = configured_signer(settings.email)
    assert signer is not None
    for text in (repr(settings), str(settings), repr(settings.email), repr(signer)):
        assert body not in text and "PRIVATE" not in text
    assert settings.email.dkim_private_key.get_secret_value() in settings.secrets()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("bzi_broadcast").info("settings %s, signer %s", settings, signer)
    assert body not in caplog.text


def test_a_key_in_the_environment_works_too() -> None:
    settings = load_settings(
        None,
        {
            "BZI_EMAIL_DKIM_DOMAIN": DOMAIN,
            "BZI_EMAIL_DKIM_SELECTOR": RSA_SELECTOR,
            "BZI_EMAIL_DKIM_PRIVATE_KEY": RSA_PEM.decode(),
        },
    )
    assert configured_signer(settings.email) is not None


def test_a_key_that_does_not_parse_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n")
    message = problem(
        env(tmp_path) | {"BZI_EMAIL_DKIM_PRIVATE_KEY_FILE": str(tmp_path / "bad.pem")}
    )
    assert message.startswith("email.dkim_private_key: kein lesbarer privater Schlüssel")
    assert "BZI_EMAIL_DKIM_PRIVATE_KEY_FILE" in message
    assert "\n" not in message and "Traceback" not in message and "nonsense" not in message


def test_a_short_rsa_key_is_refused(tmp_path: Path) -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "short.pem").write_bytes(pem(short))
    message = problem(
        env(tmp_path) | {"BZI_EMAIL_DKIM_PRIVATE_KEY_FILE": str(tmp_path / "short.pem")}
    )
    assert message.startswith("email.dkim_private_key: RSA-Schlüssel mit 1024 Bit ist zu kurz")


def test_the_wrong_kind_of_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ed.pem").write_bytes(ED_PEM)
    message = problem(env(tmp_path) | {"BZI_EMAIL_DKIM_PRIVATE_KEY_FILE": str(tmp_path / "ed.pem")})
    assert message.startswith("email.dkim_private_key: kein RSA-Schlüssel")


def test_partial_settings_name_what_is_missing(tmp_path: Path) -> None:
    message = problem({"BZI_EMAIL_DKIM_DOMAIN": DOMAIN})
    assert "email.dkim_selector: fehlt" in message
    assert (
        "email.dkim_private_key: fehlt" in message and "BZI_EMAIL_DKIM_PRIVATE_KEY_FILE" in message
    )
    message = problem(env(tmp_path, BZI_EMAIL_DKIM_ED25519_SELECTOR=ED_SELECTOR))
    assert message.startswith("email.dkim_ed25519_private_key: fehlt")
    message = problem(
        env(
            tmp_path,
            BZI_EMAIL_DKIM_ED25519_SELECTOR=RSA_SELECTOR,
            BZI_EMAIL_DKIM_ED25519_PRIVATE_KEY=ED_PEM.decode(),
        )
    )
    assert "email.dkim_ed25519_selector: muss sich" in message
    assert "email.dkim_domain: passt nicht" in problem(env(tmp_path, BZI_EMAIL_DKIM_DOMAIN="a b"))


def test_without_dkim_settings_nothing_signs() -> None:
    assert configured_signer(Settings().email) is None


# --- `dkim record` and `dkim keygen` -------------------------------------------------------------


def test_dkim_record_prints_the_public_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ed.pem").write_bytes(ED_PEM)
    environ = env(
        tmp_path,
        BZI_EMAIL_DKIM_ED25519_SELECTOR=ED_SELECTOR,
        BZI_EMAIL_DKIM_ED25519_PRIVATE_KEY_FILE=str(tmp_path / "ed.pem"),
    )
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["dkim", "record"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line, (selector, kind, public) in zip(
        lines, [(RSA_SELECTOR, "rsa", RSA_P), (ED_SELECTOR, "ed25519", ED_P)], strict=True
    ):
        name, _in, _txt, rest = line.split(" ", 3)
        assert (name, _in, _txt) == (f"{selector}._domainkey.{DOMAIN}.", "IN", "TXT")
        strings = re.findall(r'"([^"]*)"', rest)
        assert all(len(s.encode()) <= 255 for s in strings)
        assert "".join(strings) == f"v=DKIM1; k={kind}; p={public}"
    assert len(re.findall(r'"', lines[0])) == 4  # RSA 2048: two strings


def test_dkim_record_without_dkim_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("BZI_EMAIL_DKIM"):
            monkeypatch.delenv(name)
    assert cli.main(["dkim", "record"]) == 2
    assert "DKIM ist nicht eingerichtet" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_dkim_keygen_writes_a_private_file(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "key.pem"
    assert (
        cli.main(["dkim", "keygen", str(path), *(["--ed25519"] if kind == "ed25519" else [])]) == 0
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey if kind == "rsa" else ed25519.Ed25519PrivateKey)
    assert cli.main(["dkim", "keygen", str(path)]) == 2  # never overwrites
    assert "nicht geschrieben" in capsys.readouterr().err
