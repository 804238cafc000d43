"""Parts of a multi-part delivery: each part's Idempotency-Key is stored before its first
attempt, and its remote id as soon as the server answers, so a retry continues, never repeats."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.store.schema import delivery_parts


@dataclass(frozen=True, kw_only=True)
class Part:
    part: int
    idempotency_key: str
    remote_id: str | None = None
    url: str | None = None


class Parts:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def of(self, delivery_id: int) -> dict[int, Part]:
        query = select(delivery_parts).where(delivery_parts.c.delivery_id == delivery_id)
        async with self._engine.connect() as conn:
            return {
                r.part: Part(
                    part=r.part, idempotency_key=r.idempotency_key, remote_id=r.remote_id, url=r.url
                )
                for r in await conn.execute(query)
            }

    async def begin(self, delivery_id: int, part: int, key: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(delivery_parts).values(
                    delivery_id=delivery_id, part=part, idempotency_key=key
                )
            )

    async def done(self, delivery_id: int, part: int, remote_id: str, url: str | None) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(delivery_parts)
                .where(delivery_parts.c.delivery_id == delivery_id, delivery_parts.c.part == part)
                .values(remote_id=remote_id, url=url)
            )
