"""CLI operations, subscriber import, the scheduler, rate limits and retry policy."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.config import Settings
from bzi_broadcast.content import load_announcement
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
from bzi_broadcast.service import Service
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.schema import subscriber_topics, subscribers
from bzi_broadcast.testing.smtp import SmtpCapture

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
    assert float(restarted.snapshot()["tokens"]) < 10  # not a full burst


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


# --- /metrics, logs, SIGTERM -------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(?:,|$)')
TELEGRAM_TOKEN = "123456:TEST-TOKEN"
CHANNEL = -1001234


@dataclass
class Family:
    kind: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]


def parse_exposition(text: str) -> dict[str, Family]:
    """The Prometheus text format 0.0.4, strictly: a family's HELP and TYPE come once, before
    its samples; every line is a comment or a well-formed sample of a declared family."""
    families: dict[str, Family] = {}
    helped: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helped, f"second HELP for {name}"
            helped.add(name)
        elif line.startswith("# TYPE "):
            _hash, _type, name, kind = line.split(" ")
            assert name in helped and name not in families, line
            assert kind in ("counter", "gauge", "histogram")
            families[name] = Family(kind=kind)
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, raw_labels, value = match.groups()
            labels = _labels(raw_labels or "")
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            family = families.get(name) or families[base]
            assert family.kind == "histogram" or name in families, line
            family.samples[(name, frozenset(labels.items()))] = float(value)
    return families


def _labels(raw: str) -> dict[str, str]:
    found = dict(_LABEL.findall(raw))
    assert ",".join(f'{k}="{v}"' for k, v in found.items()) == raw, f"bad labels {raw!r}"
    return found


def check_histogram(family: Family, name: str, **labels: str) -> float:
    """The buckets count up to +Inf, which equals _count; returns _count."""
    buckets = sorted(
        (float(dict(key)["le"]), value)
        for (sample, key), value in family.samples.items()
        if sample == f"{name}_bucket" and {k: v for k, v in key if k != "le"} == labels
    )
    counts = [value for _le, value in buckets]
    assert counts == sorted(counts)
    assert buckets[-1][0] == float("inf")
    count = family.value(f"{name}_count", **labels)
    assert buckets[-1][1] == count
    assert family.value(f"{name}_sum", **labels) > 0
    return count


async def test_metrics_after_a_small_send(engine: AsyncEngine, database_url: str) -> None:
    from bzi_broadcast.staff.accounts import LoginRefused, authenticate
    from bzi_broadcast.testing.telegram import Limits, TelegramServer

    from .test_delivery import METRICS_AUTH, serving, settings_for
    from .test_store import add_subscribers

    await add_subscribers(engine, 3)
    with pytest.raises(LoginRefused):
        await authenticate(engine, Settings().security, "nobody@example.org", "falsch", None)
    api = TelegramServer(token=TELEGRAM_TOKEN, limits=Limits(per_group_per_minute=600))
    for chat in (CHANNEL, CHANNEL - 1):
        api.add_chat(chat, type="channel", title="Kanal")
    http = TestServer(api.app(), host="127.0.0.1")
    await http.start_server()
    try:
        async with SmtpCapture() as smtp:
            base = settings_for(database_url, smtp.port)
            settings = base.model_copy(
                update={
                    # a burst of one at 20 per second: the second mail waits for the limiter
                    "smtp": base.smtp.model_copy(update={"rate_per_second": 20, "burst": 1}),
                    "telegram": base.telegram.model_copy(
                        update={
                            "enabled": True,
                            "token": SecretStr(TELEGRAM_TOKEN),
                            "base_url": f"http://127.0.0.1:{http.port}/bot",
                            "chats": [CHANNEL, CHANNEL - 1],
                            "bot": False,
                            "per_second": 2.0,  # the second chat waits half a second
                            "per_group_per_minute": 600.0,
                        }
                    ),
                }
            )
            async with serving(Service(settings)) as url, aiohttp.ClientSession() as client:
                announcement_id = await Announcements(engine).create(
                    load_announcement(EXAMPLE),
                    actor="test",
                    status=S.SCHEDULED,
                    publish_at=datetime.now(UTC),
                )
                await wait_until(lambda: _has_status(engine, announcement_id, S.SENT), timeout=60)
                async with client.get(f"{url}/metrics", headers=METRICS_AUTH) as answer:
                    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    metrics = parse_exposition(await answer.text())
    finally:
        await http.close()
    deliveries = metrics["bzi_deliveries"]
    assert deliveries.value("bzi_deliveries", channel="email", state="sent") == 3
    assert deliveries.value("bzi_deliveries", channel="telegram", state="sent") == 2
    depth = metrics["bzi_queue_depth"]
    assert depth.value("bzi_queue_depth", channel="email") == 0
    assert depth.value("bzi_queue_depth", channel="telegram") == 0
    latency = metrics["bzi_send_seconds"]
    assert latency.kind == "histogram"
    assert check_histogram(latency, "bzi_send_seconds", channel="email") >= 3
    assert check_histogram(latency, "bzi_send_seconds", channel="telegram") >= 2
    waits = metrics["bzi_rate_limit_waits_total"]
    seconds = metrics["bzi_rate_limit_wait_seconds_total"]
    for limiter in ("smtp", "telegram"):  # three mails for a burst of one; two chats at 2/s
        assert waits.value("bzi_rate_limit_waits_total", limiter=limiter) >= 1
        assert seconds.value("bzi_rate_limit_wait_seconds_total", limiter=limiter) > 0
    lag = metrics["bzi_scheduler_lag_seconds"].value("bzi_scheduler_lag_seconds")
    assert 0 <= lag < 30
    assert metrics["bzi_scheduler_lag_max_seconds"].value("bzi_scheduler_lag_max_seconds") >= lag
    assert metrics["bzi_failed_logins_total"].value("bzi_failed_logins_total") == 1
    assert metrics["bzi_failed_logins_total"].kind == "counter"
    assert metrics["bzi_channel_paused"].value("bzi_channel_paused", channel="email") == 0


async def _has_status(engine: AsyncEngine, announcement_id: int, status: S) -> bool:
    return (await Announcements(engine).get(announcement_id)).status == status


def test_exposition_escapes_label_values() -> None:
    from bzi_broadcast.metrics import Histogram, family

    lines = family("x_total", "Help\\text", "counter", [({"a": 'q"u\\o\nte'}, 2.5)])
    histogram = Histogram("h_seconds", "H", buckets=(0.1, 1.0))
    histogram.observe(0.5, channel="email")
    text = "\n".join(lines + histogram.exposition()) + "\n"
    parsed = parse_exposition(text)
    assert parsed["x_total"].value("x_total", a='q\\"u\\\\o\\nte') == 2.5
    assert check_histogram(parsed["h_seconds"], "h_seconds", channel="email") == 1
    assert parsed["h_seconds"].value("h_seconds_bucket", channel="email", le="0.1") == 0


async def test_logs_are_json_with_ids_and_never_show_a_secret(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    from bzi_broadcast.testing.mastodon import MastodonServer
    from bzi_broadcast.testing.telegram import TelegramServer

    from .test_reliability import exited, serve
    from .test_store import add_subscribers

    secrets = {
        "smtp": "smtp-geheim-4711",
        "mastodon": "masto-geheim-0815",
        "telegram": "7654321:AAH-telegram-geheim-xyz",
        "key": "signing-key-geheim-0123456789-abcdefghijklmnop",
        "database": "db-geheim-pw",
    }
    if database_url.startswith("postgresql://postgres@"):  # trust: any password is accepted
        database_url = database_url.replace("postgres@", f"postgres:{secrets['database']}@")
    (tmp_path / "key").write_text(secrets["key"], encoding="utf-8")
    await add_subscribers(engine, 2)
    mastodon = MastodonServer(token="a-different-token")
    telegram = TelegramServer(token="1111111:ANOTHER-BOT")
    servers = [TestServer(mastodon.app(), host="127.0.0.1"), TestServer(telegram.app())]
    for server in servers:
        await server.start_server()
    try:
        async with SmtpCapture(credentials=("newsletter", secrets["smtp"])) as smtp:
            process = serve(
                database_url,
                smtp.port,
                tmp_path,
                BZI_LOGGING_LEVEL="DEBUG",
                BZI_SMTP_USERNAME="newsletter",
                BZI_SMTP_PASSWORD=secrets["smtp"],
                BZI_SECURITY_SECRET_KEY_FILE=str(tmp_path / "key"),
                BZI_MASTODON_ENABLED="true",
                BZI_MASTODON_BASE_URL=f"http://127.0.0.1:{servers[0].port}",
                BZI_MASTODON_ACCESS_TOKEN=secrets["mastodon"],
                BZI_TELEGRAM_ENABLED="true",
                BZI_TELEGRAM_TOKEN=secrets["telegram"],
                BZI_TELEGRAM_BASE_URL=f"http://127.0.0.1:{servers[1].port}/bot",
                BZI_TELEGRAM_CHATS="[-100123]",
            )
            try:
                announcement_id = await Announcements(engine).create(
                    load_announcement(EXAMPLE),
                    actor="test",
                    status=S.SCHEDULED,
                    publish_at=datetime.now(UTC),
                )
                await wait_until(lambda: _paused_both(engine), timeout=60)
                await smtp.handler.wait_for(2)
            finally:
                process.send_signal(signal.SIGTERM)
                assert await exited(process) == 0
    finally:
        for server in servers:
            await server.close()
    log = "\n".join(p.read_text(encoding="utf-8") for p in tmp_path.glob("serve-*.log"))
    for name, secret in secrets.items():
        assert secret not in log, f"the {name} secret leaked into the log"
    recorded = await _errors_and_pause_reasons(engine)  # shown on /readyz and the dashboard
    assert "muss neu verbunden werden" in recorded
    assert not any(secret in recorded for secret in secrets.values())
    assert "7654321" not in log  # not even the bot id part of the token
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert entries
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    failed = [e for e in entries if e["message"].startswith("delivery failed")]
    assert failed
    assert {e["announcement_id"] for e in failed} == {announcement_id}
    assert all(isinstance(e["delivery_id"], int) for e in failed)


async def _errors_and_pause_reasons(engine: AsyncEngine) -> str:
    from bzi_broadcast.delivery import control
    from bzi_broadcast.store.schema import deliveries

    async with engine.connect() as conn:
        errors = (await conn.execute(select(deliveries.c.last_error))).scalars()
        found = [str(e) for e in errors if e]
    reasons = (await control.paused_channels(engine)).values()
    return "\n".join(found + [str(reason) for reason in reasons])


async def _paused_both(engine: AsyncEngine) -> bool:
    from bzi_broadcast.delivery import control

    return {"mastodon", "telegram"} <= set(await control.paused_channels(engine))


async def test_sigterm_finishes_or_hands_back_sends_in_flight(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    from bzi_broadcast.testing.smtp import FaultPlan

    from .test_reliability import exited, serve
    from .test_store import add_subscribers

    await add_subscribers(engine, 3)
    plan = FaultPlan(delay=120)  # the mail server takes two minutes to answer DATA
    async with SmtpCapture(plan) as smtp:
        announcement_id = await Announcements(engine).create(
            example_announcement(), actor="test", status=S.SCHEDULED, publish_at=datetime.now(UTC)
        )
        grace = {"BZI_DELIVERY_SHUTDOWN_GRACE_SECONDS": "1", "BZI_DELIVERY_LEASE_SECONDS": "300"}
        process = serve(database_url, smtp.port, tmp_path, **grace)
        await wait_until(lambda: _in_state(engine, "sending", 3), timeout=60)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert await exited(process) == 0
        assert time.monotonic() - started < 15  # cut off after the grace period, not 2 minutes
        await wait_until(lambda: _in_state(engine, "queued", 3), timeout=5)  # handed back

        plan.delay = 1.0  # now the sends in flight finish within the grace period
        grace["BZI_DELIVERY_SHUTDOWN_GRACE_SECONDS"] = "30"
        process = serve(database_url, smtp.port, tmp_path, **grace)
        await wait_until(lambda: _in_state(engine, "sending", 3), timeout=60)
        process.send_signal(signal.SIGTERM)
        assert await exited(process) == 0
    assert await _in_state(engine, "sent", 3)
    assert await _has_status(engine, announcement_id, S.SENDING) or await _has_status(
        engine, announcement_id, S.SENT
    )
    log = "\n".join(p.read_text(encoding="utf-8") for p in tmp_path.glob("serve-*.log"))
    assert "Traceback" not in log


async def _in_state(engine: AsyncEngine, state: str, count: int) -> bool:
    from bzi_broadcast.store.schema import deliveries

    async with engine.connect() as conn:
        found = (
            await conn.execute(select(func.count()).where(deliveries.c.status == state))
        ).scalar_one()
    return int(found) == count
