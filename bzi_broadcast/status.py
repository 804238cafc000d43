"""``bzi-broadcast status``: each announcement's deliveries per channel, printed once (text or
JSON), or for one announcement in a terminal a live progress bar until it is finished.

Run in loops by scripts and monitoring, so it starts light: the settings and ``store.overview``.
A SQLite file at the newest migration is read with the standard library's driver
(``store.quick``), without SQLAlchemy; PostgreSQL, a database to migrate first and the live view go
through the engine. No content, rendering, staff, web or channel module (tests/test_cli_imports.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from bzi_broadcast.config import settings_of
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.store import quick
from bzi_broadcast.store.overview import Execute, on_connection, overview

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")


def run_status(args: argparse.Namespace) -> int:
    """Every announcement, or the one with ``args.id``; JSON with ``--json``."""
    if sys.stdout.isatty() and args.id is not None and not (args.json or args.once):
        return _watch(args)
    rows = _read(args, lambda execute: overview(execute, args.id))
    if args.json:
        json.dump(rows if args.id is None else rows[0], sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        for row in rows:
            _print_status(row)
    return 0


def _read(args: argparse.Namespace, read: Callable[[Execute], T]) -> T:
    """``read`` on the configured database: a SQLite file at the newest migration straight away;
    anything else through ``commands.with_engine`` (migrated first, errors reported as ever)."""
    connection = quick.sqlite_at_head(settings_of(args).database.url)
    if connection is None:
        from bzi_broadcast.commands import with_engine

        return with_engine(args, lambda engine: _read_async(engine, read))
    try:
        return read(connection.execute)
    finally:
        connection.close()


async def _read_async(engine: AsyncEngine, read: Callable[[Execute], T]) -> T:
    """``read`` on one of ``engine``'s connections (SQLAlchemy runs it in a greenlet)."""
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: read(on_connection(sync)))


def _print_status(row: dict[str, Any]) -> None:
    print(
        f"#{row['id']} {row['title']} — {row['status']}"
        + (f" ({row['publish_at']})" if row["publish_at"] else "")
    )
    for name, c in row["channels"].items():
        paused = (
            " " + _("[pausiert: {reason}]").format(reason=c["pause_reason"]) if c["paused"] else ""
        )
        print(
            "  "
            + _(
                "{channel}: {queued} wartend, {sending} in Arbeit, {sent} gesendet, "
                "{failed} fehlgeschlagen"
            ).format(channel=name, **c)
            + paused
        )
    reports = row.get("reports") or {}
    if any(reports.values()):  # read back from the bounce mailbox (bzi_broadcast/bounces)
        print(
            "  "
            + _(
                "Rückmeldungen: {hard} unzustellbar, {soft} vorübergehend unzustellbar, "
                "{complaint} Beschwerden"
            ).format(**reports)
        )


def _watch(args: argparse.Namespace) -> int:
    """A live progress bar with rate and ETA until the announcement finishes (Ctrl-C ends)."""

    import asyncio  # only here: the one-shot read needs no event loop on SQLite

    async def loop(engine: AsyncEngine) -> None:
        start, first_sent = time.monotonic(), None
        while True:
            row = (await _read_async(engine, lambda execute: overview(execute, args.id)))[0]
            totals = list(row["channels"].values())
            total = sum(c["total"] for c in totals)
            done = sum(c["sent"] + c["failed"] + c["cancelled"] for c in totals)
            first_sent = done if first_sent is None else first_sent
            rate = (done - first_sent) / max(0.001, time.monotonic() - start)
            eta = (total - done) / rate if rate > 0 else float("inf")
            sys.stdout.write(
                "\r"
                + _bar(done, total)
                + _(" {rate:.0f}/s, noch {eta}").format(rate=rate, eta=_duration(eta))
                + "   "
            )
            sys.stdout.flush()
            if row["status"] not in ("scheduled", "sending"):
                sys.stdout.write("\n")
                _print_status(row)
                return
            await asyncio.sleep(1)

    from bzi_broadcast.commands import with_engine

    with_engine(args, loop)
    return 0


def _bar(done: int, total: int, width: int = 30) -> str:
    share = done / total if total else 0.0
    filled = int(share * width)
    return f"[{'█' * filled}{'·' * (width - filled)}] {done}/{total} ({share:.0%})"


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d} min"
