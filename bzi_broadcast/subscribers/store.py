"""Subscribers for delivery: email, language, topics, status; CSV import; suppression.

Addresses are stored lower-cased (one person, one row). The suppression list keeps only a keyed
hash (HMAC-SHA256) of an address, so a later import cannot add a bounced or erased address again.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import (
    consent_events,
    subscriber_topics,
    subscribers,
    suppressions,
)
from bzi_broadcast.subscribers.consent import ConsentEvent

_ADDRESS = re.compile(
    r"^[^@\s<>(),;:\"\[\]\\]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TOPIC = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
BATCH_SIZE = 1000


class SubscriberStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"


def normalize_email(value: str) -> str | None:
    address = value.strip().lower()
    return address if len(address) <= 254 and _ADDRESS.match(address) else None


def suppression_hash(email: str, key: bytes) -> str:
    return hmac.new(key, email.strip().lower().encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, kw_only=True)
class ImportLine:
    line: int
    email: str
    name: str | None
    language: str
    topics: tuple[str, ...]
    consent_source: str


@dataclass(frozen=True, kw_only=True)
class ImportOptions:
    """``consent_proven``: a note why no confirmation mail is needed (recorded in the proof)."""

    consent_proven: str | None = None
    file_name: str = ""
    consent_version: str | None = None


@dataclass(kw_only=True)
class ImportReport:
    imported: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)


def parse_csv(text: str, report: ImportReport) -> Iterator[ImportLine]:
    """Rows of ``email,consent_source[,name][,language][,topics]`` with a header; problems go to
    ``report``. ``consent_source`` says where each person gave consent (German law asks for it).
    A file ``csv`` cannot read at all (a field over its limit) raises ``csv.Error`` naming the
    line, in the reader's language."""
    reader = csv.DictReader(io.StringIO(text))
    try:
        yield from _parse_rows(reader, report)
    except csv.Error as exc:
        # the DictReader counts a line once it is read whole; the csv reader while reading it
        raise csv.Error(_csv_problem(exc, reader.reader.line_num)) from None


def _parse_rows(reader: csv.DictReader[str], report: ImportReport) -> Iterator[ImportLine]:
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    for required in ("email", "consent_source"):
        if required not in fields:
            report.problems.append(
                (1, _("Kopfzeile ohne Spalte „{column}“").format(column=required))
            )
    if report.problems:
        return
    reader.fieldnames = fields
    seen: set[str] = set()
    for row in reader:
        line = reader.line_num
        parsed = _parse_row(row, line, seen, report)
        if parsed:
            seen.add(parsed.email)
            yield parsed


def _csv_problem(error: csv.Error, line: int) -> str:
    reason = str(error)
    if "field larger than field limit" in reason:  # the one a hostile file provokes on purpose
        limit = f"{csv.field_size_limit():,}".replace(",", ".")
        reason = _("ein Feld ist länger als {limit} Zeichen").format(limit=limit)
    return _("Zeile {line}: {problem}").format(line=line, problem=reason)


def _parse_row(
    row: dict[str, str | None], line: int, seen: set[str], report: ImportReport
) -> ImportLine | None:
    raw = (row.get("email") or "").strip()
    email = normalize_email(raw)
    language = (row.get("language") or "de").strip().lower() or "de"
    topics = tuple(t for t in re.split(r"[;\s]+", (row.get("topics") or "").strip().lower()) if t)
    consent_source = (row.get("consent_source") or "").strip()
    problem = None
    if any(_CONTROL.search(value or "") for value in row.values() if isinstance(value, str)):
        problem = _("Steuerzeichen in der Zeile")
    elif email is None:
        problem = _("ungültige E-Mail-Adresse „{value}“").format(value=raw)
    elif not consent_source:
        problem = _("keine Angabe, wo die Einwilligung gegeben wurde (Spalte „consent_source“)")
    elif len(consent_source) > 500:
        problem = _("„consent_source“ ist länger als 500 Zeichen")
    elif email in seen:
        problem = _("doppelte Adresse {email}").format(email=email)
    elif language not in ("de", "en"):
        problem = _("unbekannte Sprache „{value}“ (erlaubt: de, en)").format(value=language)
    elif bad := [t for t in topics if not _TOPIC.match(t)]:
        problem = _("ungültiges Thema „{value}“").format(value=bad[0])
    if problem or email is None:
        report.problems.append((line, problem or ""))
        return None
    name = (row.get("name") or "").strip() or None
    return ImportLine(
        line=line,
        email=email,
        name=name[:200] if name else None,
        language=language,
        topics=topics,
        consent_source=consent_source,
    )


async def import_lines(
    engine: AsyncEngine,
    lines: Sequence[ImportLine],
    report: ImportReport,
    key: bytes,
    options: ImportOptions = ImportOptions(),
) -> None:
    """Insert in batches, each atomic; known and suppressed addresses are reported, not added.

    Imported people are unconfirmed (the service mails them a confirmation link) unless
    ``options.consent_proven`` says why their consent is already proven."""
    for start in range(0, len(lines), BATCH_SIZE):
        batch = lines[start : start + BATCH_SIZE]
        async with engine.begin() as conn:
            fresh = await _without_known(conn, batch, report, key)
            await _insert(conn, fresh, options)
            report.imported += len(fresh)


async def _without_known(
    conn: AsyncConnection, batch: Sequence[ImportLine], report: ImportReport, key: bytes
) -> list[ImportLine]:
    emails = [item.email for item in batch]
    known = set(
        (
            await conn.execute(select(subscribers.c.email).where(subscribers.c.email.in_(emails)))
        ).scalars()
    )
    hashes = {suppression_hash(e, key): e for e in emails}
    suppressed = {
        hashes[h]
        for h in (
            await conn.execute(
                select(suppressions.c.email_hash).where(suppressions.c.email_hash.in_(list(hashes)))
            )
        ).scalars()
    }
    fresh = []
    for item in batch:
        if item.email in known:
            report.problems.append(
                (item.line, _("{email} ist bereits eingetragen").format(email=item.email))
            )
        elif item.email in suppressed:
            report.problems.append(
                (
                    item.line,
                    _("{email} ist gesperrt (Abmeldung, Bounce oder Löschung)").format(
                        email=item.email
                    ),
                )
            )
        else:
            fresh.append(item)
    return fresh


async def _insert(
    conn: AsyncConnection, items: Sequence[ImportLine], options: ImportOptions
) -> None:
    if not items:
        return
    now = utcnow()
    proven = options.consent_proven is not None
    rows = [
        {
            "email": i.email,
            "name": i.name,
            "language": i.language,
            "status": str(SubscriberStatus.ACTIVE if proven else SubscriberStatus.PENDING),
            "source": "import",
            "created_at": now,
            "updated_at": now,
            "confirmed_at": now if proven else None,
            "consent_version": options.consent_version,
        }
        for i in items
    ]
    await conn.execute(insert(subscribers), rows)
    ids = dict(
        (
            await conn.execute(
                select(subscribers.c.email, subscribers.c.id).where(
                    subscribers.c.email.in_([i.email for i in items])
                )
            )
        ).all()
    )
    topics = [{"subscriber_id": ids[i.email], "topic": t} for i in items for t in set(i.topics)]
    if topics:
        await conn.execute(insert(subscriber_topics), topics)
    events = []
    for i in items:
        base = {"subscriber_id": ids[i.email], "at": now, "channel": "email", "source": "import"}
        detail = {"consent_source": i.consent_source, "file": options.file_name, "line": i.line}
        events.append(
            {
                **base,
                "event": str(ConsentEvent.SIGNED_UP),
                "consent_version": options.consent_version,
                "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True),
            }
        )
        if proven:
            note = {"consent_proven": options.consent_proven}
            events.append(
                {
                    **base,
                    "event": str(ConsentEvent.CONFIRMED),
                    "consent_version": options.consent_version,
                    "detail": json.dumps(note, ensure_ascii=False),
                }
            )
    await conn.execute(insert(consent_events), events)


async def suppress(
    engine: AsyncEngine, email: str, *, reason: str, detail: str | None, key: bytes
) -> None:
    """Mark the subscriber bounced and suppressed, and remember the address's hash; only a
    confirmed fresh sign-up (``Subscriptions.confirm``) lifts both."""
    async with engine.begin() as conn:
        await suppress_in(conn, email, reason=reason, detail=detail, key=key)


async def suppress_in(
    conn: AsyncConnection, email: str, *, reason: str, detail: str | None, key: bytes
) -> None:
    """``suppress`` inside the caller's transaction (a bounce read back, with its record)."""
    digest = suppression_hash(email, key)
    now = utcnow()
    await conn.execute(
        update(subscribers)
        .where(subscribers.c.email == email.lower())
        .values(status=str(SubscriberStatus.BOUNCED), updated_at=now, suppressed_at=now)
    )
    exists = (
        await conn.execute(
            select(suppressions.c.email_hash).where(suppressions.c.email_hash == digest)
        )
    ).first()
    if not exists:
        await conn.execute(
            insert(suppressions).values(
                email_hash=digest, reason=reason, detail=(detail or "")[:500], created_at=now
            )
        )


async def set_telegram_chat(
    engine: AsyncEngine, subscriber_id: int | None, chat_id: int | None
) -> None:
    """Store a migrated chat id, or forget the chat of someone who blocked the bot (None)."""
    if subscriber_id is None:
        return
    async with engine.begin() as conn:
        await conn.execute(
            update(subscribers)
            .where(subscribers.c.id == subscriber_id)
            .values(telegram_chat_id=chat_id, updated_at=utcnow())
        )
