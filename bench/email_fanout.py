"""Benchmark: the seed newsletter to N subscribers into postfix's smtp-sink, end to end.

For each database (SQLite file; PostgreSQL at 127.0.0.1:5432) it
  1. writes N active subscribers,
  2. queues the seed example two seconds ahead and starts ``bzi-broadcast serve`` (``--workers``
     processes on PostgreSQL, one on SQLite),
  3. waits until the announcement is sent and reports messages/s from release to the last
     acceptance, the peak RSS of each serve process, and
  4. the release latency (publish_at → first message handed to SMTP) over 20 small announcements.
In the same run, right before and right after each database's fan-out, it measures postfix's
``smtp-source`` (C; 8 sessions, connections reused, the same message size) into the same sink, and
prints our rate as a ratio of the mean of the two (the machine's load may change meanwhile).
With ``--profile DIR`` each serve process is sampled by py-spy during the big fan-out and the CPU
time per message is printed by stage (``bench.email_stages``). With ``--dkim`` every message is
signed with a fresh RSA-2048 key (``email.dkim_*``; add ``--ed25519`` for the second signature).

    .venv/bin/python -m bench.email_fanout [--subscribers 100000] [--databases sqlite,postgresql]
        [--workers 2] [--profile DIR] [--dkim [--ed25519]]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from sqlalchemy import func, insert, select

from bench.email_stages import stage_table
from bzi_broadcast.content import load_announcement
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.render import Renderer
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.engine import create_engine, migrate
from bzi_broadcast.store.schema import announcements, deliveries, subscribers

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "examples" / "weltoffene-kommunen.yaml"
SINK, SOURCE = (
    shutil.which("smtp-sink") or "/usr/sbin/smtp-sink",
    shutil.which("smtp-source") or "/usr/sbin/smtp-source",
)
PY_SPY = Path(sys.executable).with_name("py-spy")
PROFILE_RATE = 100  # py-spy samples per second
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
SERVE_ENV: dict[str, str] = {}  # settings every serve process gets besides the defaults (--dkim)


def require_postfix() -> None:
    if not (Path(SINK).exists() and Path(SOURCE).exists()):
        sys.exit(
            "bench/email_fanout needs postfix's smtp-sink and smtp-source: "
            "apt-get install postfix (choose 'No configuration')"
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def start_sink(port: int) -> subprocess.Popen[bytes]:
    sink = subprocess.Popen(
        [SINK, "-u", os.environ.get("USER", "root"), f"127.0.0.1:{port}", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return sink
        except OSError:
            time.sleep(0.05)
    sys.exit("smtp-sink did not start")


def reference_rate(port: int, count: int, size: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            SOURCE,
            "-d",
            "-s",
            "8",
            "-m",
            str(count),
            "-l",
            str(size),
            "-f",
            "bench@example.org",
            "-t",
            "sink@example.org",
            f"127.0.0.1:{port}",
        ],
        check=True,
    )
    return count / (time.perf_counter() - start)


async def prepare(url: str, count: int, *, schedule: bool = True) -> int | None:
    engine = create_engine(url)
    await migrate(engine)
    await engine.dispose()
    await add_readers(url, 0, count)
    return await schedule_example(url) if schedule else None


async def add_readers(url: str, start: int, stop: int) -> None:
    engine = create_engine(url)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        for first in range(start, stop, 20000):
            await conn.execute(
                insert(subscribers),
                [
                    {
                        "email": f"reader{i}@example.org",
                        "language": "de",
                        "status": "active",
                        "source": "bench",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in range(first, min(stop, first + 20000))
                ],
            )
    await engine.dispose()


async def schedule_example(url: str, delay: float = 3.0) -> int:
    engine = create_engine(url)
    announcement_id = await Announcements(engine).create(
        load_announcement(EXAMPLE),
        actor="bench",
        status=AnnouncementStatus.SCHEDULED,
        publish_at=datetime.now(UTC) + timedelta(seconds=delay),
    )
    await engine.dispose()
    return announcement_id


def serve(url: str, port: int, workdir: Path, index: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BZI_DATABASE_URL": url,
        "BZI_SECURITY_SECRET_KEY": secrets.token_urlsafe(48),  # signs the links in every message
        "BZI_SMTP_PORT": str(port),
        "BZI_SMTP_POOL_SIZE": "8",
        "BZI_SMTP_RATE_PER_SECOND": "100000",
        "BZI_SMTP_BURST": "1000",
        "BZI_DELIVERY_WINDOW": "400",
        "BZI_DELIVERY_POLL_INTERVAL": "0.2",
        "BZI_DELIVERY_SWEEP_INTERVAL": "0.5",
        "BZI_WEB_PORT": "0",
        "BZI_EMAIL_ALLOW_INSECURE_PUBLIC_URL": "true",  # a bench on 127.0.0.1
        **SERVE_ENV,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bzi_broadcast", "serve"],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / f"serve{index}.log", "wb"),
    )


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_profilers(
    processes: list[subprocess.Popen[bytes]], out: Path, kind: str
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """py-spy on every serve process (collapsed stacks, idle threads left out)."""
    out.mkdir(parents=True, exist_ok=True)
    profilers = []
    for i, process in enumerate(processes):
        path = out / f"{kind}-{i}.txt"
        command = [str(PY_SPY), "record", "--format", "raw", "--rate", str(PROFILE_RATE)]
        command += ["--output", str(path), "--pid", str(process.pid)]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        profilers.append((spy, path))
    return profilers


def stop_profilers(profilers: list[tuple[subprocess.Popen[bytes], Path]]) -> list[Path]:
    for spy, _path in profilers:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    for spy, _path in profilers:
        spy.wait(60)
    return [path for _spy, path in profilers if path.exists()]


async def progress(
    url: str, announcement_id: int
) -> tuple[str, datetime | None, datetime | None, datetime | None, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            status, released = (
                await conn.execute(
                    select(announcements.c.status, announcements.c.released_at).where(
                        announcements.c.id == announcement_id
                    )
                )
            ).one()
            first, last, sent = (
                await conn.execute(
                    select(
                        func.min(deliveries.c.sent_at), func.max(deliveries.c.sent_at), func.count()
                    ).where(
                        deliveries.c.announcement_id == announcement_id,
                        deliveries.c.status == "sent",
                    )
                )
            ).one()
        return status, released, first, last, sent
    finally:
        await engine.dispose()


async def release_latencies(url: str, rounds: int = 20) -> list[float]:
    """publish_at → first acceptance, for small announcements fired one after another."""
    engine = create_engine(url)
    store = Announcements(engine)
    ids = []
    base = datetime.now(UTC) + timedelta(seconds=2)
    for i in range(rounds):
        ids.append(
            await store.create(
                load_announcement(EXAMPLE),
                actor="bench",
                status=AnnouncementStatus.SCHEDULED,
                publish_at=base + timedelta(seconds=0.25 * i),
            )
        )
    await engine.dispose()
    deadline = time.monotonic() + 120
    latencies: list[float] = []
    while time.monotonic() < deadline and len(latencies) < rounds:
        await asyncio.sleep(0.5)
        latencies = []
        for announcement_id in ids:
            _status, _released, first, _last, _sent = await progress(url, announcement_id)
            if first is not None:
                publish_at = base + timedelta(seconds=0.25 * ids.index(announcement_id))
                latencies.append((first - publish_at).total_seconds())
    return latencies


@dataclass(frozen=True, kw_only=True)
class Run:
    rate: float  # messages accepted by the sink per second, release → last acceptance
    sent: int
    seconds: float
    rss: float  # the largest VmHWM of the serve processes, MB
    rss_before: float  # the same after start-up and the 20 small announcements
    p50: float
    p99: float
    stacks: list[Path]


async def run_one(
    kind: str, url: str, port: int, count: int, workers: int, profile: Path | None
) -> Run:
    """Release latency first (20 small announcements to 10 readers), then the big fan-out."""
    await prepare(url, 10, schedule=False)
    with tempfile.TemporaryDirectory() as tmp:
        processes = [serve(url, port, Path(tmp), i) for i in range(workers)]
        profilers: list[tuple[subprocess.Popen[bytes], Path]] = []
        try:
            latencies = await release_latencies(url)
            rss_before = max(peak_rss_mb(p.pid) for p in processes)
            await add_readers(url, 10, count)
            if profile is not None:
                profilers = start_profilers(processes, profile, kind)
            announcement_id = await schedule_example(url)
            publish_at, released, first, last, sent = await wait_sent(
                url, announcement_id, count, kind, processes, Path(tmp)
            )
            stacks = stop_profilers(profilers)
            rss = max(peak_rss_mb(p.pid) for p in processes)
        finally:
            for p in processes:
                p.send_signal(signal.SIGTERM)
            for p in processes:
                p.wait(60)
    seconds = (last - released).total_seconds()
    latencies.append((first - publish_at).total_seconds())
    return Run(
        rate=sent / seconds,
        sent=sent,
        seconds=seconds,
        rss=rss,
        rss_before=rss_before,
        p50=statistics.median(latencies),
        p99=statistics.quantiles(latencies, n=100)[98],
        stacks=stacks,
    )


async def wait_sent(
    url: str,
    announcement_id: int,
    count: int,
    kind: str,
    processes: list[subprocess.Popen[bytes]],
    workdir: Path,
) -> tuple[datetime, datetime, datetime, datetime, int]:
    while True:
        await asyncio.sleep(1)
        status, released, first, last, sent = await progress(url, announcement_id)
        print(f"  {kind}: {status} {sent}/{count}", end="\r", flush=True)
        if status in ("sent", "partially_failed"):
            break
        for i, p in enumerate(processes):
            if p.poll() is not None:
                tail = (workdir / f"serve{i}.log").read_text(errors="replace")[-3000:]
                sys.exit(f"serve exited early ({p.returncode}); the end of its log:\n{tail}")
    engine = create_engine(url)
    async with engine.connect() as conn:
        publish_at = (
            await conn.execute(
                select(announcements.c.publish_at).where(announcements.c.id == announcement_id)
            )
        ).scalar_one()
    await engine.dispose()
    assert released is not None
    assert first is not None
    assert last is not None
    return publish_at, released, first, last, sent


async def fresh_pg_database(name: str) -> str:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=2, help="serve processes on PostgreSQL")
    parser.add_argument("--profile", type=Path, help="py-spy each serve process, stacks here")
    parser.add_argument("--dkim", action="store_true", help="sign with a fresh RSA-2048 key")
    parser.add_argument("--ed25519", action="store_true", help="with --dkim: an Ed25519 one too")
    args = parser.parse_args()
    require_postfix()
    keys = tempfile.TemporaryDirectory()
    signing = ("RSA + Ed25519" if args.ed25519 else "RSA") if args.dkim else "off"
    if args.dkim:
        SERVE_ENV.update(dkim_environment(Path(keys.name), ed25519=args.ed25519))
    size = len(Renderer().email(load_announcement(EXAMPLE)).html) * 2
    port = free_port()
    sink = start_sink(port)
    try:
        print(
            f"bench/email_fanout  machine: {platform.machine()} {os.cpu_count()} cores, "
            f"python {platform.python_version()}, subscribers: {args.subscribers}, "
            f"DKIM: {signing}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        for kind in args.databases.split(","):
            workers = 1 if kind == "sqlite" else args.workers
            measure_database(kind, workers, port, size, args)
    finally:
        sink.terminate()
        keys.cleanup()


def dkim_environment(directory: Path, *, ed25519: bool) -> dict[str, str]:
    """A throwaway key pair per run, handed to serve as secret files."""
    keys = {"rsa": "BZI_EMAIL_DKIM_PRIVATE_KEY_FILE"}
    if ed25519:
        keys["ed25519"] = "BZI_EMAIL_DKIM_ED25519_PRIVATE_KEY_FILE"
    env = {"BZI_EMAIL_DKIM_DOMAIN": "bzi.example.org", "BZI_EMAIL_DKIM_SELECTOR": "bench"}
    if ed25519:
        env["BZI_EMAIL_DKIM_ED25519_SELECTOR"] = "benched"
    for kind, variable in keys.items():
        path = directory / f"{kind}.pem"
        command = ["dkim", "keygen", str(path), *(["--ed25519"] if kind == "ed25519" else [])]
        subprocess.run(
            [sys.executable, "-m", "bzi_broadcast", *command], check=True, stdout=subprocess.DEVNULL
        )
        env[variable] = str(path)
    return env


def measure_database(
    kind: str, workers: int, port: int, size: int, args: argparse.Namespace
) -> None:
    """smtp-source, our fan-out, smtp-source again: the reference is the mean of the two."""
    references = [reference_rate(port, min(args.subscribers, 50_000), size)]
    with tempfile.TemporaryDirectory() as tmp:
        url = (
            f"sqlite:///{tmp}/bench.sqlite3"
            if kind == "sqlite"
            else asyncio.run(fresh_pg_database("bzi_bench"))
        )
        r = asyncio.run(run_one(kind, url, port, args.subscribers, workers, args.profile))
    references.append(reference_rate(port, min(args.subscribers, 50_000), size))
    reference = statistics.mean(references)
    print(
        f"  {kind:10} {workers} serve: {r.rate:,.0f} msg/s end to end ({r.seconds:.1f} s); "
        f"smtp-source (8 sessions, reused, {size} B) {references[0]:,.0f} before, "
        f"{references[1]:,.0f} after: ratio {r.rate / reference:.3f}"
    )
    print(
        f"  {'':10} peak RSS {r.rss:.0f} MB (after start-up and 20 small sends "
        f"{r.rss_before:.0f} MB), release latency p50 {r.p50 * 1000:.0f} ms "
        f"p99 {r.p99 * 1000:.0f} ms, load average {os.getloadavg()[0]:.1f}"
    )
    if r.stacks:
        print(stage_table(r.stacks, r.sent, PROFILE_RATE))


if __name__ == "__main__":
    main()
