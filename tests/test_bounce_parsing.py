"""Issue 15, item 3: the VERP token, and what the parser reads from DSNs, ARF complaints, the
non-standard formats and hostile messages."""

from __future__ import annotations

import pytest

from bzi_broadcast.bounces.parse import MAX_BYTES, Kind, ReportError, parse
from bzi_broadcast.bounces.verp import LOCAL_PREFIX, DeliveryRef, Verp

from .bounce_samples import AUTO_REPLY, arf, dsn, qmail, returned_headers

KEY = b"k" * 32
VERP = Verp(KEY)
DOMAIN = "bounces.bzi.example.org"


def envelope(delivery_id: int, subscriber_id: int | None) -> tuple[str, str]:
    """The VERP address and the Message-ID a delivery is sent with."""
    token = VERP.token(delivery_id, subscriber_id)
    return VERP.address(token, DOMAIN), f"{token}@bzi.example.org"


# --- the token --------------------------------------------------------------------------------


def test_a_token_names_its_delivery_and_subscriber() -> None:
    address, _mid = envelope(4711, 42)
    assert address.startswith(LOCAL_PREFIX) and address.endswith("@" + DOMAIN)
    assert VERP.find([address]) == DeliveryRef(delivery_id=4711, subscriber_id=42)
    assert VERP.find([VERP.token(5, None)]) == DeliveryRef(delivery_id=5, subscriber_id=None)


def test_the_local_part_stays_within_64_octets_for_the_largest_ids() -> None:
    address = VERP.address(VERP.token(2**63 - 1, 2**63 - 1), DOMAIN)
    local = address.partition("@")[0]
    assert len(local.encode()) <= 64
    assert local == local.lower()  # nothing an MTA could lower-case away


def test_a_token_survives_an_mta_that_changes_the_case_of_the_local_part() -> None:
    address, _mid = envelope(123456789, 987654)
    assert VERP.find([address.upper()]) == DeliveryRef(delivery_id=123456789, subscriber_id=987654)


def test_a_changed_or_foreign_token_names_nothing() -> None:
    token = VERP.token(10, 3)
    other_delivery = token.replace("a-3-", "b-3-", 1)
    assert other_delivery != token and VERP.find([other_delivery]) is None
    assert VERP.find([Verp(b"x" * 32).token(10, 3)]) is None
    assert VERP.find(["bounces+10-3-aaaaaaaaaaaaaaaa@" + DOMAIN]) is None
    assert VERP.find(["nothing here", ""]) is None


def test_the_repr_hides_the_key() -> None:
    assert "k" * 8 not in repr(VERP)


# --- reports ----------------------------------------------------------------------------------


def test_a_dsn_with_a_permanent_failure_is_a_hard_bounce_of_its_delivery() -> None:
    address, mid = envelope(17, 5)
    raw = dsn(
        to=address,
        delivered_to=address,
        recipient="person0@example.org",
        headers=returned_headers(address, "person0@example.org", mid),
    )
    report = parse(raw)
    assert report.kind is Kind.HARD
    assert report.status == "5.1.1"
    assert report.recipient == "person0@example.org"
    assert "User unknown" in report.detail and "\n" not in report.detail
    assert VERP.find(report.references) == DeliveryRef(delivery_id=17, subscriber_id=5)


def test_without_verp_the_quoted_message_id_names_the_delivery() -> None:
    _address, mid = envelope(18, 6)
    raw = dsn(
        to="newsletter@bzi.example.org",
        recipient="person1@example.org",
        headers=returned_headers("newsletter@bzi.example.org", "person1@example.org", mid),
    )
    assert VERP.find(parse(raw).references) == DeliveryRef(delivery_id=18, subscriber_id=6)


@pytest.mark.parametrize(
    ("action", "status"),
    [("delayed", "4.2.2"), ("failed", "4.4.7"), ("delayed", "5.0.0")],
)
def test_a_temporary_status_or_a_delay_is_a_soft_bounce(action: str, status: str) -> None:
    address, mid = envelope(19, 7)
    raw = dsn(
        to=address,
        recipient="person1@example.org",
        headers=returned_headers(address, "person1@example.org", mid),
        action=action,
        status=status,
        diagnostic="smtp; 452 4.2.2 Mailbox full",
    )
    report = parse(raw)
    assert report.kind is Kind.SOFT
    assert report.status == status


def test_a_dsn_that_reports_a_delivery_is_no_bounce() -> None:
    address, mid = envelope(20, 8)
    raw = dsn(
        to=address,
        recipient="person1@example.org",
        headers=returned_headers(address, "person1@example.org", mid),
        action="delivered",
        status="2.0.0",
    )
    with pytest.raises(ReportError):
        parse(raw)


def test_an_arf_report_is_a_complaint_matched_by_the_message_id_it_quotes() -> None:
    _address, mid = envelope(21, 9)
    raw = arf(
        to="fbl@bzi.example.org",
        recipient="person2@example.org",
        headers=returned_headers("x@bzi.example.org", "person2@example.org", mid),
    )
    report = parse(raw)
    assert report.kind is Kind.COMPLAINT
    assert report.detail == "abuse"
    assert report.recipient == "person2@example.org"
    assert VERP.find(report.references) == DeliveryRef(delivery_id=21, subscriber_id=9)


def test_a_not_spam_feedback_report_is_no_complaint() -> None:
    _address, mid = envelope(22, 9)
    raw = arf(
        to="fbl@bzi.example.org",
        recipient="person2@example.org",
        headers=returned_headers("x@bzi.example.org", "person2@example.org", mid),
        feedback_type="not-spam",
    )
    with pytest.raises(ReportError):
        parse(raw)


def test_a_qmail_bounce_is_read_through_flufl_bounce() -> None:
    address, mid = envelope(23, 10)
    raw = qmail(
        to=address,
        recipient="person3@example.org",
        headers=returned_headers(address, "person3@example.org", mid),
    )
    report = parse(raw)
    assert report.kind is Kind.HARD
    assert report.recipient == "person3@example.org"
    assert VERP.find(report.references) == DeliveryRef(delivery_id=23, subscriber_id=10)


# --- what is not a report, and hostile input --------------------------------------------------


def test_an_auto_reply_is_no_report() -> None:
    with pytest.raises(ReportError):
        parse(AUTO_REPLY)


def test_a_message_over_the_size_cap_is_refused_unread() -> None:
    with pytest.raises(ReportError, match="larger"):
        parse(b"Subject: x\r\n\r\n" + b"a" * MAX_BYTES)


@pytest.mark.parametrize("depth", [50, 1500])  # past our cap; past Python's recursion limit
def test_deep_nesting_is_refused_not_recursed_into(depth: int) -> None:
    head = "".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n' for i in range(depth)
    )
    raw = ("MIME-Version: 1.0\r\n" + head + "Content-Type: text/plain\r\n\r\nx\r\n").encode()
    with pytest.raises(ReportError):
        parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage \r\n\r\n\x00",
        b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\nno boundary",
        b"Content-Type: multipart/report; report-type=feedback-report; boundary=x\r\n\r\n--x--",
        b"Subject: =?utf-8?b?////?=\r\nFrom: <<<@@@>>>\r\n\r\n" + "ä".encode() * 1000,
    ],
)
def test_broken_messages_are_report_errors_never_crashes(raw: bytes) -> None:
    with pytest.raises(ReportError):
        parse(raw)
