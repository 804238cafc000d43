"""One MIME message per announcement, filled per recipient at the byte level.

``MessageTemplate.build`` renders the whole message once with the standard ``email`` package
(RFC 2047 headers, multipart/alternative text + HTML, quoted-printable bodies). The per-recipient
links are placeholders our own QP encoder puts on lines of their own, so ``fill`` only joins
precomputed byte segments with the recipient's QP-encoded URLs and prepends the recipient's
headers (To, Message-ID, List-Unsubscribe, List-Unsubscribe-Post). No per-recipient MIME rebuild.
"""

from __future__ import annotations

import io
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import SMTP
from email.utils import format_datetime

from bzi_broadcast.channels.dkim import DKIM_HEADERS, DkimKey, DkimSigner
from bzi_broadcast.channels.smtp import data_bytes
from bzi_broadcast.render.email import INLINE_IMAGE_CID
from bzi_broadcast.render.renditions import (
    PREFERENCES_PLACEHOLDER,
    UNSUBSCRIBE_PLACEHOLDER,
    EmailRendition,
)

MAX_QP_LINE = 76
_ADDRESS = re.compile(rb"^[^\s@<>()\[\],;:\\\"]{1,64}@[A-Za-z0-9.-]{1,253}$")
_SLOTS = re.compile(
    f"({re.escape(UNSUBSCRIBE_PLACEHOLDER)}|{re.escape(PREFERENCES_PLACEHOLDER)})".encode()
)
_SAFE = frozenset(range(33, 127)) - {ord("=")}
_PRINTABLE = re.compile(rb"[!-~]*")  # bytes 33..126: QP-safe but for "="
_UNSAFE_URL = re.compile(rb"[\s<>\"]")
_UNSUBSCRIBE = UNSUBSCRIBE_PLACEHOLDER.encode()
_PREFERENCES = PREFERENCES_PLACEHOLDER.encode()
__all__ = ["DKIM_HEADERS", "DkimKey", "MessageTemplate", "Sender", "sign_dkim"]


@dataclass(frozen=True, kw_only=True)
class Sender:
    address: str
    name: str | None = None
    reply_to: str | None = None


def _single_line(value: str, what: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} must not contain line breaks")
    return value


class MessageTemplate:
    def __init__(
        self,
        segments: tuple[bytes, ...],
        list_unsubscribe_mailto: bytes | None,
        message_id_domain: str,
        dkim: DkimSigner | None = None,
    ) -> None:
        self._segments = segments  # even indices: fixed bytes; odd: a slot name
        self._slots = tuple((i, segments[i]) for i in range(1, len(segments), 2))
        self._mailto = list_unsubscribe_mailto
        self._domain = message_id_domain.encode()
        # The fixed parts as they go over the wire (dot-stuffed), when every line ends in CRLF
        # (the generator writes CRLF; anything else takes the general way through data_bytes).
        whole = b"".join(segments)
        clean = whole.count(b"\n") == whole.count(b"\r\n") == whole.count(b"\r")
        self._wire = tuple(_stuffed(s) for s in segments) if clean else None
        # DKIM: the fixed headers and body pieces canonicalised and hashed once
        self._dkim = dkim.prepare(segments) if dkim else None

    @classmethod
    def build(
        cls,
        rendition: EmailRendition,
        *,
        sender: Sender,
        list_id: str,
        message_id_domain: str,
        unsubscribe_mailto: str | None = None,
        inline_image: bytes | None = None,
        inline_image_type: str | None = None,
        date: datetime | None = None,
        dkim: DkimSigner | None = None,
    ) -> MessageTemplate:
        root = _body(rendition, inline_image, inline_image_type)
        root["From"] = str(
            Address(
                display_name=_single_line(sender.name or "", "sender name"),
                addr_spec=_single_line(sender.address, "sender"),
            )
        )
        if sender.reply_to:
            root["Reply-To"] = _single_line(sender.reply_to, "reply-to")
        root["Subject"] = _single_line(rendition.subject, "subject")
        root["Date"] = format_datetime(date or datetime.now(UTC))
        root["List-Id"] = f"<{_single_line(list_id, 'list id')}>"
        buffer = io.BytesIO()
        BytesGenerator(buffer, policy=SMTP).flatten(root)  # type: ignore[arg-type]
        mailto = None
        if unsubscribe_mailto:
            mailto = f"<mailto:{_single_line(unsubscribe_mailto, 'mailto')}?subject=unsubscribe>"
        return cls(
            tuple(_SLOTS.split(buffer.getvalue())),
            mailto.encode() if mailto else None,
            message_id_domain,
            dkim,
        )

    def fill(
        self, *, to: str, unsubscribe_url: str, preferences_url: str, message_id: str | None = None
    ) -> bytes:
        """The complete message for one recipient, CRLF line endings, ready for DATA."""
        head, slots = self._recipient(to, unsubscribe_url, preferences_url, message_id)
        parts = list(self._segments)
        for index, name in self._slots:
            parts[index] = slots[name]
        if self._dkim is not None:
            head = self._dkim.headers(head, [slots[name] for _i, name in self._slots]) + head
        return head + b"".join(parts)

    def fill_data(
        self, *, to: str, unsubscribe_url: str, preferences_url: str, message_id: str | None = None
    ) -> bytes:
        """``fill`` as SMTP sends it after DATA, ``data_bytes(fill(...))``, without scanning the
        whole message for lines to dot-stuff: the fixed parts were stuffed once, per recipient
        only the links are (the headers never start a line with a dot)."""
        if self._wire is None:
            return data_bytes(
                self.fill(
                    to=to,
                    unsubscribe_url=unsubscribe_url,
                    preferences_url=preferences_url,
                    message_id=message_id,
                )
            )
        head, slots = self._recipient(to, unsubscribe_url, preferences_url, message_id)
        if self._dkim is not None:  # DKIM-Signature lines never start with a dot
            head = self._dkim.headers(head, [slots[name] for _i, name in self._slots]) + head
        parts = [head, *self._wire]
        for index, name in self._slots:
            parts[index + 1] = _stuffed(slots[name])
        last = head[-1:]
        for i in range(1, len(parts)):  # a dot that starts a line where two parts meet
            if parts[i][:1] == b"." and last == b"\n":
                parts[i] = b"." + parts[i]
            last = parts[i][-1:] or last
        data = b"".join(parts)
        return data + b".\r\n" if data.endswith(b"\r\n") else data + b"\r\n.\r\n"

    def _recipient(
        self, to: str, unsubscribe_url: str, preferences_url: str, message_id: str | None
    ) -> tuple[bytes, dict[bytes, bytes]]:
        """The recipient's headers and the QP-encoded links for the slots."""
        address = to.encode()
        if not _ADDRESS.match(address):
            raise ValueError(f"not a single plain address: {to!r}")
        unsubscribe = _url(unsubscribe_url)
        head = self._headers(address, unsubscribe, message_id)
        slots = {_UNSUBSCRIBE: _qp_slot(unsubscribe), _PREFERENCES: _qp_slot(_url(preferences_url))}
        return head, slots

    def _headers(self, to: bytes, unsubscribe: bytes, message_id: str | None) -> bytes:
        mid = (
            _single_line(message_id, "message id").encode()
            if message_id
            else secrets.token_hex(12).encode() + b"@" + self._domain
        )
        unsubscribe_header = b"<" + unsubscribe + b">"
        if self._mailto:
            unsubscribe_header += b",\r\n " + self._mailto
        return (
            b"To: "
            + to
            + b"\r\nMessage-ID: <"
            + mid
            + b">\r\nList-Unsubscribe: "
            + unsubscribe_header
            + b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        )


def _url(url: str) -> bytes:
    encoded = url.encode("ascii", errors="strict") if url.isascii() else None
    if encoded is None or _UNSAFE_URL.search(encoded):
        raise ValueError(f"not a safe URL: {url!r}")
    return encoded


def _stuffed(data: bytes) -> bytes:
    """Lines inside ``data`` that start with "." get a second one (RFC 5321 4.5.2); a dot at its
    very start is the caller's (it depends on what comes before)."""
    return data.replace(b"\n.", b"\n..")


def _body(rendition: EmailRendition, image: bytes | None, image_type: str | None) -> MIMEMultipart:
    alternative = MIMEMultipart("alternative", policy=SMTP)
    alternative.attach(_qp_part("plain", rendition.text))
    html = _qp_part("html", rendition.html)
    if image is None:
        alternative.attach(html)
        return alternative
    related = MIMEMultipart("related", policy=SMTP)
    related.attach(html)
    picture = MIMEImage(image, _subtype=(image_type or "image/jpeg").split("/")[1], policy=SMTP)
    del picture["MIME-Version"]
    picture["Content-ID"] = f"<{INLINE_IMAGE_CID}>"
    picture["Content-Disposition"] = "inline"
    related.attach(picture)
    del related["MIME-Version"]
    alternative.attach(related)
    return alternative


def _qp_part(subtype: str, text: str) -> MIMENonMultipart:
    part = MIMENonMultipart("text", subtype, charset="utf-8", policy=SMTP)
    del part["MIME-Version"]
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(encode_qp(text))
    return part


def encode_qp(text: str) -> str:
    """Quoted-printable (RFC 2045) with every placeholder alone on a soft-broken line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(_qp_line(line) for line in lines)


def _qp_line(line: str) -> str:
    out: list[str] = []
    current = ""
    for piece in _SLOTS.split(line.encode()):
        if _SLOTS.fullmatch(piece):
            if current:
                out.append(current + "=")
            out.append(piece.decode() + "=")
            current = ""
            continue
        for token in _qp_tokens(piece):
            if len(current) + len(token) > MAX_QP_LINE - 1:
                out.append(current + "=")
                current = ""
            current += token
    current = _protect_trailing_space(current)
    if out and not current:
        out[-1] = out[-1][:-1] if out[-1].endswith("=") else out[-1]
        return "\n".join(out)
    out.append(current)
    return "\n".join(out)


def _qp_tokens(data: bytes) -> Iterator[str]:
    for byte in data:
        yield chr(byte) if byte in _SAFE or byte == 32 else f"={byte:02X}"


def _protect_trailing_space(line: str) -> str:
    if line.endswith((" ", "\t")):
        return line[:-1] + f"={ord(line[-1]):02X}"
    return line


def _qp_slot(url: bytes) -> bytes:
    """A URL in QP, soft-wrapped; the slot's own line already ends in a soft break."""
    if _PRINTABLE.fullmatch(url):  # the usual link: only "=" needs escaping
        encoded = url.replace(b"=", b"=3D")
    else:
        encoded = "".join(_qp_tokens(url)).encode()
    lines: list[bytes] = []
    while len(encoded) > MAX_QP_LINE - 1:
        cut = MAX_QP_LINE - 1
        while b"=" in encoded[cut - 2 : cut]:  # never split an =XX escape
            cut -= 1
        lines.append(encoded[:cut] + b"=")
        encoded = encoded[cut:]
    lines.append(encoded)
    return b"\r\n".join(lines)


def sign_dkim(message: bytes, key: DkimKey) -> bytes:
    """Prepend a DKIM-Signature that covers both List-Unsubscribe headers (RFC 8058)."""
    return DkimSigner([key]).sign(message)
