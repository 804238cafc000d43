"""Shared fixtures: the seed example, a renderer with fixed organisation settings."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.config import Organisation, RenderSettings
from bzi_broadcast.content import Announcement, load_announcement

if TYPE_CHECKING:
    from bzi_broadcast.render import Renderer

ROOT = Path(__file__).resolve().parents[1]
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
