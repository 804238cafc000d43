"""Fixed-window counters in the ``throttles`` table, shared by every process.

Failed logins per client network and ``/verbinden`` attempts per Telegram chat are counted here;
a window opens with the first count and ends ``window`` later.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import throttles


@dataclass(frozen=True, kw_only=True)
class Window:
    count: int
    ends: datetime

    def seconds_left(self, now: datetime) -> int:
        return max(1, int((self.ends - now).total_seconds() + 0.999))


async def count(engine: AsyncEngine, key: str, window: timedelta) -> int:
    """Count one use of ``key``; the uses in its window, this one included.

    Adding is one conditional UPDATE (atomic on SQLite and PostgreSQL); a new window is an INSERT
    that only one of several racing processes wins. After repeated races it fails closed."""
    for _attempt in range(3):
        now = utcnow()
        live = throttles.c.reset_at > now
        async with engine.begin() as conn:
            added = await conn.execute(
                update(throttles)
                .where(throttles.c.key == key, live)
                .values(count=throttles.c.count + 1)
            )
            if added.rowcount:
                return int(
                    await conn.scalar(select(throttles.c.count).where(throttles.c.key == key)) or 0
                )
        try:
            async with engine.begin() as conn:
                await conn.execute(delete(throttles).where(throttles.c.key == key, ~live))
                await conn.execute(
                    insert(throttles).values(key=key, count=1, reset_at=now + window)
                )
            return 1
        except IntegrityError:
            continue
    return sys.maxsize


async def current(engine: AsyncEngine, key: str) -> Window | None:
    """The live window of ``key``, if any."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(throttles.c.count, throttles.c.reset_at).where(
                    throttles.c.key == key, throttles.c.reset_at > utcnow()
                )
            )
        ).first()
    return Window(count=int(row[0]), ends=row[1]) if row is not None else None


def network(ip: str | None) -> str | None:
    """What counts as one client: an IPv4 address, or an IPv6 address's /64 (one customer's
    prefix: its holder can pick any address in it). None when there is no address to count."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
