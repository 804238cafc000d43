"""Consent proof, export, erasure and purge of unconfirmed sign-ups, through the CLI."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.store.schema import consent_events, subscribers
from bzi_broadcast.subscribers import gdpr

from .test_operations import cli

CSV = "email,name,consent_source\nanna@example.org,Anna,Papierformular Fachtag 2025\n"


async def _import(database_url: str, tmp_path: Path, *extra: str) -> None:
    csv_file = tmp_path / "liste.csv"
    csv_file.write_text(CSV, encoding="utf-8")
    result = await asyncio.to_thread(
        cli, database_url, "subscribers", "import", str(csv_file), *extra
    )
    assert result.returncode == 0, result.stderr


async def test_import_is_unconfirmed_unless_consent_is_proven_and_the_proof_says_so(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    await _import(database_url, tmp_path)
    async with engine.connect() as conn:
        status = (await conn.execute(select(subscribers.c.status))).scalar_one()
    assert status == "pending"  # the service mails a confirmation link

    await asyncio.to_thread(cli, database_url, "subscribers", "erase", "anna@example.org")
    csv_file = tmp_path / "liste.csv"
    again = await asyncio.to_thread(
        cli, database_url, "subscribers", "import", str(csv_file), "--consent-proven", "Ordner 7"
    )
    assert "gesperrt" in again.stderr  # erased addresses stay out, also with proven consent

    other = tmp_path / "andere.csv"
    other.write_text("email,consent_source\nbert@example.org,Telefon\n", encoding="utf-8")
    result = await asyncio.to_thread(
        cli, database_url, "subscribers", "import", str(other), "--consent-proven", "Ordner 7"
    )
    assert result.returncode == 0, result.stderr
    proof = await asyncio.to_thread(cli, database_url, "subscribers", "proof", "Bert@Example.org")
    assert proof.returncode == 0
    assert "Status: active" in proof.stdout
    assert "signed_up" in proof.stdout
    assert "Telefon" in proof.stdout
    assert "confirmed" in proof.stdout
    assert "Ordner 7" in proof.stdout


async def test_export_then_erase_keeps_only_the_hash(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    await _import(database_url, tmp_path)
    one = await asyncio.to_thread(cli, database_url, "subscribers", "export", "anna@example.org")
    data = json.loads(one.stdout)
    assert data["email"] == "anna@example.org"
    assert data["name"] == "Anna"
    assert data["consent"][0]["event"] == "signed_up"
    assert data["consent"][0]["detail"]["consent_source"] == "Papierformular Fachtag 2025"
    everyone = await asyncio.to_thread(cli, database_url, "subscribers", "export")
    assert [json.loads(line)["email"] for line in everyone.stdout.splitlines()] == [
        "anna@example.org"
    ]

    erased = await asyncio.to_thread(cli, database_url, "subscribers", "erase", "anna@example.org")
    assert erased.returncode == 0
    async with engine.connect() as conn:
        assert (await conn.execute(select(subscribers))).first() is None
        assert (await conn.execute(select(consent_events))).first() is None
    missing = await asyncio.to_thread(cli, database_url, "subscribers", "proof", "anna@example.org")
    assert missing.returncode == 1
    assert "Keine Abonnentin" in missing.stderr
    assert "Traceback" not in missing.stderr


async def test_unconfirmed_sign_ups_are_purged_after_the_configured_days(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    await _import(database_url, tmp_path)
    now = datetime.now(UTC)
    assert await gdpr.purge_unconfirmed(engine, days=30, now=now) == 0
    async with engine.begin() as conn:
        await conn.execute(update(subscribers).values(created_at=now - timedelta(days=31)))
    assert await gdpr.purge_unconfirmed(engine, days=30, now=now) == 1
    async with engine.connect() as conn:
        assert (await conn.execute(select(subscribers))).first() is None


async def test_serve_mails_each_imported_person_a_confirmation_link_once(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    from bzi_broadcast.service import Service
    from bzi_broadcast.testing.smtp import SmtpCapture

    from .test_delivery import settings_for, wait_until

    await _import(database_url, tmp_path)
    async with SmtpCapture() as smtp:
        service = Service(settings_for(database_url, smtp.port))
        task = asyncio.create_task(service.run())
        try:

            async def mailed() -> bool:
                return any(r.recipient == "anna@example.org" for r in smtp.received)

            await wait_until(mailed, timeout=30)
            await wait_until(lambda: _sent_recorded(engine), timeout=10)
            for _sweep in range(2):  # more sweeps: nobody is mailed twice
                await service._housekeeping()
        finally:
            service.stop()
            await asyncio.wait_for(task, 30)
    assert [r.recipient for r in smtp.received] == ["anna@example.org"]
    assert "/bestaetigen/" in smtp.received[0].data.decode()


async def _sent_recorded(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        row = (await conn.execute(select(subscribers.c.confirmation_sent_at))).first()
    return row is not None and row[0] is not None
