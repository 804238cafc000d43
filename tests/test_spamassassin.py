"""Deliverability: SpamAssassin scores what the service delivers at or below zero.

Debian's ``spamassassin`` with its shipped rules, local tests only (``--local``: no DNS blocklists,
no network), a throwaway home so no user state or Bayes database counts. Scored are the messages
as ``serve`` hands them to the SMTP server (aiosmtpd captures the bytes): every example
announcement in ``config/examples``, one newsletter with every block type and a picture, and a
short one with a picture (little text beside an image is what image-spam rules look for), and
the confirmation mail of a web sign-up (the first mail a subscriber gets).
And one newsletter signed with both DKIM keys: there SpamAssassin also runs its DNS tests, every
question going to a DNS server in the test that holds the public keys (blocklists off), so it
verifies the signatures itself (DKIM_VALID, DKIM_VALID_AU).
With CI=true a missing ``spamassassin`` fails the test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import re
import shutil
import socketserver
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.config import Settings
from bzi_broadcast.content import Announcement, load_announcement
from bzi_broadcast.content.model import Image
from bzi_broadcast.delivery import control
from bzi_broadcast.service import Service
from bzi_broadcast.staff import media
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.testing.smtp import SmtpCapture

from . import test_dkim
from .conftest import ROOT, require_or_skip
from .pictures import png
from .test_delivery import serving, settings_for
from .test_email_layout import every_block
from .test_public_pages import sign_up as web_sign_up
from .test_store import add_subscribers

EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.yaml"))
PUBLIC_URL = "https://bzi.example.org"  # links as in production: https, a real host name
SCORE_TIMEOUT = 120.0
NEWCOMER = "neu@example.org"  # signs up on the web page: the confirmation mail is scored too
SHORT_TEXT = {"type": "text", "text": "Wir feiern am Samstag auf dem Rathausplatz."}
_REPORTED = re.compile(r"score=(?P<score>-?\d+(?:\.\d+)?)")
_NO_BLOCKLISTS = (
    "skip_rbl_checks 1",
    "skip_uribl_checks 1",
    "use_razor2 0",
    "use_pyzor 0",
    "use_dcc 0",
)
_RULE = re.compile(r"(?P<rule>[A-Z0-9_]+)=(?P<points>-?\d+(?:\.\d+)?)|none")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the message, not the database, is what is scored."""
    return f"sqlite:///{tmp_path / 'test.sqlite3'}"


@pytest.fixture
def spamassassin() -> str:
    path = shutil.which("spamassassin")
    require_or_skip(path is not None, "spamassassin (Debian package spamassassin)")
    assert path is not None
    return path


async def with_picture(
    engine: AsyncEngine, announcement: Announcement, directory: Path
) -> Announcement:
    """``announcement`` with a picture beside its file, adopted into the media store as ``queue``
    does: the newsletter then shows it from the public URL."""
    (directory / "sommerfest.png").write_bytes(png(width=800, height=450))
    picture = Image(src="sommerfest.png", alt="Gäste auf dem Rathausplatz")
    return await media.adopt_file_image(
        engine,
        announcement.model_copy(update={"image": picture}),
        file=directory / "ankuendigung.json",
        public_url=PUBLIC_URL + "/",
    )


def production_like(settings: Settings) -> Settings:
    email_settings = settings.email.model_copy(update={"public_url": PUBLIC_URL})
    return settings.model_copy(update={"email": email_settings})


async def deliver(
    engine: AsyncEngine,
    database_url: str,
    announcements: list[Announcement],
    configure: Callable[[Settings], Settings] = production_like,
    sign_up: str | None = None,
) -> dict[str, bytes]:
    """Each announcement sent by the service to one subscriber, and with ``sign_up`` the
    confirmation mail to that address signed up on the web page; the delivered bytes by subject."""
    await add_subscribers(engine, 1)
    store = Announcements(engine)
    async with SmtpCapture() as smtp:
        settings = configure(settings_for(database_url, smtp.port))
        async with serving(Service(settings)) as url:
            for announcement in announcements:
                await control.queue(
                    store, announcement, at=datetime.now(UTC), actor="test", allow_past=True
                )
            if sign_up:
                jar = aiohttp.CookieJar(unsafe=True)
                async with aiohttp.ClientSession(url, cookie_jar=jar) as http:
                    status, answer = await web_sign_up(http, email=sign_up)
                assert status == 200, answer
            expected = len(announcements) + (1 if sign_up else 0)
            received = await smtp.handler.wait_for(expected, timeout=60)
    return {str(r.message()["Subject"]): r.data for r in received}


@dataclass(frozen=True, kw_only=True)
class Score:
    reported: float  # X-Spam-Status, rounded to one decimal by SpamAssassin
    rules: dict[str, float]  # each rule hit with its points, unrounded

    @property
    def exact(self) -> float:
        return sum(self.rules.values())


def score(spamassassin: str, message: bytes, home: Path, dns_port: int | None = None) -> Score:
    """SpamAssassin's verdict on ``message`` from a throwaway home: local rules only, or with
    ``dns_port`` its DNS tests too, all asking the local server there (no blocklists)."""
    home.mkdir(parents=True, exist_ok=True)
    command = [spamassassin, "--test-mode", "--prefspath", str(home / "user_prefs")]
    if dns_port is None:
        command.append("--local")
    else:
        config = [f"dns_server 127.0.0.1:{dns_port}", "dns_available yes", *_NO_BLOCKLISTS]
        command += [part for line in config for part in ("--cf", line)]
    result = subprocess.run(
        [*command, "--cf", "add_header all Rules _TESTSSCORES(,)_"],
        input=message,
        capture_output=True,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        timeout=SCORE_TIMEOUT,
        check=False,
    )
    errors = result.stderr.decode(errors="replace")[-2000:]
    assert result.returncode == 0, errors
    headers = email.message_from_bytes(result.stdout)
    status, rules = headers["X-Spam-Status"], headers["X-Spam-Rules"]
    assert status and rules is not None, f"no X-Spam-Status/X-Spam-Rules header: {errors}"
    reported = _REPORTED.search(status)
    assert reported, status
    return Score(reported=float(reported["score"]), rules=_rules(rules))


def _rules(header: str) -> dict[str, float]:
    """``HTML_MESSAGE=0.001,NO_RELAYS=-0.001`` (folded over lines) as a dict; ``none``: empty."""
    rules = {}
    for item in re.sub(r"\s+", "", header).split(","):
        hit = _RULE.fullmatch(item)
        assert hit, f"unexpected rule in {header!r}: {item!r}"
        if hit["rule"]:
            rules[hit["rule"]] = float(hit["points"])
    return rules


async def test_every_example_and_every_block_score_at_most_zero(
    engine: AsyncEngine, database_url: str, spamassassin: str, tmp_path: Path
) -> None:
    assert EXAMPLES, "no example announcements found in config/examples"
    examples = [load_announcement(path) for path in EXAMPLES]
    short = every_block(title="Sommerfest", summary=None, blocks=[SHORT_TEXT])
    pictured = [await with_picture(engine, a, tmp_path) for a in (every_block(), short)]
    delivered = await deliver(engine, database_url, [*examples, *pictured], sign_up=NEWCOMER)
    assert len(delivered) == len(examples) + 3, sorted(delivered)  # and the confirmation mail
    scores = {
        subject: score(spamassassin, data, tmp_path / f"sa-home-{index}")
        for index, (subject, data) in enumerate(sorted(delivered.items()))
    }
    over = {s: v for s, v in scores.items() if v.reported > 0 or v.exact > 1e-9}
    assert not over, f"SpamAssassin scores above 0: {over}"


# --- signed: SpamAssassin checks the DKIM signatures itself, against a local DNS server ---------


class _TxtRecords(socketserver.BaseRequestHandler):
    """Answers TXT questions from ``server.records``; NXDOMAIN for every other name."""

    server: _DnsServer

    def handle(self) -> None:
        data, sock = self.request
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        text = self.server.records.get(question.name.to_text().lower())
        if text and question.rdtype == dns.rdatatype.TXT:
            strings = " ".join(f'"{text[i : i + 250]}"' for i in range(0, len(text), 250))
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "TXT", strings))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        sock.sendto(response.to_wire(), self.client_address)


class _DnsServer(socketserver.ThreadingUDPServer):
    def __init__(self, records: dict[str, str]) -> None:
        super().__init__(("127.0.0.1", 0), _TxtRecords)
        self.records = records


@contextlib.contextmanager
def dns_server(records: dict[str, str]) -> Iterator[int]:
    """A DNS server on 127.0.0.1 for ``records`` (name with trailing dot → TXT); yields its port."""
    server = _DnsServer(records)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def signing(settings: Settings) -> Settings:
    """``production_like`` with both DKIM keys of tests/test_dkim.py (RSA and Ed25519)."""
    keys = {
        "dkim_domain": test_dkim.DOMAIN,
        "dkim_selector": test_dkim.RSA_SELECTOR,
        "dkim_private_key": SecretStr(test_dkim.RSA_PEM.decode()),
        "dkim_ed25519_selector": test_dkim.ED_SELECTOR,
        "dkim_ed25519_private_key": SecretStr(test_dkim.ED_PEM.decode()),
    }
    settings = production_like(settings)
    return settings.model_copy(update={"email": settings.email.model_copy(update=keys)})


async def test_a_signed_newsletter_verifies_in_spamassassin_and_scores_at_most_zero(
    engine: AsyncEngine, database_url: str, spamassassin: str, tmp_path: Path
) -> None:
    announcement = every_block()
    delivered = await deliver(engine, database_url, [announcement], configure=signing)
    message = delivered[announcement.title]
    assert message.count(b"DKIM-Signature:") == 2
    with dns_server(test_dkim.RECORDS) as port:
        verdict = await asyncio.to_thread(score, spamassassin, message, tmp_path / "sa", port)
    assert {"DKIM_SIGNED", "DKIM_VALID", "DKIM_VALID_AU"} <= set(verdict.rules), verdict
    assert "DKIM_INVALID" not in verdict.rules, verdict
    assert verdict.reported <= 0 and verdict.exact <= 1e-9, verdict
