"""A SQLite file opened the quickest way, for short commands such as ``status``: the standard
library's driver, and only when the file is at the newest migration.

Such a command would otherwise spend most of its life importing SQLAlchemy (about a third of a
second on this project's 2-core machines, bench/cli.py). This module imports nothing beyond the
standard library; anything it cannot answer (PostgreSQL, a missing file, one that needs
migrating) goes the usual way through ``store.engine``, which reports errors as ever.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
# sqlite:///relative/file.sqlite3 or sqlite:////absolute/file.sqlite3, with any driver; a URL with
# query options (?mode=…) is left to SQLAlchemy, which knows them.
_SQLITE_URL = re.compile(r"sqlite(?:\+\w+)?:///([^?#]+)")
_REVISION = re.compile(r"^revision\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)
_QUOTED = re.compile(r"""["']([^"']+)["']""")


def sqlite_at_head(url: str) -> sqlite3.Connection | None:
    """A connection to the SQLite file of ``url`` if it exists and is at the newest migration;
    None for anything else (the caller then takes the usual way)."""
    match = _SQLITE_URL.fullmatch(url)
    if match is None or not Path(match.group(1)).is_file():
        return None
    try:
        connection = sqlite3.connect(match.group(1), timeout=30)
    except sqlite3.Error:
        return None
    try:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        if {row[0] for row in rows} == head_revisions():
            return connection
    except sqlite3.Error:
        pass  # no version table yet, or not a database: not at the head
    connection.close()
    return None


def head_revisions() -> set[str]:
    """The newest revisions, read from the migration files' ``revision`` and ``down_revision``
    lines (as alembic's script template writes them) without importing alembic: a revision no
    other one revises. tests/test_cli_imports.py holds this to alembic's own answer."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("*.py"):
        text = script.read_text(encoding="utf-8")
        revision = _REVISION.search(text)
        if revision is None:
            continue
        revisions.update(_QUOTED.findall(revision.group(1)))
        down = _DOWN_REVISION.search(text)
        revised.update(_QUOTED.findall(down.group(1)) if down else ())
    return revisions - revised
