"""The command line's fast paths stay light: the parser, ``--version`` and ``--help`` import no
heavy library, and ``status`` only the database layer, with unchanged output.

Each command runs in a fresh interpreter that records ``sys.modules`` when it exits; what is
asserted is which modules were loaded, never how long it took (that is bench/cli.py's job).
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.delivery import control
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.delivery.outbox import Outbox
from bzi_broadcast.delivery.release import release
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.engine import create_engine, is_current
from bzi_broadcast.store.quick import head_revisions

from .test_delivery import example_announcement
from .test_store import add_subscribers

# Libraries none of the fast paths needs: the web stack, the channel clients, rendering, Babel
# (German needs no catalog), the database layer, the content model's parsers, password hashing.
HEAVY = frozenset(
    {
        "aiohttp",
        "telegram",
        "mastodon",
        "jinja2",
        "css_inline",
        "babel",
        "sqlalchemy",
        "alembic",
        "pydantic",
        "aiosqlite",
        "asyncpg",
        "yaml",
        "markdown_it",
        "argon2",
        "apscheduler",
        "aiosmtplib",
        "httpx",
        "PIL",
    }
)
# `status` reads settings (pydantic) and rows (SQLAlchemy and the driver), nothing more: no
# migration tool when the database is at the head, no content model, no web or channel module.
STATUS_FORBIDDEN = HEAVY - {"sqlalchemy", "pydantic", "aiosqlite", "asyncpg"}
STATUS_FORBIDDEN_OWN = ("content", "render", "channels", "web", "staff", "subscribers", "service")
# A SQLite file at the head is read with the standard library's driver alone: no SQLAlchemy,
# no aiosqlite, no greenlet (store/quick.py).
SQLITE_STATUS_FORBIDDEN = ("sqlalchemy", "aiosqlite", "greenlet")

# Runs the real command (``python -m bzi_broadcast …``) and writes the loaded modules at exit,
# which also comes after argparse's SystemExit for --version and --help.
WATCHED = """
import atexit, json, os, runpy, sys

def report():
    with open(os.environ["BZI_TEST_MODULES"], "w", encoding="utf-8") as out:
        json.dump(sorted(sys.modules), out)

atexit.register(report)
sys.argv = ["bzi-broadcast", *sys.argv[1:]]
runpy.run_module("bzi_broadcast", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Watched:
    returncode: int
    stdout: str
    stderr: str
    modules: frozenset[str]

    def loaded(self, roots: frozenset[str]) -> set[str]:
        """The top-level packages of ``roots`` that the command imported."""
        return {name.split(".")[0] for name in self.modules} & roots


def run_watched(tmp_path: Path, *args: str, database_url: str | None = None) -> Watched:
    modules = tmp_path / "modules.json"
    modules.unlink(missing_ok=True)
    env = {**os.environ, "BZI_TEST_MODULES": str(modules)}
    if database_url is not None:
        env["BZI_DATABASE_URL"] = database_url
    result = subprocess.run(
        [sys.executable, "-c", WATCHED, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    loaded = frozenset(json.loads(modules.read_text(encoding="utf-8")))
    return Watched(result.returncode, result.stdout, result.stderr, loaded)


def test_building_the_parser_imports_no_handler_and_no_heavy_library() -> None:
    code = (
        "import json, sys\n"
        "from bzi_broadcast import cli\n"
        "cli.build_parser()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    modules = set(json.loads(result.stdout))
    assert {name.split(".")[0] for name in modules} & HEAVY == set()
    assert not {"bzi_broadcast.commands", "bzi_broadcast.preview", "bzi_broadcast.config"} & modules


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--version",), "bzi-broadcast 0.1.0"),
        (("--help",), "Eine Ankündigung einmal schreiben"),
        (("status", "--help"), "maschinenlesbar als JSON ausgeben"),
        (("preview", "--help"), "Zeichenlimit der Mastodon-Instanz"),
    ],
)
def test_version_and_help_import_no_heavy_library(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    result = run_watched(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert result.loaded(HEAVY) == set()


def test_a_wrong_option_is_refused_before_any_handler_is_imported(tmp_path: Path) -> None:
    result = run_watched(tmp_path, "status", "--jsn")
    assert result.returncode == 2
    assert "--jsn" in result.stderr
    assert result.loaded(HEAVY) == set()


@dataclass(frozen=True)
class StatusDatabase:
    url: str
    sending: int
    draft: int


@pytest.fixture
async def status_database(engine: AsyncEngine, database_url: str) -> StatusDatabase:
    """One announcement released to three subscribers (one delivery claimed), the email channel
    paused with a reason, and a draft: every field ``status`` shows has a value."""
    await add_subscribers(engine, 3)
    store = Announcements(engine)
    publish_at = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
    sending = await store.create(
        example_announcement(), actor="test", status=S.SCHEDULED, publish_at=publish_at
    )
    assert await release(engine, sending) is not None
    worker = Outbox(engine, worker_id="test", lease=timedelta(minutes=5))
    assert len(await worker.claim("email", 1)) == 1
    await control.set_paused(engine, "email", True, "zu viele Fehler")
    draft = await store.create(example_announcement(title="Entwurf"), actor="test")
    return StatusDatabase(url=database_url, sending=sending, draft=draft)


def expected_status(db: StatusDatabase) -> list[dict[str, object]]:
    email = {"queued": 2, "sending": 1, "sent": 0, "failed": 0, "cancelled": 0, "total": 3}
    return [
        {
            "id": db.sending,
            "title": "Newsletter „Test“ ä",
            "status": "sending",
            "publish_at": "2025-01-01T09:00:00+00:00",
            "channels": {"email": {**email, "paused": True, "pause_reason": "zu viele Fehler"}},
            "reports": {"hard": 0, "soft": 0, "complaint": 0},
        },
        {
            "id": db.draft,
            "title": "Entwurf",
            "status": "draft",
            "publish_at": None,
            "channels": {},
            "reports": {"hard": 0, "soft": 0, "complaint": 0},
        },
    ]


def assert_database_layer_only(result: Watched, url: str) -> None:
    assert result.loaded(STATUS_FORBIDDEN) == set()
    own = {name.split(".")[1] for name in result.modules if name.startswith("bzi_broadcast.")}
    assert own.isdisjoint(STATUS_FORBIDDEN_OWN), own
    if url.startswith("sqlite"):
        assert result.modules.isdisjoint(SQLITE_STATUS_FORBIDDEN)
        assert "sqlite3" in result.modules  # it did read the database
    else:
        assert "sqlalchemy" in result.loaded(HEAVY)


async def test_status_json_reads_the_database_with_the_database_layer_only(
    status_database: StatusDatabase, tmp_path: Path
) -> None:
    every = run_watched(tmp_path, "status", "--json", database_url=status_database.url)
    assert every.returncode == 0, every.stderr
    assert json.loads(every.stdout) == expected_status(status_database)
    assert_database_layer_only(every, status_database.url)
    one = run_watched(
        tmp_path, "status", str(status_database.draft), "--json", database_url=status_database.url
    )
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == expected_status(status_database)[1]
    assert_database_layer_only(one, status_database.url)


async def test_status_text_is_unchanged_and_as_light(
    status_database: StatusDatabase, tmp_path: Path
) -> None:
    result = run_watched(tmp_path, "status", database_url=status_database.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"#{status_database.sending} Newsletter „Test“ ä — sending (2025-01-01T09:00:00+00:00)",
        "  email: 2 wartend, 1 in Arbeit, 0 gesendet, 0 fehlgeschlagen [pausiert: zu viele Fehler]",
        f"#{status_database.draft} Entwurf — draft",
    ]
    assert_database_layer_only(result, status_database.url)


async def test_the_live_view_in_a_terminal_ends_with_a_finished_announcement(
    status_database: StatusDatabase, tmp_path: Path
) -> None:
    """``status ID`` in a terminal shows a progress bar until the announcement is no longer
    scheduled or sending; a draft is shown once, bar and status line, and the command ends."""
    main, terminal = pty.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "bzi_broadcast", "status", str(status_database.draft)],
            stdout=terminal,
            stderr=subprocess.PIPE,
            env={**os.environ, "BZI_DATABASE_URL": status_database.url},
            cwd=tmp_path,
            timeout=120,
        )
        os.close(terminal)
        screen = _read_all(main)
    finally:
        os.close(main)
    assert process.returncode == 0, process.stderr
    assert screen.replace("\r\n", "\n").split("\r")[-1].splitlines() == [
        f"[{'·' * 30}] 0/0 (0%) 0/s, noch –   ",
        f"#{status_database.draft} Entwurf — draft",
    ]


def _read_all(fd: int) -> str:
    """Everything written to the terminal whose other end ``fd`` is (its writer has exited)."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the writing side is closed and all is read
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8")


async def test_status_of_a_new_database_still_migrates_it(tmp_path: Path) -> None:
    """The fast path skips the migration tool only for a database at the head: a new one is
    created and migrated as before (alembic is loaded for that)."""
    url = f"sqlite:///{tmp_path / 'new' / 'bzi.sqlite3'}"
    result = run_watched(tmp_path, "status", "--json", database_url=url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert "alembic" in result.modules
    engine = create_engine(url)
    try:
        assert await is_current(engine)
    finally:
        await engine.dispose()


def test_head_revisions_read_from_the_files_are_alembics_heads() -> None:
    from alembic.script import ScriptDirectory

    from bzi_broadcast.store.engine import alembic_config

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert head_revisions() == set(heads)
    assert heads  # there are migrations at all
