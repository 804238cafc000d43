"""Engines and migrations: SQLite by default (a file under ./data), PostgreSQL by URL.

``sqlite:///path`` and ``postgresql://…`` URLs are accepted as users write them and mapped to the
async drivers (aiosqlite, asyncpg). Driver and connection errors become ``StoreError`` here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import N_
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.store.quick import MIGRATIONS, head_revisions

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.ext.asyncio import AsyncEngine

DEFAULT_URL = "sqlite:///data/bzi-broadcast.sqlite3"


class StoreError(BroadcastError):
    """Die Datenbank ist nicht erreichbar."""


N_("Die Datenbank ist nicht erreichbar.")


def async_url(url: str) -> str:
    """Map a plain database URL to its async driver."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(_("ungültige Datenbank-URL „{url}“").format(url=_mask(url))) from None
    drivers = {
        "sqlite": "sqlite+aiosqlite",
        "postgresql": "postgresql+asyncpg",
        "postgres": "postgresql+asyncpg",
    }
    backend = parsed.get_backend_name()
    if backend not in drivers:
        message = _("nicht unterstützte Datenbank „{name}“ (erwartet sqlite oder postgresql)")
        raise StoreError(message.format(name=backend))
    return parsed.set(drivername=drivers[backend]).render_as_string(hide_password=False)


def _mask(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "***"


def create_engine(url: str = DEFAULT_URL, **options: Any) -> AsyncEngine:
    # Imported here: it brings SQLAlchemy's ORM along, which `sqlite_at_head` readers never need.
    from sqlalchemy.ext.asyncio import create_async_engine

    target = async_url(url)
    parsed = make_url(target)
    if parsed.get_backend_name() == "sqlite":
        _ensure_directory(parsed.database)
        engine = create_async_engine(target, connect_args={"timeout": 30}, **options)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(target, pool_size=10, max_overflow=10, pool_pre_ping=True, **options)


def _ensure_directory(database: str | None) -> None:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers (status, web) run beside the one writer; foreign keys are off by default."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def alembic_config() -> Config:
    # Alembic is imported where a migration runs: a database already at the head needs none of it
    # (``migrate`` checks that first), so the command line answers without loading it.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


async def migrate(engine: AsyncEngine) -> None:
    """Apply every pending migration; safe to run at each start and from several processes."""
    try:
        if await _at_head(engine):
            return
        if engine.dialect.name == "sqlite":
            await _upgrade_sqlite(engine)
        else:
            async with engine.begin() as connection:
                await connection.run_sync(_upgrade)
    except (OperationalError, DBAPIError, OSError) as exc:
        raise StoreError(
            _("Datenbank nicht erreichbar: {reason}").format(reason=_reason(exc))
        ) from None


async def _upgrade_sqlite(engine: AsyncEngine) -> None:
    """SQLite's way to rebuild a table (ALTER TABLE, "other kinds of table schema changes"):
    foreign keys off, outside the transaction, else dropping the old table deletes every row that
    refers to it; checked before the commit, and on again for the pooled connection."""
    async with engine.connect() as connection:
        await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        await connection.commit()
        try:
            async with connection.begin():
                await connection.run_sync(_upgrade)
                broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).first()
                if broken is not None:
                    raise StoreError(
                        _("Migration verletzt Fremdschlüssel in „{table}“").format(table=broken[0])
                    )
        finally:
            await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            await connection.commit()


def _upgrade(connection: Connection) -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":
        # Two replicas starting at once: the second waits here, then finds nothing to do.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7301001)")
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def is_current(engine: AsyncEngine) -> bool:
    """True when the database is at the newest migration (for readiness checks)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    async with engine.connect() as connection:
        current = await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_heads()
        )
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    return set(current) == set(heads)


async def _at_head(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        return await connection.run_sync(at_head)


def at_head(connection: Connection) -> bool:
    """True when the database's recorded revisions are the migration files' heads: nothing to do.
    A new database has no version table yet; the failed query only means "not at the head"."""
    try:
        rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version")
    except DBAPIError:
        return False
    return {row[0] for row in rows} == head_revisions()


def _reason(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return str(original).splitlines()[0] if str(original) else type(original).__name__
