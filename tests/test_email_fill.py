"""The per-recipient fill: byte for byte what the code before the fast fill produced, and its
DATA form exactly what the SMTP client would make of it.

``old_fill`` is a frozen copy of ``MessageTemplate.fill`` and its helpers as they were at commit
b846a32 (before issue 14 item 4); it runs on the same template segments.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bzi_broadcast.channels.email_mime import MessageTemplate, Sender
from bzi_broadcast.channels.smtp import data_bytes
from bzi_broadcast.content import Announcement
from bzi_broadcast.render import Renderer
from bzi_broadcast.render.renditions import (
    PREFERENCES_PLACEHOLDER,
    UNSUBSCRIBE_PLACEHOLDER,
    EmailRendition,
)

# --- the previous fill, frozen -------------------------------------------------------------
_OLD_ADDRESS = re.compile(rb"^[^\s@<>()\[\],;:\\\"]{1,64}@[A-Za-z0-9.-]{1,253}$")
_OLD_SAFE = frozenset(range(33, 127)) - {ord("=")}


def _old_url(url: str) -> bytes:
    encoded = url.encode("ascii", errors="strict") if url.isascii() else None
    if encoded is None or re.search(rb"[\s<>\"]", encoded):
        raise ValueError(f"not a safe URL: {url!r}")
    return encoded


def _old_qp_tokens(data: bytes) -> Iterator[str]:
    for byte in data:
        yield chr(byte) if byte in _OLD_SAFE or byte == 32 else f"={byte:02X}"


def _old_qp_slot(url: bytes) -> bytes:
    encoded = "".join(_old_qp_tokens(url))
    lines: list[str] = []
    while len(encoded) > 76 - 1:
        cut = 76 - 1
        while "=" in encoded[cut - 2 : cut]:
            cut -= 1
        lines.append(encoded[:cut] + "=")
        encoded = encoded[cut:]
    lines.append(encoded)
    return "\r\n".join(lines).encode()


def old_fill(
    template: MessageTemplate, *, to: str, unsubscribe_url: str, preferences_url: str, mid: str
) -> bytes:
    address = to.encode()
    if not _OLD_ADDRESS.match(address):
        raise ValueError(f"not a single plain address: {to!r}")
    urls = {
        UNSUBSCRIBE_PLACEHOLDER.encode(): _old_url(unsubscribe_url),
        PREFERENCES_PLACEHOLDER.encode(): _old_url(preferences_url),
    }
    unsubscribe_header = b"<" + urls[UNSUBSCRIBE_PLACEHOLDER.encode()] + b">"
    if template._mailto:
        unsubscribe_header += b",\r\n " + template._mailto
    head = (
        b"To: "
        + address
        + b"\r\nMessage-ID: <"
        + mid.encode()
        + b">\r\nList-Unsubscribe: "
        + unsubscribe_header
        + b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    )
    slots = {name: _old_qp_slot(url) for name, url in urls.items()}
    body = [slots[s] if i % 2 else s for i, s in enumerate(template._segments)]
    return head + b"".join(body)


# --- the tests ---------------------------------------------------------------------------------
SENDER = Sender(address="newsletter@bzi.example.org", name="BZI – Newsletter „aktuell“")
TOKEN = "v1.1.dW5zdWJzY3JpYmV8MTc5NTYwMDAwMHw0Mi5hYmNkZWZnaGlqa2xtbm9w.q83Jd-Wz0Kc1c0n3zBm1Sg"
RECIPIENTS = [
    ("leser@example.org", f"https://bzi.example.org/abmelden/{TOKEN}"),
    ("jürgen.müller@example.org", f"https://bzi.example.org/abmelden/{TOKEN}?a=1&b=%C3%A4"),
    ("a+b@sub.example.org", "https://bzi.example.org/" + "x=" * 120),  # wraps, never inside =3D
    ("x@example.org", "https://bzi.example.org/a\x01b\x7fc" + "." * 90),  # the slow way, dots
    ("ÄÖÜ@example.org", "http://127.0.0.1:8080/abmelden/" + "y" * 74 + ".z"),
]


def template_for(rendition: EmailRendition, **options: object) -> MessageTemplate:
    return MessageTemplate.build(
        rendition,
        sender=SENDER,
        list_id="newsletter.bzi.example.org",
        message_id_domain="bzi.example.org",
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"unsubscribe_mailto": "abmelden@bzi.example.org"},
        {"inline_image": b"\x89PNG fake", "inline_image_type": "image/png"},
    ],
)
def test_fill_is_byte_identical_to_the_previous_fill(
    renderer: Renderer, example: Announcement, options: dict[str, object]
) -> None:
    template = template_for(renderer.email(example), **options)
    for to, url in RECIPIENTS:
        mid = f"{secrets.token_hex(12)}@bzi.example.org"
        preferences = url.replace("abmelden", "einstellungen")
        new = template.fill(to=to, unsubscribe_url=url, preferences_url=preferences, message_id=mid)
        old = old_fill(template, to=to, unsubscribe_url=url, preferences_url=preferences, mid=mid)
        assert new == old
        wire = template.fill_data(
            to=to, unsubscribe_url=url, preferences_url=preferences, message_id=mid
        )
        assert wire == data_bytes(new)


URL_CHARS = st.characters(
    min_codepoint=1, max_codepoint=127, blacklist_characters=' \t\n\r\x0b\x0c<>"'
)


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list(".a \n=ä")), max_size=300),
    url=st.text(alphabet=URL_CHARS, max_size=250),
    local=st.text(alphabet=st.sampled_from(list("ab.+_-äß")), min_size=1, max_size=20),
)
def test_any_body_and_link_fill_as_before_and_stuff_as_the_client_would(
    text: str, url: str, local: str
) -> None:
    # bodies full of lines that start with a dot, links that wrap onto lines that start with one
    text = f".{text}\n.{UNSUBSCRIBE_PLACEHOLDER}\n{PREFERENCES_PLACEHOLDER}."
    html = f'<a href="{UNSUBSCRIBE_PLACEHOLDER}">.</a>\n.{text}'
    template = template_for(EmailRendition(subject="S", preheader="", html=html, text=text))
    to, unsubscribe, preferences = f"{local}@example.org", f"https://x.example/{url}", url
    try:
        old = old_fill(
            template, to=to, unsubscribe_url=unsubscribe, preferences_url=preferences, mid="m@x"
        )
    except ValueError:
        with pytest.raises(ValueError, match=r"address|URL"):
            template.fill(to=to, unsubscribe_url=unsubscribe, preferences_url=preferences)
        return
    kwargs = {"to": to, "unsubscribe_url": unsubscribe, "preferences_url": preferences}
    assert template.fill(**kwargs, message_id="m@x") == old
    assert template.fill_data(**kwargs, message_id="m@x") == data_bytes(old)


def test_a_message_id_cannot_break_the_headers(renderer: Renderer, example: Announcement) -> None:
    template = template_for(renderer.email(example))
    with pytest.raises(ValueError, match="line breaks"):
        template.fill(
            to="a@example.org",
            unsubscribe_url="https://x.example/u",
            preferences_url="https://x.example/p",
            message_id="x@y>\r\nBcc: z@example.org",
        )
