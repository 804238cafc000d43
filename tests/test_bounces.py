"""Issue 15, item 3: newsletters go out with a VERP envelope sender; the reports that come back to
the bounce mailbox (a real Dovecot, filled over IMAP) bounce, suppress and unsubscribe within one
poll interval of ``serve``, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.bounces.mailbox import BounceReader, MailboxError, bounce_reader
from bzi_broadcast.bounces.verp import Verp
from bzi_broadcast.config import BouncesSettings, Settings, load_settings
from bzi_broadcast.errors import ConfigError
from bzi_broadcast.service import Service
from bzi_broadcast.staff.accounts import Role, add_user
from bzi_broadcast.store.overview import REPORT_KINDS, on_connection, overview
from bzi_broadcast.store.schema import bounces, consent_events, subscribers, suppressions
from bzi_broadcast.testing.smtp import Received, SmtpCapture

from .bounce_samples import AUTO_REPLY, arf, dsn, returned_headers
from .dovecot import Dovecot, running_dovecot
from .test_admin import PASSWORD, client, login
from .test_delivery import queue_now, serving, settings_for, wait_until
from .test_store import add_subscribers

DOMAIN = "bounces.bzi.example.org"
POLL_SECONDS = 2.0
ONE_POLL = POLL_SECONDS + 8.0  # one poll interval, and the reading and writing on a busy machine


@pytest.fixture
async def dovecot() -> AsyncIterator[Dovecot]:
    async with running_dovecot() as server:
        yield server


def bounce_settings(database_url: str, smtp_port: int, imap: Dovecot) -> Settings:
    base = settings_for(database_url, smtp_port)
    return base.model_copy(
        update={
            "email": base.email.model_copy(update={"bounce_domain": DOMAIN}),
            "bounces": BouncesSettings(
                imap_host="127.0.0.1",
                imap_port=imap.port,
                imap_security="none",
                imap_username=imap.user,
                imap_password=SecretStr(imap.password),
                poll_seconds=POLL_SECONDS,
            ),
        }
    )


def headers_of(received: Received) -> str:
    return received.data.split(b"\r\n\r\n", 1)[0].decode()


async def person(engine: AsyncEngine, email: str) -> tuple[str, bool]:
    """The subscriber's status and whether they are suppressed."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(subscribers.c.status, subscribers.c.suppressed_at).where(
                    subscribers.c.email == email
                )
            )
        ).one()
    return row.status, row.suppressed_at is not None


async def recorded(engine: AsyncEngine, kind: str) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count()).select_from(bounces).where(bounces.c.kind == kind)
            )
            or 0
        )


async def test_reports_in_the_mailbox_bounce_suppress_and_unsubscribe(
    engine: AsyncEngine, database_url: str, dovecot: Dovecot
) -> None:
    await add_subscribers(engine, 3)  # person0, person1, person2 @example.org
    async with SmtpCapture() as smtp:
        settings = bounce_settings(database_url, smtp.port, dovecot)
        assert settings.email.soft_bounce_limit == 3
        await add_user(
            engine, email="eva@bzi.example.org", name="Eva", role=Role.EDITOR, password=PASSWORD
        )
        async with serving(Service(settings)) as base:
            for _ in range(3):
                await queue_now(engine)
            sent = await smtp.handler.wait_for(9)
            mails: dict[str, list[Received]] = {}
            for received in sorted(sent, key=lambda r: r.at):
                mails.setdefault(received.recipient, []).append(received)
            for received in sent:  # VERP: each message its own signed envelope sender
                assert received.sender.startswith("bounces+") and received.sender.endswith(DOMAIN)
            assert len({r.sender for r in sent}) == 9

            hard = mails["person0@example.org"][0]
            hard_dsn = dsn(
                to=hard.sender,
                delivered_to=hard.sender,
                recipient=hard.recipient,
                headers=headers_of(hard),
            )
            soft = mails["person1@example.org"]
            soft_dsns = [
                dsn(
                    to=soft[0].sender,
                    delivered_to=soft[0].sender,
                    recipient=soft[0].recipient,
                    headers=headers_of(soft[0]),
                    action="delayed",
                    status="4.2.2",
                    diagnostic="smtp; 452 4.2.2 Mailbox full",
                ),
                # a relay that returns to the from address: the quoted Message-ID names it
                dsn(
                    to="newsletter@bzi.example.org",
                    recipient=soft[1].recipient,
                    headers=headers_of(soft[1]),
                    status="4.4.7",
                    diagnostic="smtp; 421 4.4.7 Message expired",
                ),
            ]
            complained = mails["person2@example.org"][0]
            complaint = arf(
                to="fbl@bzi.example.org",
                recipient=complained.recipient,
                headers=headers_of(complained),
            )
            forged_token = Verp(b"not-the-service-key-0123456789abcdef").token(1, 1)
            forged = dsn(  # signed with another key: names no delivery of ours
                to=f"bounces+{forged_token}@{DOMAIN}",
                delivered_to=f"bounces+{forged_token}@{DOMAIN}",
                recipient="person1@example.org",
                headers=returned_headers(
                    f"bounces+{forged_token}@{DOMAIN}",
                    "person1@example.org",
                    f"{forged_token}@bzi.example.org",
                ),
            )
            await _append(dovecot, hard_dsn, hard_dsn, *soft_dsns, complaint, AUTO_REPLY, forged)

            async def first_reports_done() -> bool:
                return (
                    await person(engine, "person0@example.org") == ("bounced", True)
                    and (await person(engine, "person2@example.org"))[0] == "unsubscribed"
                    and await recorded(engine, "soft") == 2
                )

            await wait_until(first_reports_done, timeout=ONE_POLL)
            assert await person(engine, "person1@example.org") == ("active", False)  # 2 of 3

            third = dsn(
                to=soft[2].sender,
                delivered_to=soft[2].sender,
                recipient=soft[2].recipient,
                headers=headers_of(soft[2]),
                action="delayed",
                status="4.2.2",
                diagnostic="smtp; 452 4.2.2 Mailbox full",
            )
            await _append(dovecot, third)

            async def suppressed_after_three() -> bool:
                return await person(engine, "person1@example.org") == ("bounced", True)

            await wait_until(suppressed_after_three, timeout=ONE_POLL)

            async def all_moved() -> bool:
                return await _counts(dovecot) == (0, 6, 2)

            await wait_until(all_moved, timeout=ONE_POLL)
            await assert_dashboard_counts(engine, base)

    assert await recorded(engine, "hard") == 1  # the DSN read twice counts once
    assert await recorded(engine, "complaint") == 1
    async with engine.connect() as conn:
        reasons = sorted((await conn.execute(select(suppressions.c.reason))).scalars())
        complaint_events = (
            await conn.execute(
                select(consent_events.c.detail)
                .join(subscribers, subscribers.c.id == consent_events.c.subscriber_id)
                .where(
                    subscribers.c.email == "person2@example.org",
                    consent_events.c.event == "unsubscribed",
                )
            )
        ).scalars()
        details = [json.loads(d) for d in complaint_events]
    assert reasons == ["hard_bounce", "soft_bounces"]
    async with engine.connect() as conn:  # what `bzi-broadcast status` counts
        rows = await conn.run_sync(lambda sync: overview(on_connection(sync)))
    totals = {kind: sum(row["reports"][kind] for row in rows) for kind in REPORT_KINDS}
    assert totals == {"hard": 1, "soft": 3, "complaint": 1}
    assert all(sum(row["reports"].values()) >= 1 for row in rows)  # each announcement's own
    assert len(details) == 1
    assert details[0]["method"] == "complaint"
    assert details[0]["feedback_type"] == "abuse"


async def assert_dashboard_counts(engine: AsyncEngine, base: str) -> None:
    """The delivery dashboard of the announcement with the hard bounce and the complaint."""
    async with engine.connect() as conn:
        hard_in = await conn.scalar(
            select(bounces.c.announcement_id).where(bounces.c.kind == "hard")
        )
    async with client(base) as http:
        status, _page = await login(http, "eva@bzi.example.org", PASSWORD)
        assert status == 303
        async with http.get(f"/admin/ankuendigungen/{hard_in}/versand") as answer:
            assert answer.status == 200
            page = await answer.text()
    assert 'data-field="reported-hard">1<' in page
    assert "unzustellbar (dauerhaft)" in page


async def _append(dovecot: Dovecot, *messages: bytes) -> None:
    await asyncio.to_thread(dovecot.append, *messages)


async def _counts(dovecot: Dovecot) -> tuple[int, int, int]:
    inbox, processed, failed = [
        await asyncio.to_thread(dovecot.count, folder)
        for folder in ("INBOX", "Verarbeitet", "Unerkannt")
    ]
    return inbox, processed, failed


# --- settings ---------------------------------------------------------------------------------


def test_an_unencrypted_imap_connection_is_refused_for_a_remote_server(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[bounces]\nimap_host = "imap.example.org"\nimap_security = "none"\n')
    with pytest.raises(ConfigError, match=r"bounces\.imap_security"):
        load_settings(config, environ={})


def test_the_imap_password_comes_from_a_file_and_stays_out_of_reprs(tmp_path: Path) -> None:
    secret = tmp_path / "imap-password"
    secret.write_text("geheimes-imap-passwort\n")
    settings = load_settings(
        None,
        environ={
            "BZI_BOUNCES_IMAP_HOST": "imap.example.org",
            "BZI_BOUNCES_IMAP_USERNAME": "bounces",
            "BZI_BOUNCES_IMAP_PASSWORD_FILE": str(secret),
        },
    )
    assert settings.bounces.imap_password is not None
    assert settings.bounces.imap_password.get_secret_value() == "geheimes-imap-passwort"
    assert "geheimes" not in repr(settings)
    assert "geheimes-imap-passwort" in settings.secrets()  # masked in the logs


def test_a_mailbox_without_credentials_is_refused_naming_the_setting() -> None:
    settings = Settings(bounces=BouncesSettings(imap_host="imap.example.org"))
    with pytest.raises(ConfigError, match=r"bounces\.imap_username"):
        bounce_reader(settings, engine=None)  # type: ignore[arg-type]


# --- STARTTLS ---------------------------------------------------------------------------------


async def test_the_reader_speaks_starttls_and_checks_the_certificate(tmp_path: Path) -> None:
    """Against Dovecot with a self-signed certificate: refused while certificates are checked,
    read with ``verify_tls = false``; what it read went to the failed folder (an auto-reply)."""
    from bzi_broadcast.store.engine import create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'unused.sqlite3'}")  # an auto-reply acts on none
    async with running_dovecot(tls=True) as imap:
        await _append(imap, AUTO_REPLY)
        base = Settings().model_copy(update={"security": settings_for("sqlite://", 25).security})

        def reader(verify: bool) -> BounceReader:
            bounces = BouncesSettings(
                imap_host="localhost",
                imap_port=imap.port,
                imap_security="starttls",
                imap_username=imap.user,
                imap_password=SecretStr(imap.password),
                verify_tls=verify,
            )
            made = bounce_reader(base.model_copy(update={"bounces": bounces}), engine)
            assert made is not None
            return made

        with pytest.raises(MailboxError):
            await reader(True).poll()
        assert await _counts(imap) == (1, 0, 0)
        await reader(False).poll()
        assert await _counts(imap) == (0, 0, 1)
    await engine.dispose()


# --- nothing is lost ----------------------------------------------------------------------------


async def test_a_report_whose_effects_cannot_be_written_stays_for_the_next_poll(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    """The database without its tables (as if away): the report stays in the inbox, unmoved;
    once the database is back, the next poll reads and moves it."""
    from bzi_broadcast.store.engine import create_engine, migrate

    engine = create_engine(f"sqlite:///{tmp_path / 'later.sqlite3'}")
    settings = bounce_settings(f"sqlite:///{tmp_path / 'later.sqlite3'}", 25, dovecot)
    token = Verp(settings.security.signing_key()).token(7, 3)
    address = f"bounces+{token}@{DOMAIN}"
    await _append(
        dovecot,
        dsn(
            to=address,
            delivered_to=address,
            recipient="person0@example.org",
            headers=returned_headers(address, "person0@example.org", f"{token}@bzi.example.org"),
        ),
    )
    reader = bounce_reader(settings, engine)
    assert reader is not None
    with pytest.raises(OperationalError, match="deliveries"):
        await reader.poll()
    assert await _counts(dovecot) == (1, 0, 0)
    await migrate(engine)
    await reader.poll()
    assert await _counts(dovecot) == (0, 1, 0)
    await engine.dispose()
