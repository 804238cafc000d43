"""What a message in the bounce mailbox reports: a hard or soft bounce, or a complaint.

In this order: a delivery status notification (RFC 3464, ``multipart/report;
report-type=delivery-status``), a complaint (ARF, RFC 5965, ``report-type=feedback-report``), then
the common non-standard bounce formats through flufl.bounce. Status class 5 is a hard bounce;
class 4, or ``Action: delayed``, a soft one. Anything else (an auto-reply, a person writing back,
a hostile or broken message) is a ``ReportError`` with the reason: the mailbox reader moves it
aside for a person to look at, never crashes on it.

The message is read with caps on its size, the depth of its nesting and its number of parts;
``references`` lists, outermost first, the texts where the delivery's VERP token may stand (the
envelope recipient headers, the returned message's headers, quoted header text).
"""

from __future__ import annotations

import email
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from enum import StrEnum

from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import N_

MAX_BYTES = 10 * 1024 * 1024  # a report quotes one newsletter; anything bigger is not one
MAX_DEPTH = 8
MAX_PARTS = 200
MAX_SCANNED = 1024 * 1024  # characters searched for a token
DETAIL_CHARS = 500
_ENVELOPE_HEADERS = ("delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "to")
_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
NOT_COMPLAINTS = frozenset({"not-spam"})


class Kind(StrEnum):
    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"


class ReportError(BroadcastError):
    """Kein Unzustellbarkeitsbericht und keine Beschwerde."""


N_("Kein Unzustellbarkeitsbericht und keine Beschwerde.")


@dataclass(frozen=True, kw_only=True)
class Report:
    kind: Kind
    recipient: str | None  # the address that failed or complained, as the report names it
    status: str | None  # the enhanced status code (RFC 3463), "5.1.1"
    detail: str  # the diagnostic or the feedback type, one line, capped
    references: tuple[str, ...]  # where a VERP token may stand, outermost first


def parse(raw: bytes) -> Report:
    """``ReportError`` for anything that is not a bounce or a complaint, or is too big."""
    if len(raw) > MAX_BYTES:
        raise ReportError(f"message larger than {MAX_BYTES} bytes")
    try:
        message = email.message_from_bytes(raw)
        parts = list(_walk(message))
        found = _standard(parts) or _non_standard(message)
    except ReportError:
        raise
    except Exception as exc:  # the email package on hostile input: any error is "unreadable"
        raise ReportError(f"unreadable message: {type(exc).__name__}") from None
    kind, recipient, status, detail = found
    return Report(
        kind=kind,
        recipient=recipient,
        status=status,
        detail=_one_line(detail),
        references=tuple(_references(message, parts)),
    )


Found = tuple[Kind, str | None, str | None, str]


def _walk(message: Message) -> Iterator[Message]:
    """Every part, depth first, without recursion; ``ReportError`` past the caps."""
    stack: list[tuple[Message, int]] = [(message, 0)]
    count = 0
    while stack:
        part, depth = stack.pop()
        count += 1
        if count > MAX_PARTS or depth > MAX_DEPTH:
            raise ReportError("message nested too deep or in too many parts")
        yield part
        payload = part.get_payload()
        if isinstance(payload, list):
            children = [p for p in payload if isinstance(p, Message)]
            stack.extend((child, depth + 1) for child in reversed(children))


def _standard(parts: list[Message]) -> Found | None:
    for part in parts:
        if part.get_content_type() != "multipart/report":
            continue
        report_type = str(part.get_param("report-type") or "").lower()
        if report_type == "delivery-status":
            return _delivery_status(part)
        if report_type == "feedback-report":
            return _feedback(part)
    return None


def _children(part: Message) -> list[Message]:
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


def _delivery_status(report: Message) -> Found | None:
    """The first recipient that failed, else the first delayed one (RFC 3464 section 2.3)."""
    status_part = next(
        (p for p in _children(report) if p.get_content_type() == "message/delivery-status"),
        None,
    )
    if status_part is None:
        return None
    blocks = _children(status_part) or _blocks_of_text(status_part)
    recipients = [b for b in blocks if b.get("Action")]
    for wanted in ("failed", "delayed"):
        for block in recipients:
            if str(block.get("Action", "")).strip().lower() == wanted:
                return _bounce(block, delayed=wanted == "delayed")
    return None


def _blocks_of_text(part: Message) -> list[Message]:
    """Field blocks of a delivery-status part the parser left as text (blank-line separated)."""
    payload = part.get_payload(decode=True)
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return [HeaderParser().parsestr(b + "\n") for b in re.split(r"\r?\n\s*\r?\n", text) if b]


def _bounce(block: Message, *, delayed: bool) -> Found:
    status_field = str(block.get("Status", ""))
    code = _STATUS.match(status_field)
    status = ".".join(code.groups()) if code else None
    soft = delayed or (code is not None and code.group(1) == "4")
    diagnostic = str(block.get("Diagnostic-Code", "")).partition(";")[2].strip()
    return (
        Kind.SOFT if soft else Kind.HARD,
        _address(block.get("Final-Recipient") or block.get("Original-Recipient")),
        status,
        diagnostic or status_field or ("delayed" if delayed else "failed"),
    )


def _feedback(report: Message) -> Found | None:
    fields = next(
        (
            _fields(p)
            for p in _children(report)
            if p.get_content_type() == "message/feedback-report"
        ),
        None,
    )
    if fields is None:
        return None
    feedback_type = str(fields.get("Feedback-Type", "")).strip().lower() or "abuse"
    if feedback_type in NOT_COMPLAINTS:
        raise ReportError(f"feedback report of type {feedback_type}")
    recipient = fields.get("Original-Rcpt-To") or fields.get("Removal-Recipient")
    return Kind.COMPLAINT, _address(recipient, plain=True), None, feedback_type


def _fields(part: Message) -> Message:
    """The report's fields: the parser reads ``message/*`` as a nested header block."""
    children = _children(part)
    if children:
        return children[0]
    payload = part.get_payload(decode=True)
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return HeaderParser().parsestr(text)


def _non_standard(message: Message) -> Found:
    from flufl.bounce import all_failures  # its many detectors load only when one is needed

    temporary, permanent = all_failures(message)  # flufl.bounce: (temporary, permanent)
    for kind, addresses in ((Kind.HARD, permanent), (Kind.SOFT, temporary)):
        if addresses:
            first = sorted(_text(a) for a in addresses)[0]
            return kind, first.lower(), None, f"{kind} bounce (non-standard report)"
    raise ReportError("neither a delivery status notification nor a feedback report")


def _references(message: Message, parts: list[Message]) -> Iterator[str]:
    """The envelope recipient headers first, then every part's headers, then quoted headers."""
    for name in _ENVELOPE_HEADERS:
        yield from (str(v) for v in message.get_all(name, []))
    budget = MAX_SCANNED
    for part in parts:
        for name, value in part.items():
            text = f"{name}: {value}"
            budget -= len(text)
            yield text
    for part in parts:
        if budget <= 0:
            return
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                text = payload[:budget].decode("utf-8", "replace")
                budget -= len(text)
                yield text


def _address(field: object, *, plain: bool = False) -> str | None:
    """``rfc822; someone@example.org`` (or, with ``plain``, the bare address) → the address."""
    if field is None:
        return None
    text = str(field)
    if not plain:
        text = text.partition(";")[2] if ";" in text else text
    address = text.strip().strip("<>").strip().lower()
    return address[:320] or None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _one_line(text: str) -> str:
    return _CONTROL.sub(" ", text).strip()[:DETAIL_CHARS]
