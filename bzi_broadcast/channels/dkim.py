"""DKIM signatures (RFC 6376, relaxed/relaxed): RSA-SHA256 and Ed25519-SHA256 (RFC 8463).

The newsletter is one MIME template per announcement with each recipient's links in slots
(email_mime.py). ``DkimSigner.prepare`` canonicalises the template's fixed headers and fixed body
segments once and keeps the SHA-256 state after the body's common prefix; per recipient only the
slots and what follows them are hashed, then the header hash is signed (one RSA and/or Ed25519
operation per key). ``DkimSigner.sign`` does the whole work for any other message (service mails).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from bzi_broadcast.i18n import gettext as _

if TYPE_CHECKING:
    from pydantic import SecretStr

    from bzi_broadcast.config import EmailSettings

MIN_RSA_BITS = 2048
DKIM_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"mime-version",
    b"content-type",
)
KeyKind = Literal["rsa", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_WSP = re.compile(rb"[ \t]+")
_FIELDS = re.compile(rb"\r\n(?![ \t])")
_EMPTY_TAIL = re.compile(rb"(?:\r\n)+\Z")
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_FOLD = 72  # characters of the signature per header line


@dataclass(frozen=True, kw_only=True)
class DkimKey:
    domain: str
    selector: str
    private_key: bytes = field(repr=False)  # PEM; for Ed25519 also a bare base64 seed
    kind: KeyKind = "rsa"


def configured_keys(email: EmailSettings) -> list[DkimKey]:
    """The keys the settings name (validated by ``load_settings``): RSA first, then Ed25519."""
    domain, keys = email.dkim_domain, []
    pairs: tuple[tuple[str | None, SecretStr | None, KeyKind], ...] = (
        (email.dkim_selector, email.dkim_private_key, "rsa"),
        (email.dkim_ed25519_selector, email.dkim_ed25519_private_key, "ed25519"),
    )
    for selector, secret, kind in pairs:
        if domain and selector and secret:
            pem = secret.get_secret_value().encode()
            keys.append(DkimKey(domain=domain, selector=selector, private_key=pem, kind=kind))
    return keys


def configured_signer(email: EmailSettings) -> DkimSigner | None:
    keys = configured_keys(email)
    return DkimSigner(keys) if keys else None


def load_private_key(text: bytes, kind: KeyKind) -> PrivateKey:
    """The key in ``text``, checked to be of ``kind``; ``ValueError`` with a message for the
    operator (never the key itself)."""
    key: PrivateKeyTypes | None = _ed25519_seed(text) if kind == "ed25519" else None
    if key is None:
        try:
            key = serialization.load_pem_private_key(text.strip(), password=None)
        except TypeError:  # it wants a password
            raise ValueError(_("verschlüsselter Schlüssel: bitte ohne Passwort ablegen")) from None
        except Exception:  # ValueError, UnsupportedAlgorithm …: all say "not a key we can use"
            raise ValueError(
                _("kein lesbarer privater Schlüssel im PEM-Format („-----BEGIN PRIVATE KEY-----“)")
            ) from None
    if kind == "ed25519" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if kind == "rsa" and isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                _("RSA-Schlüssel mit {bits} Bit ist zu kurz: mindestens {minimum} Bit").format(
                    bits=key.key_size, minimum=MIN_RSA_BITS
                )
            )
        return key
    raise ValueError(_("kein {kind}-Schlüssel").format(kind=kind.upper()))


def _ed25519_seed(text: bytes) -> ed25519.Ed25519PrivateKey | None:
    """dknewkey's format: the 32-byte seed in base64 on one line."""
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed) if len(seed) == 32 else None


def kind_of(key: PrivateKey) -> KeyKind:
    return "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ed25519"


def public_value(key: PrivateKey) -> str:
    """The ``p=`` of the DNS record: the SubjectPublicKeyInfo (RSA) or the raw 32 bytes
    (Ed25519, RFC 8463), in base64."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        raw = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def dns_record(domain: str, selector: str, key: PrivateKey) -> str:
    """The TXT record to publish, in zone-file form, split into strings of at most 255 bytes."""
    value = f"v=DKIM1; k={kind_of(key)}; p={public_value(key)}"
    strings = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    return f"{selector}._domainkey.{domain}. IN TXT {strings}"


@dataclass(frozen=True)
class _Key:
    domain: bytes
    selector: bytes
    private: PrivateKey = field(repr=False)

    @property
    def algorithm(self) -> bytes:
        return b"rsa-sha256" if isinstance(self.private, rsa.RSAPrivateKey) else b"ed25519-sha256"

    def signature(self, data: bytes) -> bytes:
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return self.private.sign(hashlib.sha256(data).digest())  # RFC 8463: Ed25519 over SHA-256


class DkimSigner:
    """One DKIM-Signature per key (RSA and Ed25519 side by side), relaxed/relaxed, over the
    headers of ``DKIM_HEADERS`` that the message has."""

    def __init__(self, keys: Sequence[DkimKey]) -> None:
        if not keys:
            raise ValueError("no DKIM key")
        self._keys = tuple(
            _Key(
                k.domain.encode(),
                k.selector.encode(),
                load_private_key(k.private_key, k.kind),
            )
            for k in keys
        )

    def __repr__(self) -> str:
        names = ", ".join(f"{k.selector.decode()}/{k.algorithm.decode()}" for k in self._keys)
        return f"DkimSigner(domain={self._keys[0].domain.decode()!r}, keys=[{names}])"

    def sign(self, message: bytes) -> bytes:
        """``message`` with CRLF line endings and its DKIM-Signature headers on top."""
        message = _LINE_ENDS.sub(b"\r\n", message)
        head, body = _split(message)
        return (
            self.signature_headers(_canonical_fields(head), hashlib.sha256(relaxed_body(body)))
            + message
        )

    def prepare(self, segments: Sequence[bytes]) -> PreparedSigning:
        """For a template whose even ``segments`` are fixed and odd ones per-recipient slots."""
        return PreparedSigning(self, tuple(segments))

    def signature_headers(self, fields: dict[bytes, bytes], body_hash: hashlib._Hash) -> bytes:
        names = [name for name in DKIM_HEADERS if name in fields]
        signed = b"".join(fields[name] for name in names)
        bh = base64.b64encode(body_hash.digest())
        now = str(int(time.time())).encode()
        out = []
        for key in self._keys:
            prefix = (
                b"DKIM-Signature: v=1; a=" + key.algorithm + b"; c=relaxed/relaxed; d="
                + key.domain + b"; s=" + key.selector + b"; t=" + now + b";\r\n\th="
                + b":".join(names) + b";\r\n\tbh=" + bh + b";\r\n\tb="
            )  # fmt: skip
            canonical = _relaxed_field(prefix)
            value = base64.b64encode(key.signature(signed + canonical[:-2]))
            folded = b"\r\n\t".join(value[i : i + _FOLD] for i in range(0, len(value), _FOLD))
            out.append(prefix + folded + b"\r\n")
        return b"".join(out)


class PreparedSigning:
    """A template's canonical fixed parts, computed once; ``headers`` per recipient."""

    def __init__(self, signer: DkimSigner, segments: tuple[bytes, ...]) -> None:
        self._signer = signer
        self._segments = segments
        head, body = _split(segments[0])
        self._fixed = _canonical_fields(head)
        self._body_parts: tuple[bytes, ...] | None = None
        self._prefix = hashlib.sha256()
        fixed = (body, *segments[2::2])
        if _line_aligned(fixed):
            canonical = [_relaxed_inner(s) for s in fixed[:-1]] + [relaxed_body(fixed[-1])]
            self._prefix.update(canonical[0])
            self._body_parts = tuple(canonical[1:])

    def headers(self, head: bytes, fills: Sequence[bytes]) -> bytes:
        """The DKIM-Signature headers for the message ``head`` + segments with ``fills`` in the
        slots (``head``: the recipient's own header lines, CRLF-terminated)."""
        fields = _canonical_fields(head.removesuffix(b"\r\n"))
        fields.update(self._fixed)  # the lower instance is the one DKIM signs
        if self._body_parts is not None and all(_plain(f) for f in fills):
            body_hash = self._prefix.copy()
            for fill, after in zip(fills, self._body_parts, strict=True):
                body_hash.update(fill)
                body_hash.update(after)
        else:
            message = head + _join(self._segments, fills)
            body_hash = hashlib.sha256(relaxed_body(_split(_LINE_ENDS.sub(b"\r\n", message))[1]))
        return self._signer.signature_headers(fields, body_hash)


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: runs of WSP to one space, none at line ends, no empty lines at the end."""
    if not body:
        return b""
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    body = _EMPTY_TAIL.sub(b"\r\n", _relaxed_inner(body))
    return b"" if body == b"\r\n" else body


def _relaxed_inner(data: bytes) -> bytes:
    """Relaxed body canonicalisation of a piece between two slots: its edges border a slot's
    text (never whitespace), so a space at either edge stays."""
    return _WSP.sub(b" ", data).replace(b" \r\n", b"\r\n")


def _relaxed_field(field: bytes) -> bytes:
    """RFC 6376 3.4.2: lower-case name, unfolded, WSP runs to one space, trimmed; CRLF."""
    name, _sep, value = field.partition(b":")
    value = _WSP.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def _canonical_fields(head: bytes) -> dict[bytes, bytes]:
    """Each signable header's canonical form, by lower-case name (the last instance wins)."""
    fields: dict[bytes, bytes] = {}
    for raw in _FIELDS.split(head):
        name = raw.partition(b":")[0].strip(b" \t").lower()
        if name in DKIM_HEADERS:
            fields[name] = _relaxed_field(raw)
    return fields


def _split(message: bytes) -> tuple[bytes, bytes]:
    """Header block (without its last CRLF) and body."""
    if message.startswith(b"\r\n"):
        return b"", message[2:]
    head, _sep, body = message.partition(b"\r\n\r\n")
    return head, body


def _line_aligned(fixed: Iterable[bytes]) -> bool:
    """Whether each piece can be canonicalised on its own: CRLF everywhere, and the last one
    (the end of the body) has text of its own."""
    pieces = list(fixed)
    clean = all(p.count(b"\n") == p.count(b"\r\n") == p.count(b"\r") for p in pieces)
    return clean and bool(pieces[-1].strip(b" \t\r\n"))


def _plain(fill: bytes) -> bool:
    """A slot's text that canonicalisation leaves alone at its edges."""
    edges = fill[:1] + fill[-1:]
    return bool(fill) and not _WSP.search(fill) and b"\r" not in edges and b"\n" not in edges


def _join(segments: tuple[bytes, ...], fills: Sequence[bytes]) -> bytes:
    parts = list(segments)
    parts[1::2] = fills
    return b"".join(parts)
