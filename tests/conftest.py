"""Shared fixtures: the seed example, a renderer with fixed organisation settings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
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

# The slowest tests, slowest first (from `make unit`'s list of durations). They start first, so
# that the two xdist workers end together (longest first packs best); one started near the end
# keeps one worker busy while the other has nothing left. `make unit` hands out one test at a
# time (--maxschedchunk 1): xdist's default chunks would give all of these to one worker.
# Keep this list in step with the durations.
SLOWEST_FIRST = [
    "test_scale_out.py::test_two_processes_share_a_10k_send_and_one_stops_mid_send",
    "test_browser_workspace.py::test_write_preview_approve_schedule_deliver_and_retry",
    "test_replica_stress.py::test_two_replicas_stay_consistent_under_cancel_retry_and_pause",
    "test_reliability.py::test_sigkill_mid_send_loses_nothing",
    "test_operations.py::test_queue_status_cancel_through_the_cli",
    "test_operations.py::test_serve_refuses_to_start_without_a_mail_server",
    "test_operations.py::test_cli_refuses_bad_input_without_traceback",
    "test_shared_limits.py::test_three_replicas_keep_telegrams_limits_together",
    "test_recovery.py::test_a_replica_takes_over_the_claims_of_one_killed",
    "test_hostile_inputs.py::test_the_api_holds_to_its_openapi_document",
    "test_operations.py::test_sigterm_finishes_or_hands_back_sends_in_flight",
    "test_reliability.py::test_sigkill_between_two_parts_of_a_mastodon_thread_continues_it",
    "test_container.py::test_the_image_command_runs_from_the_installed_wheel",
    "test_login_throttle.py::test_a_lockout_doubles_up_to_the_cap_and_an_admin_lifts_it",
    "test_operations.py::test_csv_import_reports_lines_and_imports_the_good_ones",
    "test_api_schema.py::test_schemathesis_finds_no_server_error_and_no_undocumented_answer",
    "test_demo.py::test_demo_sends_the_example_to_every_local_server",
    "test_shared_limits.py::test_two_announcements_to_the_same_chats_from_two_replicas_keep_one_per",
    "test_gdpr.py::test_export_then_erase_keeps_only_the_hash",
    "test_mastodon_mock_e2e.py::test_serve_posts_the_example_to_mastodon_mock_as_one_chain",
    "test_recovery.py::test_a_restart_after_kill_9_sends_the_rest_in_seconds",
]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests of SLOWEST_FIRST first, in its order; the rest as collected (a stable sort, the
    same on every xdist worker)."""

    def rank(item: pytest.Item) -> int:
        name = f"{item.path.name}::{item.name.split('[', 1)[0]}"
        return next(
            (i for i, slow in enumerate(SLOWEST_FIRST) if name.startswith(slow)), len(SLOWEST_FIRST)
        )

    items.sort(key=rank)


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


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, built once per worker: each test's database starts as a copy
    (a file copy takes milliseconds; the migrations, run for every test, took 0.2–0.3 s each)."""
    from bzi_broadcast.store.engine import create_engine, migrate

    path = tmp_path_factory.mktemp("template") / "migrated.sqlite3"

    async def build() -> None:
        engine = create_engine(f"sqlite:///{path}")
        await migrate(engine)
        await engine.dispose()

    asyncio.run(build())
    return path


@pytest.fixture
async def engine(database_url: str, sqlite_template: Path) -> AsyncIterator[AsyncEngine]:
    """A migrated, empty database."""
    from bzi_broadcast.store.engine import create_engine, migrate
    from bzi_broadcast.store.schema import metadata

    sqlite_file = Path(database_url.removeprefix("sqlite:///"))
    if database_url.startswith("sqlite:///") and not sqlite_file.exists():
        shutil.copyfile(sqlite_template, sqlite_file)
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
