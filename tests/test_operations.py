"""CLI operations, subscriber import, the scheduler, rate limits and retry policy."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.delivery.ratelimit import (
    DailyCapReached,
    RateLimit,
    TokenBucket,
    load_bucket,
    save_bucket,
)
from bzi_broadcast.delivery.retry import RetryPolicy
from bzi_broadcast.delivery.scheduler import Scheduler
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.schema import subscriber_topics, subscribers

from .conftest import EXAMPLE
from .test_delivery import example_announcement, wait_until

BERLIN = ZoneInfo("Europe/Berlin")


def cli(
    database_url: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bzi_broadcast", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "BZI_DATABASE_URL": database_url},
        timeout=120,
        input=stdin,
    )


def test_queue_status_cancel_through_the_cli(database_url: str, tmp_path: Path) -> None:
    at = (datetime.now(BERLIN) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    queued = cli(database_url, "queue", str(EXAMPLE), "--at", at)
    assert queued.returncode == 0, queued.stderr
    announcement_id = queued.stdout.strip()
    assert announcement_id.isdigit()
    status = cli(database_url, "status", announcement_id, "--json")
    data = json.loads(status.stdout)
    assert data["status"] == "scheduled"
    assert data["title"] == "Weltoffene Kommunen – Vom Dialog zum Zusammenhalt"
    cancelled = cli(database_url, "cancel", announcement_id)
    assert cancelled.returncode == 0
    assert (
        json.loads(cli(database_url, "status", announcement_id, "--json").stdout)["status"]
        == "cancelled"
    )
    again = cli(database_url, "cancel", announcement_id)
    assert again.returncode == 1
    assert "kann nicht mehr abgebrochen werden" in again.stderr


def test_cli_refuses_bad_input_without_traceback(database_url: str, tmp_path: Path) -> None:
    past = cli(database_url, "queue", str(EXAMPLE), "--at", "2020-01-01T10:00")
    assert past.returncode == 1
    assert "Vergangenheit" in past.stderr
    unknown = cli(database_url, "status", "999999")
    assert unknown.returncode == 1
    assert "Ankündigung 999999 gibt es nicht" in unknown.stderr
    bad_time = cli(database_url, "queue", str(EXAMPLE), "--at", "morgen")
    assert bad_time.returncode == 1
    assert "--at" in bad_time.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: T\n", encoding="utf-8")
    invalid = cli(database_url, "queue", str(bad))
    assert invalid.returncode == 2
    for result in (past, unknown, bad_time, invalid):
        assert "Traceback" not in result.stderr


def test_unreachable_database_is_reported() -> None:
    result = cli("postgresql://nobody@127.0.0.1:1/none", "status")
    assert result.returncode == 1
    assert "Datenbank nicht erreichbar" in result.stderr
    assert "Traceback" not in result.stderr


async def test_csv_import_reports_lines_and_imports_the_good_ones(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    csv_file = tmp_path / "liste.csv"
    csv_file.write_text(
        "email,name,language,topics,consent_source\n"
        "anna@example.org,Anna,de,kommunen;teilhabe,Fachtag 2025\n"
        "kaputt,,de,,Fachtag 2025\n"
        "Anna@Example.org,Doppelt,de,,Fachtag 2025\n"
        "bert@example.org,,fr,,Fachtag 2025\n"
        "cem@example.org,Cem Öztürk,en,,Fachtag 2025\n"
        "dora@example.org,,de,,\n",
        encoding="utf-8",
    )
    result = await asyncio.to_thread(cli, database_url, "subscribers", "import", str(csv_file))
    assert result.returncode == 1
    assert "Zeile 3: ungültige E-Mail-Adresse „kaputt“" in result.stderr
    assert "Zeile 4: doppelte Adresse anna@example.org" in result.stderr
    assert "Zeile 5: unbekannte Sprache „fr“" in result.stderr
    assert "Zeile 7: keine Angabe, wo die Einwilligung gegeben wurde" in result.stderr
    assert "2 Personen importiert, 4 Zeilen übersprungen." in result.stdout
    again = await asyncio.to_thread(cli, database_url, "subscribers", "import", str(csv_file))
    assert "anna@example.org ist bereits eingetragen" in again.stderr
    async with engine.connect() as conn:
        emails = set((await conn.execute(select(subscribers.c.email))).scalars())
        topics = (await conn.execute(select(func.count()).select_from(subscriber_topics))).scalar()
    assert emails == {"anna@example.org", "cem@example.org"}
    assert topics == 2


async def test_scheduler_fires_release_at_publish_time(engine: AsyncEngine) -> None:
    store = Announcements(engine)
    released: list[int] = []

    async def release(announcement_id: int) -> None:
        released.append(announcement_id)

    soon = datetime.now(UTC) + timedelta(seconds=1)
    new_id = await store.create(
        example_announcement(), actor="t", status=S.SCHEDULED, publish_at=soon
    )
    scheduler = Scheduler(store, release, sweep_interval=3600)
    await scheduler.start()
    try:
        await wait_until(lambda: _contains(released, new_id), timeout=10)
    finally:
        scheduler.shutdown()
    assert datetime.now(UTC) >= soon


async def test_announcement_queued_elsewhere_is_released_on_time(engine: AsyncEngine) -> None:
    store = Announcements(engine)
    fired: dict[int, datetime] = {}

    async def release(announcement_id: int) -> None:
        fired[announcement_id] = datetime.now(UTC)

    scheduler = Scheduler(store, release, sweep_interval=0.5)
    await scheduler.start()
    try:
        publish_at = datetime.now(UTC) + timedelta(seconds=1.5)
        new_id = await store.create(
            example_announcement(), actor="other process", status=S.SCHEDULED, publish_at=publish_at
        )
        await wait_until(lambda: _contains(list(fired), new_id), timeout=10)
    finally:
        scheduler.shutdown()
    assert timedelta(0) <= fired[new_id] - publish_at < timedelta(seconds=0.3)


async def _contains(items: list[int], item: int) -> bool:
    return item in items


async def test_sweep_releases_what_was_missed(engine: AsyncEngine) -> None:
    store = Announcements(engine)
    released: list[int] = []

    async def release(announcement_id: int) -> None:
        released.append(announcement_id)

    missed = await store.create(
        example_announcement(),
        actor="t",
        status=S.SCHEDULED,
        publish_at=datetime.now(UTC) - timedelta(hours=2),
    )
    scheduler = Scheduler(store, release, sweep_interval=3600)
    await scheduler.sweep()
    assert missed in released


def test_publish_times_are_stored_in_utc_across_dst() -> None:
    # 29 March 2026 02:30 does not exist in Berlin; 25 October 2026 02:30 exists twice.
    before = datetime(2026, 3, 29, 1, 30, tzinfo=BERLIN)
    after = datetime(2026, 3, 29, 3, 30, tzinfo=BERLIN)
    assert (after.astimezone(UTC) - before.astimezone(UTC)) == timedelta(hours=1)
    autumn = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN)
    assert autumn.astimezone(UTC).hour == 0  # the first (summer time) 02:30, fold=0


async def test_token_bucket_limits_rate_and_daily_cap() -> None:
    now = [0.0]
    bucket = TokenBucket(
        "smtp:test", RateLimit(per_second=1000, burst=5, daily_cap=8), clock=lambda: now[0]
    )
    for _ in range(5):
        await bucket.acquire()
    assert bucket.waited == 0
    await bucket.acquire()  # the sixth waits for a token
    assert bucket.waited > 0
    for _ in range(2):
        await bucket.acquire()
    with pytest.raises(DailyCapReached) as caught:
        await bucket.acquire()
    assert caught.value.retry_after is not None


async def test_rate_limit_state_survives_a_restart(engine: AsyncEngine) -> None:
    limit = RateLimit(per_second=1, burst=10, daily_cap=100)
    bucket = TokenBucket("smtp:persist", limit)
    for _ in range(7):
        await bucket.acquire()
    await save_bucket(engine, bucket)
    await save_bucket(engine, bucket)  # an update, not a second row
    restarted = TokenBucket("smtp:persist", limit)
    await load_bucket(engine, restarted)
    assert restarted.day_count == 7
    assert float(restarted.snapshot()["tokens"]) < 10  # type: ignore[arg-type]  # not a full burst


def test_retry_policy_backs_off_with_jitter_and_honours_server_delay() -> None:
    policy = RetryPolicy(base_delay=10, factor=2, max_delay=100, max_attempts=5, jitter=0.5)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rng = random.Random(1)
    delays = [
        (policy.next_attempt(n, now, rng=rng) - now).total_seconds()  # type: ignore[operator]
        for n in (1, 2, 3, 4)
    ]
    assert 5 <= delays[0] <= 10
    assert 10 <= delays[1] <= 20
    assert 50 <= delays[3] <= 80
    assert policy.next_attempt(5, now) is None
    assert policy.next_attempt(1, now, retry_after=42) == now + timedelta(seconds=42)


def test_example_configuration_documents_every_option_with_its_default() -> None:
    from bzi_broadcast.config import Settings, load_settings

    example = Path(__file__).resolve().parents[1] / "config" / "bzi-broadcast.example.toml"
    assert load_settings(example, {}) == Settings()
    text = example.read_text(encoding="utf-8")
    for section, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            assert f"[{section}]" in text
            for key in annotation.model_fields:
                assert f"{key} =" in text, f"{section}.{key} is not documented"


def test_configuration_problems_name_the_setting(tmp_path: Path) -> None:
    from bzi_broadcast.config import load_settings
    from bzi_broadcast.errors import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text("[smtp]\nport = 'abc'\ncolour = 'red'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(bad, {"BZI_SECURITY_SECRET_KEY_FILE": str(tmp_path / "missing")})
    assert "BZI_SECURITY_SECRET_KEY_FILE" in caught.value.message
    with pytest.raises(ConfigError) as caught:
        load_settings(bad, {})
    assert "smtp.port" in caught.value.message
    assert "smtp.colour: unbekannte Einstellung" in caught.value.message


def test_serve_refuses_to_start_without_a_mail_server(database_url: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bzi_broadcast", "serve"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "BZI_DATABASE_URL": database_url,
            "BZI_SMTP_PORT": "1",
            "BZI_SMTP_TIMEOUT": "2",
        },
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "E-Mail-Versand nicht möglich" in result.stderr
    assert "Traceback" not in result.stderr


async def test_stop_lets_a_running_sweep_finish_instead_of_cancelling_it(
    engine: AsyncEngine,
) -> None:
    started = asyncio.Event()
    finished: list[bool] = []

    async def slow_housekeeping() -> None:
        started.set()
        await asyncio.sleep(0.3)  # stands for database work in progress
        finished.append(True)

    async def release(_announcement_id: int) -> None:
        return None

    scheduler = Scheduler(
        Announcements(engine), release, sweep_interval=3600, on_sweep=slow_housekeeping
    )
    await scheduler.start()
    await asyncio.wait_for(started.wait(), timeout=10)
    await scheduler.stop()
    assert finished == [True]
