"""The declared schema. Alembic migrations must produce exactly this (a test compares them).

Times are stored as UTC (naive on SQLite, ``timestamptz`` on PostgreSQL) and always read back as
aware UTC datetimes, so no code ever compares a naive time with an aware one.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every engine."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _now_column(name: str) -> Column[datetime]:
    return Column(name, UTCDateTime(), nullable=False)


announcements = Table(
    "announcements",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("title", String(200), nullable=False),
    Column("language", String(2), nullable=False),
    Column("content", JSON, nullable=False),
    Column("status", String(20), nullable=False),
    Column("publish_at", UTCDateTime()),
    Column("expires_at", UTCDateTime()),
    Column("released_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    Column("fanout_cursor", Id),  # last subscriber id fanned out; NULL when done
    Column("translation_group", String(100), index=True),  # language versions of one message
    _now_column("created_at"),
    _now_column("updated_at"),
    # Every edit raises the version; an edit based on an older one is refused (stale edit).
    Column("version", Integer, nullable=False, default=1, server_default="1"),
    Column("author_id", Id, ForeignKey("users.id", ondelete="SET NULL")),
    Column("submitted_by", Id, ForeignKey("users.id", ondelete="SET NULL")),
    Column("approved_by", Id, ForeignKey("users.id", ondelete="SET NULL")),
    Column("approved_at", UTCDateTime()),
    Index(None, "status", "publish_at"),
)

announcement_topics = Table(
    "announcement_topics",
    metadata,
    Column(
        "announcement_id", Id, ForeignKey("announcements.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("topic", String(64), primary_key=True),
)

announcement_events = Table(
    "announcement_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "announcement_id",
        Id,
        ForeignKey("announcements.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("from_status", String(20)),
    Column("to_status", String(20), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("detail", Text),
    _now_column("at"),
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("email", String(320), unique=True),  # None for someone who only uses the bot
    Column("telegram_chat_id", Id, unique=True),  # set when the person started the bot
    Column("name", String(200)),
    Column("language", String(2), nullable=False),
    Column("status", String(20), nullable=False),
    Column("source", String(20), nullable=False),
    _now_column("created_at"),
    _now_column("updated_at"),
    Column("confirmed_at", UTCDateTime()),
    Column("confirmation_sent_at", UTCDateTime()),
    Column("paused_until", UTCDateTime()),  # no deliveries before this time
    Column("consent_version", String(20)),
    # Random, in every link's token: links of an erased person never fit anyone else.
    Column("link_key", String(32), nullable=False, default=lambda: secrets.token_hex(16)),
    # Set with the address's entry in the suppression list; release skips the row until the
    # person confirms again (a fresh double opt-in lifts both).
    Column("suppressed_at", UTCDateTime()),
    Index(None, "status"),
    sqlite_autoincrement=True,  # an erased person's id is never handed to someone new
)

# The consent proof, append-only: rows are only ever inserted (erasure deletes the subscriber and
# with it, by cascade, its rows; the suppression list keeps the keyed hash).
consent_events = Table(
    "consent_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "subscriber_id",
        Id,
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("at", UTCDateTime(), nullable=False),
    Column("event", String(30), nullable=False),
    Column("channel", String(20)),
    Column("source", String(20)),
    Column("ip", String(64)),
    Column("consent_version", String(20)),
    Column("detail", Text),
)

# Fixed-window counters for rate limits shared by every process (sign-ups per IP and address).
throttles = Table(
    "throttles",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("reset_at", UTCDateTime(), nullable=False),
)

subscriber_topics = Table(
    "subscriber_topics",
    metadata,
    Column("subscriber_id", Id, ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True),
    Column("topic", String(64), primary_key=True),
    Index(None, "topic"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("email_hash", String(64), primary_key=True),
    Column("reason", String(40), nullable=False),
    Column("detail", Text),
    _now_column("created_at"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "announcement_id", Id, ForeignKey("announcements.id", ondelete="CASCADE"), nullable=False
    ),
    Column("channel", String(20), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("subscriber_id", Id, ForeignKey("subscribers.id", ondelete="SET NULL")),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("lease_until", UTCDateTime()),
    Column("worker", String(100)),
    Column("last_error", Text),
    Column("remote_id", String(200)),
    Column("sent_at", UTCDateTime()),
    UniqueConstraint("announcement_id", "channel", "recipient"),
    Index(None, "channel", "status", "next_attempt_at"),
    Index(None, "announcement_id", "status"),
)

delivery_parts = Table(
    "delivery_parts",
    metadata,
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True),
    Column("part", Integer, primary_key=True),
    Column("idempotency_key", String(64), nullable=False),
    Column("remote_id", String(200)),
    Column("url", Text),
    # Mastodon keeps an Idempotency-Key for an hour; after that a retry looks the part up first.
    Column("first_attempt_at", UTCDateTime()),
    Column("deleted_at", UTCDateTime()),  # staff deleted the posted part of an incomplete thread
)

# Bounces and complaints read back from the bounce mailbox (bzi_broadcast/bounces/): one row per
# delivery and kind, so a report read twice (two replicas, a retry after a crash) counts once.
bounces = Table(
    "bounces",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column(
        "announcement_id", Id, ForeignKey("announcements.id", ondelete="CASCADE"), nullable=False
    ),
    # erasure takes the person's reports along (their diagnostics name the address)
    Column("subscriber_id", Id, ForeignKey("subscribers.id", ondelete="CASCADE")),
    Column("kind", String(20), nullable=False),  # hard, soft, complaint
    Column("status", String(12)),  # the enhanced status code, 5.1.1
    Column("detail", Text),
    _now_column("at"),
    UniqueConstraint("delivery_id", "kind"),
    Index(None, "announcement_id", "kind"),
    Index(None, "subscriber_id", "kind", "at"),
)

channel_state = Table(
    "channel_state",
    metadata,
    Column("channel", String(20), primary_key=True),
    Column("paused", Boolean, nullable=False),
    Column("reason", Text),
    _now_column("changed_at"),
)

# Serving processes (delivery/heartbeat.py): each beats its row every ``heartbeat_seconds``; the
# claims of a process whose row went quiet go back to the queue (``deliveries.worker``).
workers = Table(
    "workers",
    metadata,
    Column("worker_id", String(100), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("heartbeat_seconds", Float, nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("heartbeat_at", UTCDateTime(), nullable=False),
)

rate_limits = Table(
    "rate_limits",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("day", String(10), nullable=False),
    Column("day_count", Integer, nullable=False),
    _now_column("updated_at"),
)

# Rate limits shared by every replica (delivery/ratelimit.py): one row per limit, and one per
# party of a limit ("telegram:123/chat:42"). ``tat`` is GCRA's theoretical arrival time, in
# seconds since 1970 on the database's clock; ``day`` the UTC day (days since 1970) ``day_count``
# counts; ``granted`` the slots the last grant gave (RETURNING shows only the new row).
rate_slots = Table(
    "rate_slots",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("tat", Float, nullable=False),
    Column("day", Integer, nullable=False),
    Column("day_count", Integer, nullable=False),
    Column("granted", Integer, nullable=False),
)

# Staff: editors draft, publishers approve and send, admins manage users and settings.
users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("role", String(20), nullable=False),
    Column("password_hash", String(200), nullable=False),  # argon2id, with its parameters
    Column("language", String(2), nullable=False),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("lockouts", Integer, nullable=False, default=0),
    Column("locked_until", UTCDateTime()),
    _now_column("created_at"),
    # Where "send a test to me" goes on Telegram: only a private chat proven by a one-time code
    # sent to the bot from it (``staff_telegram_codes``), linked at ``telegram_linked_at``.
    Column("telegram_chat_id", Id),
    Column("telegram_linked_at", UTCDateTime()),
)

# The one-time code a staff member sends to the bot (/verbinden) to prove their private chat:
# one per user (a new one replaces it), valid minutes, kept only as a keyed hash.
staff_telegram_codes = Table(
    "staff_telegram_codes",
    metadata,
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("code_hash", String(64), nullable=False, unique=True),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# Server-side sessions; the cookie holds a random id, the table only its SHA-256.
sessions = Table(
    "sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    _now_column("created_at"),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# Every staff action, append-only.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False, index=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="SET NULL")),
    Column("action", String(60), nullable=False),
    Column("detail", Text),
    Column("ip", String(64)),
)

# Bearer tokens for the REST API, one or more per user; only their SHA-256 is stored.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(100), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    _now_column("created_at"),
    Column("last_used_at", UTCDateTime()),
    Column("revoked_at", UTCDateTime()),
)

# Uploaded images (the editor's image block), kept in the database so every replica serves them.
# Addressed by ``token`` (128 random bits), never by the sequential id; ``published_at`` is set
# the first time an anonymous request finds a released announcement that uses the image.
media = Table(
    "media",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("token", String(32), nullable=False, unique=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("content_type", String(40), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("user_id", Id, ForeignKey("users.id", ondelete="SET NULL")),
    _now_column("created_at"),
    Column("published_at", UTCDateTime()),
)
