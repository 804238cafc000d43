"""Reports as mail systems send them, written after RFC 3464 (DSN), RFC 5965 (ARF) and the
qmail and Postfix formats, around the headers of the message they return."""

from __future__ import annotations

RETURNED = """Return-Path: <{envelope}>
From: BZI-Newsletter <newsletter@bzi.example.org>
To: {recipient}
Subject: =?utf-8?q?Newsletter_=E2=80=9ETest=E2=80=9C?=
Date: Wed, 02 Dec 2026 17:00:00 +0000
Message-ID: <{message_id}>
List-Id: <newsletter.bzi.example.org>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="===============123=="
"""


def returned_headers(envelope: str, recipient: str, message_id: str) -> str:
    return RETURNED.format(envelope=envelope, recipient=recipient, message_id=message_id)


def dsn(
    *,
    to: str,
    recipient: str,
    headers: str,
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown",
    delivered_to: str | None = None,
) -> bytes:
    """A Postfix-style RFC 3464 delivery status notification."""
    delivered = f"Delivered-To: {delivered_to}\n" if delivered_to else ""
    diagnostic = diagnostic.format(recipient=recipient)
    said = diagnostic.partition("; ")[2]
    text = f"""Return-Path: <>
{delivered}Received: from relay.example.net (relay.example.net [192.0.2.25])
\tby mx.bzi.example.org (Postfix) with ESMTPS id 4F1A2B3C
\tfor <{to}>; Wed,  2 Dec 2026 18:00:02 +0100 (CET)
From: MAILER-DAEMON@relay.example.net (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Date: Wed,  2 Dec 2026 18:00:01 +0100 (CET)
Message-ID: <20261202170001.9A8B7C6D@relay.example.net>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="9A8B7C6D.1764694801/relay.example.net"

This is a MIME-encapsulated message.

--9A8B7C6D.1764694801/relay.example.net
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host relay.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{recipient}>: host mx.example.org[192.0.2.1] said: {said}

--9A8B7C6D.1764694801/relay.example.net
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.net
X-Postfix-Queue-ID: 9A8B7C6D
X-Postfix-Sender: rfc822; {to}
Arrival-Date: Wed,  2 Dec 2026 17:59:58 +0100 (CET)

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.org
Diagnostic-Code: {diagnostic}

--9A8B7C6D.1764694801/relay.example.net
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{headers}
--9A8B7C6D.1764694801/relay.example.net--
"""
    return text.replace("\n", "\r\n").encode()


def arf(*, to: str, recipient: str, headers: str, feedback_type: str = "abuse") -> bytes:
    """A feedback loop's complaint (RFC 5965), the original message inline."""
    text = f"""From: Feedback Loop <fbl@isp.example.net>
To: {to}
Subject: FW: Newsletter
Date: Wed, 02 Dec 2026 19:00:00 +0000
Message-ID: <fbl-20261202190000-42@isp.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
    boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.25 on Wed, 02 Dec 2026 18:00:00 +0000.
For more information about this format please see
https://www.rfc-editor.org/rfc/rfc5965.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <bounces@bzi.example.org>
Original-Rcpt-To: <{recipient}>
Arrival-Date: Wed, 02 Dec 2026 18:00:00 +0000
Source-IP: 192.0.2.25
Reported-Domain: bzi.example.org

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

{headers}
Hallo Welt

--part1_13d.2e68ed54_boundary--
"""
    return text.replace("\n", "\r\n").encode()


def qmail(*, to: str, recipient: str, headers: str) -> bytes:
    """qmail's plain-text bounce (no DSN): the non-standard way flufl.bounce knows."""
    text = f"""Return-Path: <>
From: MAILER-DAEMON@mail.example.com
To: {to}
Subject: failure notice
Date: 2 Dec 2026 17:00:03 -0000
Message-ID: <20261202170003.1234.qmail@mail.example.com>

Hi. This is the qmail-send program at mail.example.com.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{recipient}>:
192.0.2.5 does not like recipient.
Remote host said: 550 5.1.1 <{recipient}>... User unknown
Giving up on 192.0.2.5.

--- Below this line is a copy of the message.

{headers}
Hallo Welt
"""
    return text.replace("\n", "\r\n").encode()


AUTO_REPLY = (
    b"From: person0@example.org\r\n"
    b"To: newsletter@bzi.example.org\r\n"
    b"Subject: Abwesenheitsnotiz\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"\r\n"
    b"Ich bin bis zum 4. Januar nicht im B\xc3\xbcro.\r\n"
)
