"""The subscriber bot: /start, /stop, /themen, /sprache, /hilfe and /datenschutz in Telegram;
and /verbinden, with which a staff member proves their own private chat for test sends.

python-telegram-bot's ``Application`` runs inside the service's event loop: long polling by
default, or updates posted by Telegram to the service's ``/telegram/webhook`` when
``telegram.webhook_url`` is set. Starting the bot in a private chat is the person's own opt-in, so
/start signs up and confirms at once; every change is written in one transaction with its consent
event. With PostgreSQL several processes may run, but Telegram allows one poller per bot (a second
``getUpdates`` ends the first with 409): only the holder of an advisory lock polls, and the lock
goes with its connection, so another process takes over when the poller stops or dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, InvalidToken, NetworkError
from telegram.ext import (
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bzi_broadcast.config import Settings, Topic
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import DEFAULT_LOCALE, current_locale, use_locale
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.staff import telegram_link
from bzi_broadcast.subscribers.bot_store import BotSubscribers, Person, payload_topics

log = logging.getLogger(__name__)

LOCK_KEY = 0x627A_6962_6F74  # pg_advisory_lock id of "the subscriber bot polls" (b"bzibot")
RETRY_SECONDS = 2.0  # between attempts to take the lock, and between checks that it is held
POLL_TIMEOUT = 10  # seconds a getUpdates long poll waits
WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name
UPDATES = ("message", "callback_query")
LANGUAGES = {"de": "Deutsch", "en": "English"}  # each language in its own name
LANGUAGE_DATA = "lang:"  # callback data prefix; topic ids cannot contain ":"
_SEPARATOR = re.compile(r"[-_]")


class PollingLock:
    """``pg_try_advisory_lock`` on a connection of its own, held as long as that connection lives.

    On SQLite (one process per database file) it is always held."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._conn: AsyncConnection | None = None

    async def acquire(self) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        if await self._try():
            return
        log.info("telegram bot waits: another process polls pid=%s", os.getpid())
        while not await self._try():
            await asyncio.sleep(RETRY_SECONDS)

    async def lost(self) -> None:
        """Return when the lock's connection fails (checked every few seconds); never on SQLite."""
        if self._conn is None:
            await asyncio.Event().wait()
        while self._conn is not None:
            await asyncio.sleep(RETRY_SECONDS)
            try:
                await self._conn.execute(text("SELECT 1"))
                await self._conn.commit()
            except SQLAlchemyError:
                log.warning("lost the connection holding the telegram polling lock")
                return

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            await conn.commit()
            await conn.close()
        except SQLAlchemyError:
            with contextlib.suppress(SQLAlchemyError):
                await conn.invalidate()  # closing the session ends the lock too

    async def _try(self) -> bool:
        try:
            conn = await self.engine.connect()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("cannot reach the database for the telegram polling lock: %s", exc)
            return False
        try:
            taken = await conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY})
            await conn.commit()  # a session lock outlives the transaction; idle, not in one
        except SQLAlchemyError:
            await conn.invalidate()
            return False
        if taken:
            self._conn = conn
            return True
        await conn.close()
        return False


def webhook_secret(settings: Settings) -> str:
    """The configured secret, else one derived from ``security.secret_key`` (hex: within the
    characters setWebhook allows for ``secret_token``)."""
    if settings.telegram.webhook_secret is not None:
        return settings.telegram.webhook_secret.get_secret_value()
    key = settings.security.secret_key.get_secret_value().encode()
    return hmac.new(key, b"telegram-webhook", hashlib.sha256).hexdigest()


def subscriber_bot(settings: Settings, engine: AsyncEngine) -> SubscriberBot | None:
    """The bot, when Telegram and its bot are enabled."""
    t = settings.telegram
    return SubscriberBot(settings, engine) if t.enabled and t.bot else None


class SubscriberBot:
    """The conversation, and its life in ``Service.run``: ``add_routes``, ``start``, ``stop``."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        t = settings.telegram
        if t.token is None:
            raise BroadcastError(_("telegram.token fehlt (oder BZI_TELEGRAM_TOKEN_FILE)"))
        self.settings = settings
        self.engine = engine
        self.topics: Sequence[Topic] = settings.subscribers.topics
        self.people = BotSubscribers(engine, settings.subscribers.consent_version)
        self.lock = PollingLock(engine)
        self.secret = webhook_secret(settings)
        builder = ApplicationBuilder().token(t.token.get_secret_value()).base_url(t.base_url)
        self.app = builder.job_queue(None).build()
        self._add_handlers()
        self._task: asyncio.Task[None] | None = None

    # --- life ----------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        if self.settings.telegram.webhook_url:
            app.router.add_post(WEBHOOK_PATH, self._webhook)

    async def start(self) -> None:
        """Connect in the background: the service serves even while Telegram is unreachable."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()  # stops polling and releases the lock
            await asyncio.gather(self._task, return_exceptions=True)
        if self.app.running:
            await self.app.stop()  # handles the updates already received
        await self.app.shutdown()

    async def _run(self) -> None:
        try:
            await _retrying(self.app.initialize)
            await self.app.start()
            await self._set_commands()
            if url := self.settings.telegram.webhook_url:
                await _retrying(
                    lambda: self.app.bot.set_webhook(
                        url, secret_token=self.secret, allowed_updates=UPDATES
                    )
                )
                log.info("telegram bot receives updates by webhook")
            else:
                await self._poll_while_holding_the_lock()
        except (InvalidToken, BadRequest) as exc:
            log.error("telegram bot stopped: %s", exc)
        except Exception:
            log.exception("telegram bot stopped")

    async def _poll_while_holding_the_lock(self) -> None:
        updater = self.app.updater
        if updater is None:
            return
        while True:
            await self.lock.acquire()
            try:
                await updater.start_polling(
                    timeout=POLL_TIMEOUT,
                    bootstrap_retries=-1,
                    allowed_updates=UPDATES,
                    error_callback=lambda exc: log.warning("telegram polling failed: %s", exc),
                )
                log.info("telegram bot polling pid=%s", os.getpid())
                await self.lock.lost()
            finally:
                if updater.running:
                    await updater.stop()
                await self.lock.release()

    async def _set_commands(self) -> None:
        """The command menu, in German and for English-speaking Telegram apps in English."""
        for language, names in (
            ("de", ("start", "stop", "themen", "sprache", "hilfe", "datenschutz", "verbinden")),
            ("en", ("start", "stop", "topics", "language", "help", "privacy", "connect")),
        ):
            with use_locale(language):
                descriptions = (
                    _("anmelden"),
                    _("abmelden"),
                    _("Themen wählen"),
                    _("Sprache wechseln"),
                    _("Hilfe"),
                    _("Datenschutz"),
                    _("Testchat für Mitarbeitende verbinden"),
                )
            menu = [BotCommand(n, d) for n, d in zip(names, descriptions, strict=True)]
            code = None if language == DEFAULT_LOCALE else language
            await _retrying(partial(self.app.bot.set_my_commands, menu, language_code=code))

    async def _webhook(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self.secret.encode()):
            raise web.HTTPForbidden()
        try:
            update = Update.de_json(await request.json(), self.app.bot)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise web.HTTPBadRequest() from None
        await self.app.update_queue.put(update)
        return web.Response()

    # --- conversation ----------------------------------------------------------------------------

    def _add_handlers(self) -> None:
        private = filters.ChatType.PRIVATE
        commands = {
            ("start",): self._start,
            ("stop",): self._stop,
            ("themen", "topics"): self._choose_topics,
            ("sprache", "language"): self._choose_language,
            ("hilfe", "help"): self._help,
            ("datenschutz", "privacy"): self._privacy,
            ("verbinden", "connect"): self._connect,
        }
        self.app.add_handler(MessageHandler(~private & filters.COMMAND, self._group))
        for names, callback in commands.items():
            self.app.add_handler(CommandHandler(names, callback, filters=private))
        self.app.add_handler(MessageHandler(private & filters.UpdateType.MESSAGE, self._unknown))
        self.app.add_handler(CallbackQueryHandler(self._chosen))
        self.app.add_error_handler(self._failed)

    async def _start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        known = [topic.id for topic in self.topics]
        topics = payload_topics(context.args[0], known) if context.args else frozenset()
        person, was_active = await self.people.subscribe(_chat_id(update), topics or None)
        with use_locale(person.language):
            first = (
                _("Sie sind bereits angemeldet.")
                if was_active
                else _(
                    "Willkommen! Sie erhalten die Mitteilungen des {name} ab jetzt hier in "
                    "Telegram. Mit /stop melden Sie sich jederzeit ab."
                ).format(name=self.settings.organisation.short_name)
            )
            await _reply(update, f"{first}\n\n{self._topic_line(person)}\n\n{_commands()}")

    async def _stop(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        person, was_active = await self.people.unsubscribe(_chat_id(update))
        with use_locale(person.language if person else DEFAULT_LOCALE):
            await _reply(
                update,
                _(
                    "Sie sind abgemeldet und erhalten keine Mitteilungen mehr. Mit /start können "
                    "Sie sich jederzeit wieder anmelden."
                )
                if was_active
                else _not_subscribed(),
            )

    async def _choose_topics(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        person = await self.people.find(_chat_id(update))
        with use_locale(person.language if person else DEFAULT_LOCALE):
            if person is None or not person.active:
                await _reply(update, _not_subscribed())
            else:
                await _reply(update, self._topic_prompt(person), self._topic_keyboard(person))

    async def _choose_language(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        person = await self.people.find(_chat_id(update))
        with use_locale(person.language if person else DEFAULT_LOCALE):
            if person is None:
                await _reply(update, _not_subscribed())
                return
            buttons = [
                InlineKeyboardButton(name, callback_data=LANGUAGE_DATA + code)
                for code, name in LANGUAGES.items()
            ]
            prompt = _("In welcher Sprache möchten Sie Nachrichten erhalten?")
            await _reply(update, prompt, InlineKeyboardMarkup([buttons]))

    async def _help(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        with use_locale(await self._language(update)):
            await _reply(update, _commands())

    async def _privacy(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        organisation = self.settings.organisation
        with use_locale(await self._language(update)):
            explanation = _(
                "Datenschutz: Wir speichern Ihre Telegram-Chat-ID, Ihre Sprache, Ihre Themen und "
                "wann Sie sich an- und abgemeldet haben – als Nachweis Ihrer Einwilligung. Ihren "
                "Namen und Ihre Telefonnummer speichern wir nicht. Mit /stop melden Sie sich "
                "jederzeit ab."
            )
            more = _("Mehr dazu: {url}").format(
                url=organisation.privacy_url or organisation.website
            )
            await _reply(update, f"{explanation}\n\n{more}")

    async def _connect(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/verbinden 123456: this private chat becomes the code's owner's chat for test sends.

        Only where the chat is the sender's own (a private chat's id is the person's user id);
        wrong, expired and used codes get one answer, and each chat has a few tries."""
        chat, sender = update.effective_chat, update.effective_user
        if chat is None or sender is None or chat.type != chat.PRIVATE or chat.id != sender.id:
            return
        language = await self._language(update)
        if not context.args:
            with use_locale(language):
                await _reply(update, _connect_usage())
            return
        secret = self.settings.security.secret_key
        try:
            with use_locale(language):  # a refusal's message is made in the reader's language
                linked = await telegram_link.link(
                    self.engine, secret, " ".join(context.args), chat.id
                )
        except BroadcastError as refused:
            await _reply(update, refused.message)
            return
        log.info("telegram chat linked to a staff account user_id=%s", linked.user_id)
        with use_locale(linked.language):
            done = _(
                "Verbunden: „Test an mich senden“ schickt die Telegram-Fassung für {name} ab jetzt "
                "in diesen Chat. Trennen können Sie im Arbeitsbereich unter „Mein Konto“."
            )
            await _reply(update, done.format(name=linked.name))

    async def _unknown(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        command = bool(message and message.text and message.text.startswith("/"))
        with use_locale(await self._language(update)):
            first = (
                _("Diesen Befehl kenne ich nicht.") if command else _("Ich verstehe nur Befehle.")
            )
            await _reply(update, f"{first}\n\n{_commands()}")

    async def _group(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        word = (message.text or "").split(maxsplit=1)[0] if message else ""
        _command, _at, addressee = word.partition("@")
        if addressee and addressee.lower() != (self.app.bot.username or "").lower():
            return  # meant for another bot in the group
        text = _("Ich arbeite nur im privaten Chat. Schreiben Sie mir direkt: @{username}")
        await _reply(update, text.format(username=self.app.bot.username))

    async def _chosen(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or query.data is None:
            return
        chat_id, data = query.from_user.id, query.data
        if data.startswith(LANGUAGE_DATA) and data[len(LANGUAGE_DATA) :] in LANGUAGES:
            person = await self.people.set_language(chat_id, data[len(LANGUAGE_DATA) :])
        elif data in {topic.id for topic in self.topics}:
            known = await self.people.find(chat_id)
            active = known is not None and known.active
            person = await self.people.toggle_topic(chat_id, data) if active else None
        else:
            with use_locale(await self._language(update)):
                await query.answer(_("Diese Auswahl gibt es nicht mehr."))
            return
        if person is None:
            with use_locale(await self._language(update)):
                await query.answer(_not_subscribed(), show_alert=True)
            return
        with use_locale(person.language):
            await query.answer(_("Gespeichert."))
            if data.startswith(LANGUAGE_DATA):
                language = LANGUAGES[person.language]
                done = _("Ab jetzt schreibe ich Ihnen auf {language}.").format(language=language)
                await _edit(query.edit_message_text(done))
            else:
                prompt, keyboard = self._topic_prompt(person), self._topic_keyboard(person)
                await _edit(query.edit_message_text(prompt, reply_markup=keyboard))

    async def _failed(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log the error; the person gets an apology, never its details."""
        update_id = update.update_id if isinstance(update, Update) else None
        log.error("telegram update failed update_id=%s", update_id, exc_info=context.error)
        chat = update.effective_chat if isinstance(update, Update) else None
        if chat is not None and chat.type == chat.PRIVATE:
            with contextlib.suppress(Exception):
                await chat.send_message(
                    _("Das hat leider nicht geklappt. Bitte versuchen Sie es später noch einmal.")
                )

    # --- texts ---------------------------------------------------------------------------------

    async def _language(self, update: Update) -> str:
        chat = update.effective_chat
        person = await self.people.find(chat.id) if chat else None
        return person.language if person else DEFAULT_LOCALE

    def _topic_line(self, person: Person) -> str:
        names = [_topic_name(t) for t in self.topics if t.id in person.topics]
        return _("Ihre Themen: {topics}").format(topics=", ".join(names) or _("alle"))

    def _topic_prompt(self, person: Person) -> str:
        prompt = _(
            "Tippen Sie auf ein Thema, um es an- oder abzuwählen. Ohne Auswahl erhalten Sie alle "
            "Mitteilungen."
        )
        return f"{prompt}\n\n{self._topic_line(person)}"

    def _topic_keyboard(self, person: Person) -> InlineKeyboardMarkup:
        return InlineKeyboardMarkup(
            [
                [
                    InlineKeyboardButton(
                        ("✓ " if topic.id in person.topics else "") + _topic_name(topic),
                        callback_data=topic.id,
                    )
                ]
                for topic in self.topics
            ]
        )


def _topic_name(topic: Topic) -> str:
    return topic.en if current_locale() == "en" else topic.de


def _commands() -> str:
    subscribers = _(
        "/start – anmelden\n/stop – abmelden\n/themen – Themen wählen\n"
        "/sprache – Sprache wechseln (Deutsch/English)\n/datenschutz – was wir speichern\n"
        "/hilfe – diese Übersicht"
    )
    staff = _("/verbinden – nur für Mitarbeitende: den Chat für Testnachrichten verbinden")
    return f"{subscribers}\n{staff}"


def _connect_usage() -> str:
    return _(
        "Bitte senden Sie /verbinden mit dem Code, den der Arbeitsbereich unter „Mein Konto“ "
        "zeigt, zum Beispiel: /verbinden 123456"
    )


def _not_subscribed() -> str:
    return _("Sie sind nicht angemeldet. Mit /start melden Sie sich an.")


def _chat_id(update: Update) -> int:
    chat = update.effective_chat
    if chat is None:  # the handlers only see messages, which always have a chat
        raise BroadcastError()
    return chat.id


async def _reply(update: Update, text: str, markup: InlineKeyboardMarkup | None = None) -> None:
    if update.effective_chat is not None:
        await update.effective_chat.send_message(text, reply_markup=markup)


async def _edit(edit: Awaitable[object]) -> None:
    """Edit a message; one already showing the new state is no error (a double tap)."""
    try:
        await edit
    except BadRequest as exc:
        if "not modified" not in exc.message:
            raise


async def _retrying(call: Callable[[], Awaitable[object]]) -> None:
    """Retry network failures until Telegram answers; a refusal (bad token, bad request) raises.

    ``BadRequest`` is a ``NetworkError`` in python-telegram-bot, hence caught first."""
    while True:
        try:
            await call()
            return
        except BadRequest:
            raise
        except NetworkError as exc:
            log.warning("telegram unreachable, retrying: %s", exc)
            await asyncio.sleep(RETRY_SECONDS)
