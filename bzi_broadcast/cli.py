"""The ``bzi-broadcast`` command line: a sub-command per task; errors as messages, no tracebacks.

The parser imports no handler: each sub-command names its handler as ``module:function``, imported
only when that command runs, so ``--version``, ``--help`` and a mistyped option answer at once and
``status`` loads the database layer only (tests/test_cli_imports.py keeps it so).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bzi_broadcast import __version__
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.i18n import use_locale

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2

Command = Callable[[argparse.Namespace], int]
OPS = "bzi_broadcast.commands"


def lazy(module: str, name: str) -> Command:
    """The handler ``module.name``, imported when its command runs rather than when parsing."""

    def handler(args: argparse.Namespace) -> int:
        command: Command = getattr(importlib.import_module(module), name)
        return command(args)

    handler.__qualname__ = handler.__name__ = f"{module}.{name}"
    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bzi-broadcast",
        description=_("Eine Ankündigung einmal schreiben, auf allen Kanälen veröffentlichen."),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, help=_("Konfigurationsdatei (TOML)"))
    parser.add_argument("--templates", type=Path, help=_("Verzeichnis mit eigenen Vorlagen"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="BEFEHL")
    _add_preview(commands)
    _add_operations(commands)
    _add_dkim(commands)
    return parser


def _add_operations(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def add(name: str, handler: str, help_text: str, module: str = OPS) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--database", metavar="URL", help=_("Datenbank-URL (sonst aus der Konfiguration)")
        )
        sub.set_defaults(handler=lazy(module, handler))
        return sub

    add("migrate", "run_migrate", _("wendet die Datenbank-Migrationen an"))
    queue = add("queue", "run_queue", _("plant eine Ankündigung zum Versand ein"))
    queue.add_argument("file", type=Path, metavar="DATEI")
    when = queue.add_mutually_exclusive_group()
    when.add_argument(
        "--at", metavar="ISO8601", help=_("Sendezeitpunkt (sonst publish_at der Datei)")
    )
    when.add_argument("--now", action="store_true", help=_("sofort senden"))
    status = add("status", "run_status", _("zeigt den Versandstand"), "bzi_broadcast.status")
    status.add_argument("id", type=int, nargs="?", metavar="ID")
    status.add_argument("--json", action="store_true", help=_("maschinenlesbar als JSON ausgeben"))
    status.add_argument(
        "--once",
        action="store_true",
        help=_("nur einmal ausgeben, auch im Terminal (sonst live bis zum Ende)"),
    )
    cancel = add("cancel", "run_cancel", _("bricht eine Ankündigung ab"))
    cancel.add_argument("id", type=int, metavar="ID")
    retry = add("retry-failed", "run_retry_failed", _("reiht fehlgeschlagene Zustellungen neu ein"))
    retry.add_argument("id", type=int, metavar="ID")
    resume = add("resume", "run_resume", _("setzt einen pausierten Kanal fort"))
    resume.add_argument("channel", choices=("email", "mastodon", "telegram"))
    serve = add("serve", "run_serve", _("startet Webserver, Planer, Zustellung und Telegram-Bot"))
    serve.add_argument(
        "--demo",
        action="store_true",
        help=_(
            "Vorführung ohne Zugangsdaten: Daten unter ./data, lokale Mail-, Mastodon- und "
            "Telegram-Server, Beispiel-Ankündigung und Demo-Konten"
        ),
    )
    serve.add_argument(
        "--port", type=_port, metavar="PORT", help=_("Port des Webservers (sonst web.port)")
    )
    subscribers = commands.add_parser("subscribers", help=_("verwaltet Abonnent*innen"))
    sub_commands = subscribers.add_subparsers(dest="subcommand", required=True, metavar="BEFEHL")
    importer = sub_commands.add_parser(
        "import", help=_("importiert Abonnent*innen aus einer CSV-Datei")
    )
    importer.add_argument("file", type=Path, metavar="DATEI.csv")
    importer.add_argument("--database", metavar="URL")
    importer.add_argument(
        "--consent-proven",
        metavar=_("NOTIZ"),
        help=_(
            "die Einwilligung ist schon nachgewiesen (z. B. „unterschriebene Formulare im "
            "Ordner 2025“): keine Bestätigungsmail; die Notiz kommt in den Nachweis"
        ),
    )
    importer.set_defaults(handler=lazy(OPS, "run_import"))
    staff = commands.add_parser("users", help=_("verwaltet Konten der Mitarbeitenden"))
    staff_commands = staff.add_subparsers(dest="subcommand", required=True, metavar="BEFEHL")
    user_add = staff_commands.add_parser(
        "add",
        help=_("legt ein Konto an; das Passwort wird abgefragt (oder als erste Zeile gelesen)"),
    )
    user_add.add_argument("email", metavar="E-MAIL")
    user_add.add_argument("--name", required=True)
    user_add.add_argument("--role", choices=("editor", "publisher", "admin"), default="editor")
    user_add.add_argument("--language", choices=("de", "en"), default="de")
    user_add.add_argument("--database", metavar="URL")
    user_add.set_defaults(handler=lazy(OPS, "run_user_add"))
    user_token = staff_commands.add_parser(
        "token", help=_("legt einen Zugangsschlüssel für die REST-API an (einmal angezeigt)")
    )
    user_token.add_argument("email", metavar="E-MAIL")
    user_token.add_argument("--name", required=True, help=_("wofür der Schlüssel dient"))
    user_token.add_argument("--database", metavar="URL")
    user_token.set_defaults(handler=lazy(OPS, "run_user_token"))
    export = sub_commands.add_parser(
        "export", help=_("gibt alle Abonnent*innen als JSON-Zeilen aus (oder eine Person)")
    )
    export.add_argument("email", nargs="?", metavar="E-MAIL")
    export.add_argument("--database", metavar="URL")
    export.set_defaults(handler=lazy(OPS, "run_export"))
    proof = sub_commands.add_parser("proof", help=_("zeigt den Einwilligungsnachweis einer Person"))
    proof.add_argument("email", metavar="E-MAIL")
    proof.add_argument("--database", metavar="URL")
    proof.set_defaults(handler=lazy(OPS, "run_proof"))
    erase = sub_commands.add_parser(
        "erase", help=_("löscht eine Person (DSGVO); nur ein Schlüssel-Hash bleibt gesperrt")
    )
    erase.add_argument("email", metavar="E-MAIL")
    erase.add_argument("--database", metavar="URL")
    erase.set_defaults(handler=lazy(OPS, "run_erase"))


def _add_dkim(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dkim = commands.add_parser("dkim", help=_("DKIM: DNS-Einträge zeigen, Schlüssel erzeugen"))
    dkim_commands = dkim.add_subparsers(dest="subcommand", required=True, metavar="BEFEHL")
    record = dkim_commands.add_parser(
        "record", help=_("zeigt die DNS-TXT-Einträge der konfigurierten DKIM-Schlüssel")
    )
    record.set_defaults(handler=lazy("bzi_broadcast.dkim_record", "run_record"))
    keygen = dkim_commands.add_parser(
        "keygen", help=_("schreibt einen neuen privaten Schlüssel (Datei mit Rechten 0600)")
    )
    keygen.add_argument("file", type=Path, metavar="DATEI")
    keygen.add_argument("--ed25519", action="store_true", help=_("Ed25519 statt RSA mit 2048 Bit"))
    keygen.set_defaults(handler=lazy("bzi_broadcast.dkim_record", "run_keygen"))


def _add_preview(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    preview = commands.add_parser(
        "preview", help=_("zeigt, wie eine Ankündigung in jedem Kanal aussieht")
    )
    preview.add_argument("file", type=Path, metavar="DATEI")
    preview.add_argument(
        "--channel",
        choices=("email", "mastodon", "telegram", "all"),
        default="all",
        help=_("nur diesen Kanal zeigen"),
    )
    preview.add_argument("--json", action="store_true", help=_("maschinenlesbar als JSON ausgeben"))
    preview.add_argument(
        "--html",
        type=Path,
        metavar="AUSGABE.html",
        help=_("eine HTML-Seite mit allen Kanälen nebeneinander schreiben"),
    )
    preview.add_argument(
        "--mastodon-limit",
        type=_positive,
        default=500,
        metavar="N",
        help=_("Zeichenlimit der Mastodon-Instanz (Standard: 500)"),
    )
    preview.add_argument(
        "--url-length",
        type=_positive,
        default=23,
        metavar="N",
        help=_("so viele Zeichen zählt Mastodon je Link (Standard: 23)"),
    )
    preview.set_defaults(handler=lazy("bzi_broadcast.preview", "run_preview"))


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(
            _("„{value}“ ist keine positive ganze Zahl").format(value=value)
        )
    return number


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(
            _("„{value}“ ist kein Port (0 bis 65535)").format(value=value)
        )
    return number


def main(argv: Sequence[str] | None = None) -> int:
    # pydantic looks for plugins in every installed distribution's entry points when it builds
    # the first model: 20–40 ms of every command (bench/cli.py), for plugins this project never uses
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    with use_locale(os.environ.get("BZI_LANG", "de")):
        return _run(argv)


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # --version, --help and usage errors have ended above; logging and the error classes (with
    # their dataclasses) are imported only for a command that runs: half of what --version loaded.
    import logging

    from bzi_broadcast.errors import BroadcastError, ConfigError, ContentError, TemplateError

    logging.basicConfig(level=os.environ.get("BZI_LOG_LEVEL", "WARNING"))
    # httpx logs each request's URL, and a Bot API URL carries the bot's token
    logging.getLogger("httpx").setLevel(logging.WARNING)
    handler: Command = args.handler
    try:
        return handler(args)
    except (ContentError, TemplateError, ConfigError) as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_BAD_INPUT
    except BroadcastError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(_("Abgebrochen."), file=sys.stderr)
        return 130
