"""The per-recipient email bytes and the signed link tokens."""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bzi_broadcast.channels.email_mime import DkimKey, MessageTemplate, Sender, sign_dkim
from bzi_broadcast.content import Announcement
from bzi_broadcast.render import Renderer
from bzi_broadcast.render.renditions import (
    PREFERENCES_PLACEHOLDER,
    UNSUBSCRIBE_PLACEHOLDER,
    EmailRendition,
)
from bzi_broadcast.tokens import TokenError, TokenExpiredError, TokenSigner

SENDER = Sender(address="newsletter@bzi.example.org", name="BZI – Newsletter „aktuell“")
UNSUBSCRIBE = "https://bzi.example.org/abmelden/v1.1.abc_DEF-123.xyz?x=1&y=%C3%A4"
PREFERENCES = "https://bzi.example.org/einstellungen/v1.1.q"


def template_for(rendition: EmailRendition, **options: object) -> MessageTemplate:
    return MessageTemplate.build(
        rendition,
        sender=SENDER,
        list_id="newsletter.bzi.example.org",
        message_id_domain="bzi.example.org",
        unsubscribe_mailto="abmelden@bzi.example.org",
        **options,  # type: ignore[arg-type]
    )


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage, kind: str) -> str:
    part = message.get_body((kind,))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def expected(text: str) -> str:
    return text.replace(UNSUBSCRIBE_PLACEHOLDER, UNSUBSCRIBE).replace(
        PREFERENCES_PLACEHOLDER, PREFERENCES
    )


def test_filled_message_has_every_part_and_header(
    renderer: Renderer, example: Announcement
) -> None:
    rendition = renderer.email(example)
    data = template_for(rendition).fill(
        to="leser@example.org", unsubscribe_url=UNSUBSCRIBE, preferences_url=PREFERENCES
    )
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    message = parse(data)
    assert message["To"] == "leser@example.org"
    assert message["Subject"] == rendition.subject
    assert message["From"].addresses[0].display_name == "BZI – Newsletter „aktuell“"
    assert message["List-Id"] == "<newsletter.bzi.example.org>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Unsubscribe"].startswith(f"<{UNSUBSCRIBE}>")
    assert "mailto:abmelden@bzi.example.org" in message["List-Unsubscribe"]
    assert message.get_content_type() == "multipart/alternative"
    assert body(message, "plain") == expected(rendition.text)
    assert body(message, "html").rstrip("\n") == expected(rendition.html).rstrip("\n")


def test_quoted_printable_lines_stay_within_76(renderer: Renderer, example: Announcement) -> None:
    data = template_for(renderer.email(example)).fill(
        to="a@example.org", unsubscribe_url=UNSUBSCRIBE + "x" * 300, preferences_url=PREFERENCES
    )
    body_lines = data.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert max(len(line) for line in body_lines) <= 76


def test_every_fill_gets_its_own_message_id(renderer: Renderer, example: Announcement) -> None:
    template = template_for(renderer.email(example))
    ids = {
        parse(
            template.fill(
                to="a@example.org", unsubscribe_url=UNSUBSCRIBE, preferences_url=PREFERENCES
            )
        )["Message-ID"]
        for _ in range(50)
    }
    assert len(ids) == 50


@pytest.mark.parametrize(
    "to",
    [
        "a@example.org\r\nBcc: x@example.org",
        "A <a@example.org>",
        "a@example.org, b@example.org",
        "",
    ],
)
def test_header_injection_is_impossible(to: str, renderer: Renderer, example: Announcement) -> None:
    template = template_for(renderer.email(example))
    with pytest.raises(ValueError, match="address"):
        template.fill(to=to, unsubscribe_url=UNSUBSCRIBE, preferences_url=PREFERENCES)
    with pytest.raises(ValueError, match="URL"):
        template.fill(
            to="a@example.org",
            unsubscribe_url="https://x.de/\r\nBcc: y",
            preferences_url=PREFERENCES,
        )
    with pytest.raises(ValueError, match="line breaks"):
        MessageTemplate.build(
            renderer.email(example),
            sender=Sender(address="a@example.org", name="X\r\nBcc: y@example.org"),
            list_id="l",
            message_id_domain="d",
        )


def test_inline_image_goes_into_multipart_related(
    renderer: Renderer, example: Announcement
) -> None:
    rendition = renderer.email(example)
    data = template_for(
        rendition, inline_image=b"\x89PNG fake", inline_image_type="image/png"
    ).fill(to="a@example.org", unsubscribe_url=UNSUBSCRIBE, preferences_url=PREFERENCES)
    message = parse(data)
    related = [p for p in message.walk() if p.get_content_type() == "multipart/related"]
    assert len(related) == 1
    image = next(p for p in message.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<announcement-image@bzi-broadcast>"


@settings(max_examples=80, deadline=None)
@given(
    text=st.text(min_size=1, max_size=400),
    html=st.text(min_size=1, max_size=400),
    token=st.text(alphabet="abcdefXYZ0123456789-_.~=&?%", min_size=1, max_size=200),
)
def test_any_body_round_trips(text: str, html: str, token: str) -> None:
    text = text.replace("\r", "") + f"\n{UNSUBSCRIBE_PLACEHOLDER} {PREFERENCES_PLACEHOLDER}"
    html = html.replace("\r", "") + f'<a href="{UNSUBSCRIBE_PLACEHOLDER}">x</a>'
    rendition = EmailRendition(subject="S", preheader="", html=html, text=text)
    url = f"https://bzi.example.org/abmelden/{token}"
    data = template_for(rendition).fill(
        to="a@example.org", unsubscribe_url=url, preferences_url=PREFERENCES
    )
    message = parse(data)
    got = body(message, "plain")
    assert got.rstrip("\n") == text.replace(UNSUBSCRIBE_PLACEHOLDER, url).replace(
        PREFERENCES_PLACEHOLDER, PREFERENCES
    ).rstrip("\n")
    assert f'href="{url}"' in body(message, "html")


def test_dkim_signature_covers_list_unsubscribe(
    renderer: Renderer, example: Announcement, tmp_path: Path
) -> None:
    import dkim

    key_path = tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(key_path), "2048"], check=True, capture_output=True
    )
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(key_path), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    import base64

    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    key = DkimKey(domain="bzi.example.org", selector="news", private_key=key_path.read_bytes())
    assert "BEGIN" not in repr(key)
    data = template_for(renderer.email(example)).fill(
        to="a@example.org", unsubscribe_url=UNSUBSCRIBE, preferences_url=PREFERENCES
    )
    signed = sign_dkim(data, key)
    header = signed.split(b"\r\n\r\n", 1)[0].decode()
    signed_headers = re.search(r"h=([^;]+);", header.replace("\r\n", "").replace(" ", ""))
    assert signed_headers is not None
    assert "list-unsubscribe:list-unsubscribe-post" in signed_headers.group(1)
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)


NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_token_round_trip_and_rejections() -> None:
    signer = TokenSigner(b"k" * 32)
    token = signer.sign(purpose="unsubscribe", subject="42", ttl=timedelta(days=1), now=NOW)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token)
    assert signer.verify(token, purpose="unsubscribe", now=NOW).subject == "42"
    with pytest.raises(TokenError):
        signer.verify(token, purpose="confirm", now=NOW)
    with pytest.raises(TokenExpiredError, match="abgelaufen"):
        signer.verify(token, purpose="unsubscribe", now=NOW + timedelta(days=2))
    version, key_id, _payload, mac = token.split(".")
    forged = TokenSigner(b"x" * 32).sign(
        purpose="unsubscribe", subject="43", ttl=timedelta(days=1), now=NOW
    )
    for bad in (f"{version}.{key_id}.{forged.split('.')[2]}.{mac}", token[:-2], "x", ""):
        with pytest.raises(TokenError):
            signer.verify(bad, purpose="unsubscribe", now=NOW)


def test_rotated_keys_still_verify_and_reprs_hide_secrets() -> None:
    old = TokenSigner(b"o" * 32, key_id="1")
    token = old.sign(purpose="confirm", subject="x", ttl=timedelta(hours=1), now=NOW)
    new = TokenSigner(b"n" * 32, key_id="2", old_secrets={"1": b"o" * 32})
    assert new.verify(token, purpose="confirm", now=NOW).subject == "x"
    assert "nnnn" not in repr(new)
    assert "oooo" not in repr(new)


@settings(max_examples=100, deadline=None)
@given(subject=st.text(min_size=0, max_size=100))
def test_any_subject_round_trips(subject: str) -> None:
    signer = TokenSigner(b"s" * 32)
    token = signer.sign(purpose="preferences", subject=subject, ttl=timedelta(days=1), now=NOW)
    assert signer.verify(token, purpose="preferences", now=NOW).subject == subject
