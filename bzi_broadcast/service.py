"""``bzi-broadcast serve``: web server, scheduler, delivery workers and Telegram bot in one process.

Start: connect, migrate, start the scheduler and one worker per channel. The rate limits live in
the database (``rate_slots``), shared by every replica and kept across restarts.
A setting that keeps the service from starting (database, port) is a ``ConfigError`` naming it.
Stop (SIGTERM/SIGINT): stop claiming; sends in flight get ``delivery.shutdown_grace_seconds`` to
finish, then they are cut off and their rows go back to the queue; every outcome is written,
connections are closed, exit 0.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta

from aiohttp import web
from mastodon import Mastodon
from sqlalchemy.ext.asyncio import AsyncEngine
from telegram import Bot
from telegram.request import HTTPXRequest

from bzi_broadcast.bounces.mailbox import bounce_reader
from bzi_broadcast.bounces.verp import Verp
from bzi_broadcast.channels.base import Channel
from bzi_broadcast.channels.dkim import configured_signer
from bzi_broadcast.channels.email import EmailChannel, EmailSettings
from bzi_broadcast.channels.email_mime import Sender
from bzi_broadcast.channels.mastodon import MastodonBudgets, MastodonChannel
from bzi_broadcast.channels.smtp import SmtpServer
from bzi_broadcast.channels.telegram import Pacer, TelegramChannel, TelegramLimits
from bzi_broadcast.config import Settings, mask_url
from bzi_broadcast.delivery import control
from bzi_broadcast.delivery.heartbeat import Heartbeat, Identity
from bzi_broadcast.delivery.outbox import Claimed, Outbox
from bzi_broadcast.delivery.ratelimit import Limiter, RateLimit, SlotStore
from bzi_broadcast.delivery.release import (
    FanOut,
    continue_fan_out,
    email_fan_out,
    incomplete_fan_outs,
    mastodon_fan_out,
    release,
    telegram_fan_out,
)
from bzi_broadcast.delivery.retry import RetryPolicy
from bzi_broadcast.delivery.scheduler import Scheduler
from bzi_broadcast.delivery.worker import Worker, WorkerSettings
from bzi_broadcast.errors import BroadcastError, ConfigError, DeliveryError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.render import Renderer
from bzi_broadcast.staff.media import MediaLibrary
from bzi_broadcast.store.announcements import Announcements
from bzi_broadcast.store.engine import StoreError, create_engine, migrate
from bzi_broadcast.store.parts import Parts
from bzi_broadcast.store.rate_slots import DatabaseSlots
from bzi_broadcast.subscribers import gdpr
from bzi_broadcast.subscribers.bot import subscriber_bot
from bzi_broadcast.subscribers.store import set_telegram_chat, suppress
from bzi_broadcast.tokens import TokenSigner
from bzi_broadcast.web import routes
from bzi_broadcast.web.app import WebContext, create_app, start_site
from bzi_broadcast.web.public import SUBSCRIPTIONS

log = logging.getLogger(__name__)


def worker_settings(settings: Settings) -> WorkerSettings:
    d = settings.delivery
    return WorkerSettings(
        window=d.window,
        flush_interval=d.flush_interval,
        flush_size=d.flush_size,
        poll_interval=d.poll_interval,
        pause_error_rate=d.pause_error_rate,
        pause_min_samples=d.pause_min_samples,
        retry=RetryPolicy(base_delay=d.retry_base_delay, max_attempts=d.max_attempts),
    )


def email_channel(settings: Settings, renderer: Renderer, slots: SlotStore) -> EmailChannel:
    """The server's rate and daily cap are kept in ``slots``: by every replica together."""
    s, e = settings.smtp, settings.email
    server = SmtpServer(
        host=s.host,
        port=s.port,
        security=s.security,
        username=s.username,
        password=s.password.get_secret_value() if s.password else None,
        timeout=s.timeout,
        pool_size=s.pool_size,
        verify_tls=s.verify_tls,
    )
    email = EmailSettings(
        sender=Sender(address=e.from_address, name=e.from_name, reply_to=e.reply_to),
        public_url=e.public_url,
        list_id=e.list_id,
        unsubscribe_mailto=e.unsubscribe_mailto,
        dkim=configured_signer(e),
        verp=Verp(settings.security.signing_key()),
        bounce_domain=e.bounce_domain,
    )
    limiter = Limiter(
        slots,
        f"smtp:{s.host}:{s.port}",
        RateLimit(per_second=s.rate_per_second, burst=s.burst, daily_cap=s.daily_cap),
        name="smtp",
    )
    return EmailChannel(server, email, renderer, signer(settings), limiter)


PURGE_INTERVAL = 3600.0  # seconds between deletions of unconfirmed sign-ups
TELEGRAM_CONCURRENCY = 16  # at Telegram's ~0.1 s per call, 16 in flight carry 160/s


def telegram_channel(
    settings: Settings, renderer: Renderer, engine: AsyncEngine | None = None
) -> TelegramChannel:
    """With ``engine``, images at our own ``/medien/`` addresses are sent from the store, and
    the limits are kept in the database: by every replica together (per bot)."""
    t = settings.telegram
    if t.token is None:
        raise ConfigError(_("telegram.token fehlt (oder BZI_TELEGRAM_TOKEN_FILE)"))
    # Sends in flight = connections: httpcore scans every pooled connection on each request,
    # so a pool larger than the sends that use it costs CPU for nothing (bench/telegram_fanout).
    request = HTTPXRequest(
        connection_pool_size=TELEGRAM_CONCURRENCY,
        read_timeout=t.timeout,
        connect_timeout=t.timeout,
        write_timeout=t.timeout,
    )
    bot = Bot(t.token.get_secret_value(), base_url=t.base_url, request=request)
    overall = t.paid_per_second if t.paid_broadcast else t.per_second
    limits = TelegramLimits(
        per_second=overall,
        per_chat_per_second=t.per_chat_per_second,
        per_group_per_minute=t.per_group_per_minute,
    )
    images = MediaLibrary(engine, settings.email.public_url) if engine is not None else None
    bot_id = t.token.get_secret_value().partition(":")[0]  # the limits are the bot's
    slots = DatabaseSlots(engine) if engine is not None else None
    pacer = Pacer(limits, slots=slots, key=f"telegram:{bot_id}")
    return TelegramChannel(
        bot, renderer, limits, concurrency=TELEGRAM_CONCURRENCY, media=images, pacer=pacer
    )


def mastodon_channel(
    settings: Settings, renderer: Renderer, engine: AsyncEngine
) -> MastodonChannel:
    m = settings.mastodon
    if m.access_token is None:
        raise ConfigError(_("mastodon.access_token fehlt (oder BZI_MASTODON_ACCESS_TOKEN_FILE)"))
    client = Mastodon(
        access_token=m.access_token.get_secret_value(),
        api_base_url=m.base_url,
        ratelimit_method="throw",
        # Without an override Mastodon.py reads the version from /api/v1/instance when it first
        # needs it (to choose /api/v2/media); it understands GoToSocial's and Akkoma's strings.
        version_check_mode="created" if m.server_version else "none",
        mastodon_version=m.server_version,
        request_timeout=m.timeout,
    )
    budgets = MastodonBudgets(
        requests=(m.requests_per_5_minutes, 300.0),
        statuses=(m.statuses_per_3_hours, 3 * 3600.0),
        media=(m.media_per_30_minutes, 1800.0),
    )
    return MastodonChannel(
        client,
        renderer,
        Parts(engine),
        budgets=budgets,
        content_warning_share=m.content_warning_share,
        media=MediaLibrary(engine, settings.email.public_url),  # images from the store, not HTTP
    )


def signer(settings: Settings) -> TokenSigner:
    """``ConfigError`` naming ``security.secret_key`` while none is configured."""
    return TokenSigner(settings.security.signing_key())


def open_engine(settings: Settings) -> AsyncEngine:
    try:
        return create_engine(settings.database.url)
    except (StoreError, OSError) as exc:
        raise _database_problem(settings, exc) from None


def _database_problem(settings: Settings, exc: Exception) -> ConfigError:
    reason = exc.message if isinstance(exc, BroadcastError) else (str(exc) or type(exc).__name__)
    return ConfigError(
        _("database.url: {reason} (Wert: {url})").format(
            reason=reason, url=mask_url(settings.database.url)
        )
    )


class Service:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine | None = None,
        *,
        extra_setups: Sequence[Callable[[web.Application], None]] = (),
    ) -> None:
        """``extra_setups`` add routes after the standard ones (the demo page)."""
        self.settings = settings
        self.engine = engine or open_engine(settings)
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.announcements = Announcements(self.engine)
        lease = timedelta(seconds=settings.delivery.lease_seconds)
        self.outbox = Outbox(self.engine, worker_id=self.worker_id, lease=lease)
        self.heartbeat = Heartbeat(
            self.engine.url.render_as_string(hide_password=False),
            Identity(worker_id=self.worker_id, host=socket.gethostname(), pid=os.getpid()),
            interval=settings.delivery.heartbeat_seconds,
            on_reaped=self._wake_workers,  # claims of a dead process came back: send them now
        )
        self.renderer = Renderer(settings)
        self.email = email_channel(settings, self.renderer, DatabaseSlots(self.engine))
        channels: list[Channel] = [self.email]
        self.fan_outs: dict[str, FanOut] = {"email": email_fan_out}
        if settings.mastodon.enabled:
            channels.append(mastodon_channel(settings, self.renderer, self.engine))
            self.fan_outs["mastodon"] = mastodon_fan_out(settings.mastodon.base_url)
        if settings.telegram.enabled:
            channels.append(telegram_channel(settings, self.renderer, self.engine))
            self.fan_outs["telegram"] = telegram_fan_out(settings.telegram.chats)
        self.workers = [
            Worker(
                channel,
                self.outbox,
                self.announcements,
                settings=worker_settings(settings),
                on_pause=self._on_pause,
                on_suppress=self._on_suppress,
                on_moved=self._on_moved,
            )
            for channel in channels
        ]
        self.scheduler = Scheduler(
            self.announcements,
            self._release,
            sweep_interval=settings.delivery.sweep_interval,
            on_sweep=self._housekeeping,
        )
        self._stopped = asyncio.Event()
        self._fan_outs: dict[int, asyncio.Task[None]] = {}
        self._next_purge = 0.0
        self.web = create_app(
            WebContext(
                settings=settings,
                engine=self.engine,
                renderer=self.renderer,
                signer=signer(settings),
                extras={"email": self.email},
            ),
            *routes.SETUPS,
            *extra_setups,
        )
        self.web_port: int | None = None  # the bound port, once serving (web.port may be 0)
        self.ready = asyncio.Event()  # set once everything runs
        self.bot = subscriber_bot(settings, self.engine)  # None unless telegram.enabled and .bot
        self.bounces = bounce_reader(settings, self.engine)  # None without bounces.imap_host
        if self.bot is not None:
            self.bot.add_routes(self.web)  # the webhook, when telegram.webhook_url is set

    async def _release(self, announcement_id: int) -> None:
        written = await release(self.engine, announcement_id, fan_outs=self.fan_outs)
        if written is not None:
            log.info("released announcement_id=%s first_chunk=%s", announcement_id, written)
            self._wake_workers()
            self._fan_out_in_background(announcement_id)

    def _wake_workers(self) -> None:
        for worker in self.workers:
            worker.wake()

    def _fan_out_in_background(self, announcement_id: int) -> None:
        """Write the remaining chunks while the workers already send the first ones."""
        if announcement_id in self._fan_outs:
            return
        task = asyncio.create_task(self._fan_out(announcement_id))
        self._fan_outs[announcement_id] = task
        task.add_done_callback(lambda _t: self._fan_outs.pop(announcement_id, None))

    async def _fan_out(self, announcement_id: int) -> None:
        try:
            while (
                await continue_fan_out(self.engine, announcement_id, fan_outs=self.fan_outs)
                is not None
            ):
                self._wake_workers()
        except Exception:
            log.exception(
                "fan-out interrupted announcement_id=%s (the sweep resumes it)", announcement_id
            )

    async def _housekeeping(self) -> None:
        for announcement_id in await incomplete_fan_outs(self.engine):
            self._fan_out_in_background(announcement_id)  # after a crash or another replica's
        await control.expire_due(self.engine)
        await control.stop_leftovers(self.engine)
        await self.outbox.requeue_expired_leases()
        read_at = time.monotonic()
        paused = await control.paused_channels(self.engine)
        for worker in self.workers:
            recorded = worker.pause_recorded_at
            if worker.paused and worker.channel.name not in paused:
                if recorded is not None and recorded < read_at:  # resumed by someone since
                    worker.resume()
            elif not worker.paused and worker.channel.name in paused:
                worker.paused = True  # paused by another process or `bzi-broadcast` elsewhere
                worker.pause_recorded_at = read_at
        subscriptions = self.web.get(SUBSCRIPTIONS)
        if subscriptions is not None:  # imported people get their confirmation link
            await subscriptions.send_pending_confirmations()
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + PURGE_INTERVAL
            days = self.settings.subscribers.unconfirmed_days
            if purged := await gdpr.purge_unconfirmed(self.engine, days):
                log.info("purged unconfirmed sign-ups count=%s older_than_days=%s", purged, days)

    async def _on_pause(self, channel: str, reason: str) -> None:
        await control.set_paused(self.engine, channel, True, reason)

    async def _on_suppress(self, delivery: Claimed, reason: str) -> None:
        if delivery.channel == "telegram":  # the person blocked the bot: stop writing to them
            await set_telegram_chat(self.engine, delivery.subscriber_id, None)
            return
        key = self.settings.security.signing_key()
        await suppress(
            self.engine, delivery.recipient, reason="hard_bounce", detail=reason, key=key
        )

    async def _on_moved(self, delivery: Claimed, new_recipient: str) -> None:
        if delivery.channel == "telegram":
            await set_telegram_chat(self.engine, delivery.subscriber_id, int(new_recipient))

    async def _start_web(self) -> web.AppRunner:
        settings = self.settings.web
        try:
            site = await start_site(self.web, settings.host, settings.port)
        except OSError as exc:
            await self.scheduler.stop()
            await self.engine.dispose()
            setting = "web.port" if exc.errno == errno.EADDRINUSE else "web.host"
            raise ConfigError(
                _("{setting}: Webserver kann {host}:{port} nicht öffnen: {reason}").format(
                    setting=setting,
                    host=settings.host,
                    port=settings.port,
                    reason=exc.strerror or exc,
                )
            ) from None
        self.web_port = site.addresses[0][1] if site.addresses else settings.port
        return site

    async def run(self) -> None:
        try:
            await migrate(self.engine)
        except StoreError as exc:
            await self.engine.dispose()
            raise _database_problem(self.settings, exc) from None
        try:
            await self.email.check()
        except DeliveryError as exc:
            await self.engine.dispose()
            raise BroadcastError(
                _("E-Mail-Versand nicht möglich: {reason}").format(reason=exc.message)
            ) from None
        marked = await gdpr.mark_suppressed(self.engine, self.settings.security.signing_key())
        if marked:
            log.warning("suppressed addresses marked at start count=%s", marked)
        await self.outbox.requeue_expired_leases()
        await self.scheduler.start()
        # What exists now (modules, templates, clients) lives as long as the process: keep it out
        # of the collector's full passes, which otherwise pause sending (bench/telegram_fanout).
        gc.freeze()
        site = await self._start_web()
        if self.bot is not None:
            await self.bot.start()
        await self.heartbeat.start(self.engine)  # before the first claim: SQLite returns old ones
        tasks = [asyncio.create_task(worker.run()) for worker in self.workers]
        bounces = asyncio.create_task(self.bounces.run()) if self.bounces else None
        log.info(
            "serving worker_id=%s database=%s port=%s",
            self.worker_id,
            self.engine.url.render_as_string(hide_password=True),
            self.web_port,
        )
        self.ready.set()
        try:
            await self._stopped.wait()
        finally:
            await site.cleanup()
            if self.bot is not None:
                await self.bot.stop()  # stops polling and releases the polling lock
            await self.scheduler.stop()
            for task in list(self._fan_outs.values()):
                task.cancel()  # its chunk transaction rolls back; the next start resumes it
            await asyncio.gather(*self._fan_outs.values(), return_exceptions=True)
            await self._stop_workers(tasks)
            await self._stop_bounces(bounces)
            try:
                await self.heartbeat.stop(self.engine)
            except Exception:  # database away: the row goes stale and another process reaps it
                log.warning("worker row not deleted worker_id=%s", self.worker_id, exc_info=True)
            for worker in self.workers:
                await worker.channel.aclose()
            await self.engine.dispose()

    async def _stop_workers(self, tasks: list[asyncio.Task[None]]) -> None:
        """Stop claiming; sends in flight may finish within the grace period, then are cut off.

        A cut-off send may have reached its server: its row goes back to the queue and is sent
        again (at least once; Mastodon's Idempotency-Keys make a repeated thread part harmless).
        """
        for worker in self.workers:
            worker.stop()
        grace = self.settings.delivery.shutdown_grace_seconds
        _done, pending = await asyncio.wait(tasks, timeout=grace) if tasks else (set(), set())
        if pending:
            log.warning(
                "shutdown grace period over grace_seconds=%s: cutting off sends in flight",
                grace,
            )
            for task in pending:
                task.cancel()  # the worker's cleanup writes outcomes and returns its claims
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop_bounces(self, task: asyncio.Task[None] | None) -> None:
        """The reader ends after the message in hand (its IMAP calls time out on their own)."""
        if task is None or self.bounces is None:
            return
        self.bounces.stop()
        try:
            await asyncio.wait_for(task, self.settings.delivery.shutdown_grace_seconds)
        except TimeoutError:  # cancelled: a message read but not moved is read again next time
            log.warning("bounce reader cut off at shutdown")
        except Exception:
            log.exception("bounce reader failed")

    def stop(self) -> None:
        self._stopped.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
