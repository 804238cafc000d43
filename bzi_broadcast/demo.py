"""``bzi-broadcast serve --demo``: the whole pipeline on one machine, without any credentials.

The service runs as in production, but its channels point at the shipped local servers
(``bzi_broadcast.testing``): an SMTP capture, a Mastodon API and a Telegram Bot API, all in this
process. SQLite lives under ``./data``. On the first start the example announcement becomes a
draft, three staff accounts (editor, publisher, admin: four eyes can be shown) and a few
confirmed subscribers are created; their passwords and the signing key stay in
``./data/demo.json``, so a restart prints the same logins and duplicates nothing. The page
``/demo`` shows what the local servers received, and its button sends the example the way staff
would: submitted by the editor, approved and scheduled by the publisher, a few seconds ahead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast import logs
from bzi_broadcast.config import Settings
from bzi_broadcast.content import load_announcement
from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
from bzi_broadcast.errors import BroadcastError, NotFoundError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff import workflow
from bzi_broadcast.staff.accounts import Role, User, add_user, user_by_email
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.engine import migrate
from bzi_broadcast.subscribers.bot_store import BotSubscribers
from bzi_broadcast.subscribers.store import ImportLine, ImportOptions, ImportReport, import_lines
from bzi_broadcast.testing.mastodon import MastodonServer
from bzi_broadcast.testing.telegram import TelegramServer

if TYPE_CHECKING:
    from bzi_broadcast.testing.smtp import SmtpCapture

log = logging.getLogger(__name__)

S = AnnouncementStatus
DATA_DIR = Path("data")
STATE_FILE = "demo.json"
DATABASE = "sqlite:///data/demo.sqlite3"  # beside, never inside, a real data/bzi-broadcast.sqlite3
EXAMPLE = "weltoffene-kommunen.yaml"
SEND_DELAY = timedelta(seconds=5)
MASTODON_TOKEN = "demo-mastodon-token"  # noqa: S105 - the local server's own token
TELEGRAM_TOKEN = "100200300:demo-telegram-token-local-only"  # noqa: S105 - likewise
CHANNEL_CHAT = -1001000000001  # the council's Telegram channel
STAFF = (  # e-mail, name, role
    ("redaktion@demo.bzi.example.org", "Rana Redaktion", Role.EDITOR),
    ("freigabe@demo.bzi.example.org", "Paul Freigabe", Role.PUBLISHER),
    ("admin@demo.bzi.example.org", "Ada Admin", Role.ADMIN),
)
EMAIL_SUBSCRIBERS = (  # e-mail, name, language
    ("amira.haddad@example.org", "Amira Haddad", "de"),
    ("jonas.weber@example.org", "Jonas Weber", "de"),
    ("lena.kowalski@example.org", "Lena Kowalski", "en"),
)
TELEGRAM_SUBSCRIBERS = (700000001, 700000002)  # private chats that started the bot


@dataclass(kw_only=True)
class Account:
    email: str
    name: str
    role: Role
    password: str


@dataclass(kw_only=True)
class DemoState:
    """What must survive a restart: the logins, the signing key, the example draft."""

    accounts: list[Account]
    secret_key: str
    draft_id: int | None = None

    @classmethod
    def load_or_create(cls, directory: Path) -> DemoState:
        path = directory / STATE_FILE
        if path.exists():
            path.chmod(0o600)  # written by an older version with the umask's mode
            data = json.loads(path.read_text(encoding="utf-8"))
            accounts = [Account(**{**a, "role": Role(a["role"])}) for a in data["accounts"]]
            return cls(
                accounts=accounts, secret_key=data["secret_key"], draft_id=data.get("draft_id")
            )
        accounts = [
            Account(email=email, name=name, role=role, password=secrets.token_urlsafe(12))
            for email, name, role in STAFF
        ]
        state = cls(accounts=accounts, secret_key=secrets.token_urlsafe(48))
        state.save(directory)
        return state

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / STATE_FILE
        data = {
            "accounts": [
                {"email": a.email, "name": a.name, "role": str(a.role), "password": a.password}
                for a in self.accounts
            ],
            "secret_key": self.secret_key,
            "draft_id": self.draft_id,
        }
        _write_private(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    def account(self, role: Role) -> Account:
        return next(a for a in self.accounts if a.role == role)


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by this user only from the first byte on (it
    holds the signing key and the passwords)."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        partial.chmod(0o600)  # whatever the umask took away, never more than this
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


@dataclass(kw_only=True)
class LocalServers:
    """The three services the demo sends to, running in this process."""

    smtp: SmtpCapture
    mastodon: MastodonServer
    telegram: TelegramServer
    mastodon_url: str
    telegram_url: str
    _runners: list[web.AppRunner] = field(default_factory=list)


@asynccontextmanager
async def local_servers() -> AsyncIterator[LocalServers]:
    try:
        from bzi_broadcast.testing.smtp import SmtpCapture
    except ImportError:
        raise BroadcastError(
            _("Der Demo-Modus braucht das Paket aiosmtpd: pip install 'bzi-broadcast[dev]'")
        ) from None
    smtp = await SmtpCapture().start()
    mastodon = MastodonServer(token=MASTODON_TOKEN)
    telegram = TelegramServer(token=TELEGRAM_TOKEN, accept_private=True)
    telegram.add_chat(CHANNEL_CHAT, type="channel", title=_("BZI-Kanal (Demo)"))
    runners: list[web.AppRunner] = []
    try:
        mastodon_port = await _serve_local(mastodon.app(), runners)
        telegram_port = await _serve_local(telegram.app(), runners)
        yield LocalServers(
            smtp=smtp,
            mastodon=mastodon,
            telegram=telegram,
            mastodon_url=f"http://127.0.0.1:{mastodon_port}",
            telegram_url=f"http://127.0.0.1:{telegram_port}/bot",
            _runners=runners,
        )
    finally:
        for runner in runners:
            await runner.cleanup()
        await smtp.stop()


async def _serve_local(app: web.Application, runners: list[web.AppRunner]) -> int:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    runners.append(runner)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return int(runner.addresses[0][1])


def demo_settings(
    base: Settings, servers: LocalServers, state: DemoState, port: int, database: str | None
) -> Settings:
    """The configured settings, with every channel pointed at the local servers."""
    update = {
        "database": base.database.model_copy(update={"url": database or DATABASE}),
        "smtp": base.smtp.model_copy(
            update={"host": "127.0.0.1", "port": servers.smtp.port, "security": "none"}
            | {"username": None, "password": None}
        ),
        "email": base.email.model_copy(update={"public_url": f"http://127.0.0.1:{port}"}),
        "mastodon": base.mastodon.model_copy(
            update={
                "enabled": True,
                "base_url": servers.mastodon_url,
                "access_token": SecretStr(MASTODON_TOKEN),
            }
        ),
        "telegram": base.telegram.model_copy(
            update={
                "enabled": True,
                "base_url": servers.telegram_url,
                "token": SecretStr(TELEGRAM_TOKEN),
                "chats": [CHANNEL_CHAT],
                "webhook_url": None,
            }
        ),
        "web": base.web.model_copy(update={"port": port}),
        "security": base.security.model_copy(update={"secret_key": SecretStr(state.secret_key)}),
    }
    return base.model_copy(update=update)


async def seed(engine: AsyncEngine, settings: Settings, state: DemoState) -> None:
    """Accounts, the example draft and subscribers; whatever exists already is kept."""
    await migrate(engine)
    for account in state.accounts:
        if await user_by_email(engine, account.email) is None:
            await add_user(
                engine,
                email=account.email,
                name=account.name,
                role=account.role,
                password=account.password,
            )
    if state.draft_id is not None and await _exists(engine, state.draft_id):
        return
    editor = await _user(engine, state, Role.EDITOR)
    state.draft_id = await workflow.create(engine, load_announcement(example_file()), editor)
    state.save(DATA_DIR)
    await _subscribers(engine, settings)
    log.info("demo seeded announcement_id=%s", state.draft_id)


async def _exists(engine: AsyncEngine, announcement_id: int) -> bool:
    try:
        await workflow.load(engine, announcement_id)
    except NotFoundError:
        return False
    return True


async def _subscribers(engine: AsyncEngine, settings: Settings) -> None:
    lines = [
        ImportLine(
            line=n,
            email=email,
            name=name,
            language=language,
            topics=(),
            consent_source=_("Demo-Daten"),
        )
        for n, (email, name, language) in enumerate(EMAIL_SUBSCRIBERS, start=1)
    ]
    options = ImportOptions(
        consent_proven=_("Demo-Daten (bzi-broadcast serve --demo)"),
        file_name="demo",
        consent_version=settings.subscribers.consent_version,
    )
    key = settings.security.secret_key.get_secret_value().encode()
    await import_lines(engine, lines, ImportReport(), key, options)
    bot = BotSubscribers(engine, settings.subscribers.consent_version)
    for chat_id in TELEGRAM_SUBSCRIBERS:
        await bot.subscribe(chat_id, None)  # as if they had sent /start to the bot


def example_file() -> Path:
    """The seed example: in the checkout, in the container's /etc, or below the working dir."""
    candidates = [
        Path(__file__).resolve().parents[1] / "config" / "examples" / EXAMPLE,
        Path("/etc/bzi-broadcast/examples") / EXAMPLE,
        Path("config/examples") / EXAMPLE,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BroadcastError(
        _("Beispiel-Ankündigung {name} nicht gefunden (gesucht: {paths})").format(
            name=EXAMPLE, paths=", ".join(str(c) for c in candidates)
        )
    )


async def _user(engine: AsyncEngine, state: DemoState, role: Role) -> User:
    user = await user_by_email(engine, state.account(role).email)
    if user is None:
        raise BroadcastError(_("Das Demo-Konto {role} fehlt.").format(role=role))
    return user


async def send_example(engine: AsyncEngine, state: DemoState) -> tuple[int, datetime]:
    """Take the example through review to a release a few seconds from now, as staff would.

    A draft that was sent (or cancelled) already is duplicated first, so the button works again
    and again. Returns the announcement and when it goes out."""
    if state.draft_id is None:
        raise BroadcastError(_("Es gibt keine Demo-Ankündigung."))
    editor = await _user(engine, state, Role.EDITOR)
    announcement_id = state.draft_id
    draft = await workflow.load(engine, announcement_id)
    if not draft.editable:
        announcement_id = await workflow.duplicate(engine, announcement_id, editor)
        draft = await workflow.load(engine, announcement_id)
        state.draft_id = announcement_id  # the page follows the newest copy
        state.save(DATA_DIR)
    if draft.status == S.DRAFT:
        await workflow.submit(engine, announcement_id, editor, version=draft.version)
        draft = await workflow.load(engine, announcement_id)
    if draft.status == S.IN_REVIEW:
        approver = await _approver(engine, state, draft)
        await workflow.approve(engine, announcement_id, approver, version=draft.version)
    at = utcnow() + SEND_DELAY
    publisher = await _user(engine, state, Role.PUBLISHER)
    version = (await workflow.load(engine, announcement_id)).version
    await workflow.schedule(engine, announcement_id, publisher, at, version=version)
    return announcement_id, at


async def _approver(engine: AsyncEngine, state: DemoState, draft: workflow.Draft) -> User:
    """The publisher, unless they wrote or submitted it themselves: then the admin (four eyes)."""
    for role in (Role.PUBLISHER, Role.ADMIN):
        user = await _user(engine, state, role)
        if user.id not in (draft.author_id, draft.submitted_by):
            return user
    raise BroadcastError(_("Kein Demo-Konto darf diese Ankündigung freigeben."))


def banner(settings: Settings, state: DemoState, port: int) -> str:
    host = settings.web.host if settings.web.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    base = f"http://{host}:{port}"
    links = [
        (_("Anmeldung für Mitarbeitende:"), f"{base}/admin/anmelden"),
        (_("Was gesendet wurde:"), f"{base}/demo"),
        (_("Newsletter-Anmeldung:"), f"{base}/anmelden"),
    ]
    width = max(len(label) for label, _url in links)
    accounts = [f"    {a.email:<34} {a.password}   ({a.role})" for a in reversed(state.accounts)]
    return "\n".join(
        [
            "",
            _("bzi-broadcast – Demo (nichts verlässt diesen Rechner)"),
            "",
            *(f"  {label:<{width}} {url}" for label, url in links),
            "",
            "  "
            + _("Demo-Konten (E-Mail, Passwort, Rolle; auch in {path}):").format(
                path=DATA_DIR / STATE_FILE
            ),
            *accounts,
            "",
            "  " + _("Beenden mit Strg+C."),
            "",
        ]
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_demo(base: Settings, port: int | None, database: str | None = None) -> None:
    """Start the local servers and the service; print the banner once it serves.

    The database is ``./data/demo.sqlite3`` unless ``database`` (``--database``) names one."""
    from bzi_broadcast.service import Service  # the service imports the web app, which is big
    from bzi_broadcast.web import operations
    from bzi_broadcast.web.demo import demo_setup

    state = DemoState.load_or_create(DATA_DIR)
    port = free_port() if port == 0 else (port or base.web.port)
    async with local_servers() as servers:
        settings = demo_settings(base, servers, state, port, database)
        logs.configure(settings.logging, settings.secrets())
        extras = [demo_setup(servers, state), operations.open_metrics]
        service = Service(settings, extra_setups=extras)
        service.install_signal_handlers()
        await seed(service.engine, settings, state)
        running = asyncio.create_task(service.run())
        ready = asyncio.create_task(service.ready.wait())
        await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            print(banner(settings, state, service.web_port or port), flush=True)
        else:
            ready.cancel()
        await running
