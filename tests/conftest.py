"""Shared fixtures: the seed example, a renderer with fixed organisation settings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.config import Organisation, RenderSettings
from bzi_broadcast.content import Announcement, load_announcement
from bzi_broadcast.testing.mastodon import MastodonServer

if TYPE_CHECKING:
    from bzi_broadcast.render import Renderer

ROOT = Path(__file__).resolve().parents[1]
TEST_SECRET_KEY = "test-secret-key-of-the-test-suite-0123456789"
# `serve`, `queue` and `subscribers import` refuse to start without a key: the commands the tests
# start inherit this one (the tests of a missing key start theirs without any BZI_ variable).
os.environ.setdefault("BZI_SECURITY_SECRET_KEY", TEST_SECRET_KEY)
# The suite's services answer on http://127.0.0.1: a test setup, said explicitly as operators
# would (serve and queue refuse such a public_url otherwise; tests/test_security_config.py).
os.environ.setdefault("BZI_EMAIL_ALLOW_INSECURE_PUBLIC_URL", "true")
EXAMPLE = ROOT / "config" / "examples" / "weltoffene-kommunen.yaml"
ARTIFACTS = ROOT / "artifacts"
IN_CI = os.environ.get("CI", "").lower() == "true"

TEST_ORGANISATION = Organisation(
    name="Bundeszuwanderungs- und Integrationsrat (BZI)",
    short_name="BZI",
    website="https://bzi.example.org",
    impressum="Bundeszuwanderungs- und Integrationsrat (BZI)\nMusterstraße 1, 10115 Berlin",
    privacy_url="https://bzi.example.org/datenschutz",
    feed_domain="bzi.example.org",
)


@pytest.fixture(scope="session")
def example() -> Announcement:
    return load_announcement(EXAMPLE)


@pytest.fixture(scope="session")
def renderer() -> Renderer:
    from bzi_broadcast.render import Renderer

    return Renderer(RenderSettings(organisation=TEST_ORGANISATION))


def require_or_skip(available: bool, what: str) -> None:
    """Skip a test whose external part is missing, except under CI, where that is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required when CI=true")
    pytest.skip(f"{what} not available")


# --- databases: every storage and delivery test runs on SQLite and on PostgreSQL ---------------

PG_ADMIN_URL = os.environ.get("BZI_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_available() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    require_or_skip(_postgres_available(), "PostgreSQL at 127.0.0.1:5432")
    import asyncpg

    name = f"bzi_test_{os.getpid()}"
    admin = PG_ADMIN_URL

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    yield admin.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite3'}"
    url: str = request.getfixturevalue("pg_database_url")
    return url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated, empty database."""
    from bzi_broadcast.store.engine import create_engine, migrate
    from bzi_broadcast.store.schema import metadata

    engine = create_engine(database_url)
    await migrate(engine)
    async with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(table.delete())
    yield engine
    await engine.dispose()


# --- mastodon-mock: a Mastodon API server nobody on this project wrote -------------------------

MASTODON_MOCK_TOKEN = "mock_token"  # the token mastodon-mock seeds for its user "testuser"


@pytest.fixture
async def mastodon_mock(tmp_path: Path) -> AsyncIterator[str]:
    """``mastodon-mock`` for one test; yields its base URL (see :func:`run_mastodon_mock`)."""
    async with run_mastodon_mock(tmp_path / "mastodon-mock") as base:
        yield base


@contextlib.asynccontextmanager
async def run_mastodon_mock(workdir: Path) -> AsyncIterator[str]:
    """``mastodon-mock`` (pinned in the dev dependencies) run unmodified as a subprocess on a free
    port, with its in-memory SQLite store; yields its base URL and kills it at the end.

    Run from an empty directory so it reads no configuration file (it would look for
    ``.mastodon_mock.toml`` or ``[tool.mastodon_mock]`` in ``pyproject.toml``): its defaults seed
    the account "testuser" with the token ``mock_token`` and enable fault injection.
    """
    import socket
    import sys

    import aiohttp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / "server.log").open("wb")
    command = [sys.executable, "-m", "mastodon_mock", "serve", "--in-memory"]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"mastodon-mock exited: {(workdir / 'server.log').read_text()}")
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{base}/api/v1/instance") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    try:
        async with asyncio.timeout(60):
            while not await ready():
                await asyncio.sleep(0.1)
        yield base
    finally:
        stop_process(process)
        log.close()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL after 10 s: a server a fixture started ends with its test."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
async def mastodon_api() -> AsyncIterator[tuple[MastodonServer, str]]:
    """Our local Mastodon API server (bzi_broadcast.testing.mastodon), token "secret"."""
    from aiohttp.test_utils import TestServer

    api = MastodonServer(token="secret", processing_seconds=0.05)
    http = TestServer(api.app(), host="127.0.0.1")
    await http.start_server()
    yield api, f"http://127.0.0.1:{http.port}"
    await http.close()
