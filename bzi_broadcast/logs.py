"""Service logs: one JSON object per line (containers) or plain text (terminals), secrets masked.

Log calls write stable ``key=value`` fields into their message (``delivery_id=…``,
``announcement_id=…``, ``channel=…``); the JSON formatter lifts those, or the same names passed
as ``extra``, into fields of their own, so a log search can filter by announcement or delivery.

Masking is a filter on the handler, so it covers every logger, the message arguments and
tracebacks alike: the configured secrets (SMTP password, Mastodon and Telegram tokens, the
webhook secret, the signing key, the database password), passwords in URLs, and anything shaped
like a Telegram bot token (``123456:AA…``, as in Bot API URLs) become ``***``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from bzi_broadcast.config import LoggingSettings

MASK = "***"
FIELDS = ("announcement_id", "delivery_id", "channel", "subscriber_id", "worker_id")
MIN_SECRET = 4  # shorter "secrets" would shred every log line and protect nothing
_PAIRS = re.compile(r"\b(" + "|".join(FIELDS) + r")=([^\s,;()]+)")
_PATTERNS = (
    re.compile(r"(?<![\w])\d{5,}:[A-Za-z0-9_-]{20,}"),  # a Telegram bot token, anywhere
    re.compile(r"(?<=/bot)[^/\s]*:[^/\s]+(?=/)"),  # the token in a Bot API path /bot<token>/…
)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]+@")
QUIET = (
    "alembic",
    "apscheduler",
    "httpx",
    "httpcore",
    "telegram",
    "aiosqlite",
    "mail.log",
    "asyncio",
)


class Redactor:
    """Replaces known secrets and secret-shaped strings in a text with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = {s for s in secrets if len(s) >= MIN_SECRET}
        self._secrets = sorted(known, key=len, reverse=True)  # a secret containing another first

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern in _PATTERNS:
            text = pattern.sub(MASK, text)
        return _URL_PASSWORD.sub(rf"\1{MASK}@", text)


class SecretFilter(logging.Filter):
    """Masks a record's message and traceback before any handler formats it."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact
        self._plain = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self._redact(self._plain.formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for name, value in _PAIRS.findall(message):
            entry.setdefault(name, int(value) if value.isdigit() else value)
        for name in FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(
    settings: LoggingSettings, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> logging.Handler:
    """Replace the root logger's handlers with one that masks and formats as configured."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter(Redactor(secrets)))
    handler.setFormatter(
        JsonFormatter()
        if _wants_json(settings.format, stream)
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    for name in QUIET:  # their INFO lines are per request or per job run
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("apscheduler.scheduler").addFilter(_overlapping_sweep)
    return handler


def _overlapping_sweep(record: logging.LogRecord) -> bool:
    """A sweep still running when the next is due skips that one by design (max_instances=1);
    APScheduler's warning about it is noise, seen at every start while migrations run."""
    return "maximum number of running instances reached" not in record.getMessage()


def _wants_json(chosen: str, stream: TextIO) -> bool:
    if chosen == "auto":
        return not (hasattr(stream, "isatty") and stream.isatty())
    return chosen == "json"
