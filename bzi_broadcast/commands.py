"""The operational sub-commands: migrate, queue, cancel, retry-failed, resume, serve, subscribers
and users (``status`` is in status.py). Each opens the configured database, does one thing, and
prints the result.

Only the settings and the database engine are imported with this module; every handler imports
what else it needs itself, so a command loads its own modules only (tests/test_cli_imports.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bzi_broadcast.config import settings_of
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.i18n import ngettext
from bzi_broadcast.store.engine import create_engine, migrate

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from bzi_broadcast.staff.permissions import Operator

T = TypeVar("T")
ACTOR = "cli"
CSV_MAX_BYTES = 8 * 1024 * 1024  # as much as the API's import takes


def with_engine(args: argparse.Namespace, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_engine(settings_of(args).database.url)
        try:
            await migrate(engine)
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def run_migrate(args: argparse.Namespace) -> int:
    with_engine(args, lambda engine: asyncio.sleep(0))
    print(_("Datenbank ist auf dem neuesten Stand."))
    return 0


def run_queue(args: argparse.Namespace) -> int:
    from bzi_broadcast.content import load_announcement
    from bzi_broadcast.delivery import control
    from bzi_broadcast.staff import media
    from bzi_broadcast.store.announcements import Announcements

    announcement = load_announcement(args.file)
    at = _parse_time(args.at) if args.at else None
    if args.now:
        at = datetime.now().astimezone()
    public_url = settings_of(args, signing=True, public=True).email.public_url

    async def work(engine: AsyncEngine) -> int:
        # The image file is read now, beside the announcement file, and stored like an upload:
        # the service that sends it later may run anywhere, in any directory.
        stored = await media.adopt_file_image(
            engine, announcement, file=args.file, public_url=public_url
        )
        return await control.queue(
            Announcements(engine), stored, at=at, actor=ACTOR, allow_past=args.now
        )

    print(with_engine(args, work))
    return 0


def _parse_time(value: str) -> datetime:
    from bzi_broadcast.content.model import localize

    try:
        return localize(datetime.fromisoformat(value))
    except ValueError:
        raise BroadcastError(
            _("--at: „{value}“ ist kein Zeitpunkt (ISO 8601, z. B. 2025-11-10T10:00)").format(
                value=value
            )
        ) from None


def run_cancel(args: argparse.Namespace) -> int:
    """Through the workflow, as the operator: checked, audited, and waiting (at most one lease)
    for the sends in flight, so the numbers printed are the ones stored."""
    from bzi_broadcast.staff import workflow

    lease = settings_of(args).delivery.lease_seconds
    report = with_engine(args, lambda e: workflow.cancel(e, args.id, _operator(), settle=lease))
    print(
        _("Ankündigung {id} abgebrochen: {summary}.").format(id=args.id, summary=report.summary())
    )
    return 0


def run_retry_failed(args: argparse.Namespace) -> int:
    from bzi_broadcast.staff import workflow

    count = with_engine(args, lambda e: workflow.retry_failed(e, args.id, _operator()))
    print(
        ngettext(
            "{n} fehlgeschlagene Zustellung erneut eingereiht.",
            "{n} fehlgeschlagene Zustellungen erneut eingereiht.",
            count,
        ).format(n=count)
    )
    return 0


def _operator() -> Operator:
    """Who runs the command line on the server, named in the audit log."""
    import getpass

    from bzi_broadcast.staff.permissions import Operator

    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (e.g. in a container)
        name = "cli"
    return Operator(name=name)


def run_resume(args: argparse.Namespace) -> int:
    from bzi_broadcast.delivery import control

    with_engine(args, lambda e: control.set_paused(e, args.channel, False, None))
    print(_("Kanal {channel} läuft wieder.").format(channel=args.channel))
    return 0


def run_import(args: argparse.Namespace) -> int:
    import csv

    from bzi_broadcast.files import FileRefused
    from bzi_broadcast.subscribers.store import ImportOptions, ImportReport, import_lines, parse_csv

    report = ImportReport()
    try:
        lines = list(parse_csv(_read_csv(Path(args.file)), report))
    except (FileRefused, csv.Error) as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2  # bad input, as for an announcement file (cli.EXIT_BAD_INPUT)
    settings = settings_of(args, signing=True)
    key = settings.security.signing_key()
    options = ImportOptions(
        consent_proven=args.consent_proven,
        file_name=args.file.name,
        consent_version=settings.subscribers.consent_version,
    )
    with_engine(args, lambda e: import_lines(e, lines, report, key, options))
    for line, problem in sorted(report.problems):
        print(_("Zeile {line}: {problem}").format(line=line, problem=problem), file=sys.stderr)
    imported = ngettext("{n} Person importiert", "{n} Personen importiert", report.imported).format(
        n=report.imported
    )
    skipped = ngettext(
        "{m} Zeile übersprungen", "{m} Zeilen übersprungen", len(report.problems)
    ).format(m=len(report.problems))
    print(f"{imported}, {skipped}.")
    return 1 if report.problems else 0


def _read_csv(path: Path) -> str:
    """The file's text: a regular file of at most 8 MB (as the API takes), in UTF-8."""
    from bzi_broadcast.files import FileRefused, read_capped

    raw = read_capped(path, CSV_MAX_BYTES)
    if len(raw) > CSV_MAX_BYTES:
        raise FileRefused(_("die Datei ist größer als 8 MB"))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = _("die Datei ist nicht UTF-8-kodiert (Byte {offset})")
        raise FileRefused(message.format(offset=exc.start)) from None


def run_user_add(args: argparse.Namespace) -> int:
    """The password from the terminal (asked twice), or the first line of standard input."""
    import getpass

    from bzi_broadcast.staff.accounts import Role, add_user

    if sys.stdin.isatty():
        password = getpass.getpass(_("Passwort: "))
        if getpass.getpass(_("Passwort wiederholen: ")) != password:
            print(_("Die Passwörter stimmen nicht überein."), file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")

    async def work(engine: AsyncEngine) -> int:
        return await add_user(
            engine,
            email=args.email,
            name=args.name,
            role=Role(args.role),
            password=password,
            language=args.language,
        )

    with_engine(args, work)
    print(_("Konto {email} ({role}) angelegt.").format(email=args.email, role=args.role))
    return 0


def run_user_token(args: argparse.Namespace) -> int:
    """A bearer token for the REST API, printed once (only its hash is kept)."""
    from bzi_broadcast.staff.accounts import create_api_token, user_by_email

    async def work(engine: AsyncEngine) -> str | None:
        user = await user_by_email(engine, args.email)
        return None if user is None else await create_api_token(engine, user, args.name)

    token = with_engine(args, work)
    if token is None:
        print(
            _("Es gibt kein Konto mit der Adresse {email}.").format(email=args.email),
            file=sys.stderr,
        )
        return 1
    print(token)
    return 0


def run_export(args: argparse.Namespace) -> int:
    """One JSON object per line (all subscribers), or everything held about one person."""
    from bzi_broadcast.subscribers import gdpr

    async def work(engine: AsyncEngine) -> int:
        if args.email:
            data = await gdpr.export_subscriber(engine, args.email)
            if data is None:
                return _unknown(args.email)
            json.dump(data, sys.stdout, ensure_ascii=False, indent=2)
            sys.stdout.write("\n")
            return 0
        async for row in gdpr.export_all(engine):
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return 0

    return with_engine(args, work)


def run_proof(args: argparse.Namespace) -> int:
    from bzi_broadcast.subscribers import gdpr

    async def work(engine: AsyncEngine) -> int:
        data = await gdpr.export_subscriber(engine, args.email)
        if data is None:
            return _unknown(args.email)
        print(
            _("Einwilligungsnachweis für {email} (Status: {status})").format(
                email=data["email"], status=data["status"]
            )
        )
        for event in data["consent"]:
            details = ", ".join(
                f"{name}={value}"
                for name, value in (
                    ("channel", event["channel"]),
                    ("source", event["source"]),
                    ("ip", event["ip"]),
                    ("consent_version", event["consent_version"]),
                )
                if value
            )
            extra = json.dumps(event["detail"], ensure_ascii=False) if event["detail"] else ""
            print(f"  {event['at']}  {event['event']:<20} {details} {extra}".rstrip())
        return 0

    return with_engine(args, work)


def run_erase(args: argparse.Namespace) -> int:
    from bzi_broadcast.subscribers import gdpr

    key = settings_of(args, signing=True).security.signing_key()
    if not with_engine(args, lambda engine: gdpr.erase(engine, args.email, key)):
        return _unknown(args.email)
    print(
        _("{email} gelöscht; die Adresse bleibt als Schlüssel-Hash gesperrt.").format(
            email=args.email
        )
    )
    return 0


def _unknown(email: str) -> int:
    print(
        _("Keine Abonnentin und kein Abonnent mit der Adresse {email}.").format(email=email),
        file=sys.stderr,
    )
    return 1


def run_serve(args: argparse.Namespace) -> int:
    from bzi_broadcast import logs

    # the demo makes its own key and serves its links from http://127.0.0.1
    settings = settings_of(args, signing=not args.demo, public=not args.demo)
    from bzi_broadcast.service import Service  # big (the web app): only once the settings hold

    if args.demo:
        from bzi_broadcast.demo import run_demo

        run_fast(run_demo(settings, args.port, args.database))
        return 0
    if args.port is not None:
        settings = settings.model_copy(
            update={"web": settings.web.model_copy(update={"port": args.port})}
        )
    logs.configure(settings.logging, settings.secrets())

    async def main() -> None:
        service = Service(settings)
        service.install_signal_handlers()
        await service.run()

    run_fast(main())
    return 0


def run_fast(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where installed (it is a dependency on Linux): faster sockets for the SMTP pool."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
