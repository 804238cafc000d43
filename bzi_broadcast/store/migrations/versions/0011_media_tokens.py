"""media under unguessable ids, private until published

Every image gets a random token (128 bits, URL-safe) that replaces its sequential id in
``/medien/`` addresses; announcements that name an image by its old address are rewritten to the
new one. ``published_at`` marks an image an anonymous visitor may see; images of announcements
released before this migration are marked at once.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_OLD_ADDRESS = re.compile(r"/medien/(\d+)$")
_NEW_ADDRESS = re.compile(r"/medien/([A-Za-z0-9_-]{22})$")
_media = sa.table(
    "media",
    sa.column("id", sa.Integer),
    sa.column("token", sa.String),
    sa.column("published_at", sa.DateTime),
)
_announcements = sa.table(
    "announcements",
    sa.column("id", sa.Integer),
    sa.column("content", sa.JSON),
    sa.column("released_at", sa.DateTime),
)


def upgrade() -> None:
    with op.batch_alter_table("media", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
    conn = op.get_bind()
    tokens = {row.id: secrets.token_urlsafe(16) for row in conn.execute(sa.select(_media.c.id))}
    for media_id, token in tokens.items():
        conn.execute(_media.update().where(_media.c.id == media_id).values(token=token))
    _readdress(conn, _OLD_ADDRESS, lambda old: tokens.get(int(old)))
    with op.batch_alter_table("media", schema=None) as batch_op:
        batch_op.alter_column("token", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_media_token"), ["token"])


def downgrade() -> None:
    conn = op.get_bind()
    ids = {row.token: str(row.id) for row in conn.execute(sa.select(_media.c.id, _media.c.token))}
    _readdress(conn, _NEW_ADDRESS, ids.get)
    with op.batch_alter_table("media", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_media_token"), type_="unique")
        batch_op.drop_column("published_at")
        batch_op.drop_column("token")


def _readdress(conn: Any, address: re.Pattern[str], new_key: Any) -> None:
    """Point every announcement's image from its ``address`` form to the other one; an image of
    a released announcement is published (it went out with it)."""
    now = datetime.now(UTC)
    if conn.dialect.name == "sqlite":  # naive UTC there, as schema.UTCDateTime stores it
        now = now.replace(tzinfo=None)
    rows = conn.execute(
        sa.select(_announcements.c.id, _announcements.c.content, _announcements.c.released_at)
    ).all()
    for row in rows:
        content = row.content if isinstance(row.content, dict) else json.loads(row.content)
        image = content.get("image") or {}
        found = address.search(str(image.get("src", "")))
        key = new_key(found.group(1)) if found else None
        if found is None or key is None:
            continue
        image["src"] = image["src"][: found.start(1)] + key
        conn.execute(
            _announcements.update()
            .where(_announcements.c.id == row.id)
            .values(content={**content, "image": image})
        )
        if row.released_at is not None and address is _OLD_ADDRESS:
            conn.execute(_media.update().where(_media.c.token == key).values(published_at=now))
