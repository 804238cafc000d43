"""subscriber ids never reused; a random key per subscriber binds its links

On SQLite the table is rebuilt with AUTOINCREMENT (``sqlite_sequence`` starts at the highest id
held anywhere); PostgreSQL's sequence never hands out an id twice already. Every existing row
gets its own random link key. ``engine.migrate`` runs this with SQLite's foreign keys off, so the
rebuild does not cascade into the consent log, topics and deliveries.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

subscribers = sa.table("subscribers", sa.column("id", sa.Integer), sa.column("link_key", sa.String))


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("link_key", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("suppressed_at", sa.DateTime(timezone=True)))
    bind = op.get_bind()
    ids = bind.execute(sa.select(subscribers.c.id)).scalars().all()
    for subscriber_id in ids:
        bind.execute(
            sa.update(subscribers)
            .where(subscribers.c.id == subscriber_id)
            .values(link_key=secrets.token_hex(16))
        )
    if bind.dialect.name == "sqlite":
        _rebuild_with_autoincrement(bind)
    else:
        with op.batch_alter_table("subscribers", schema=None) as batch_op:
            batch_op.alter_column("link_key", existing_type=sa.String(length=32), nullable=False)
        # rows written with explicit ids (a restore) must not meet the sequence later
        sequence = bind.execute(sa.text("SELECT pg_get_serial_sequence('subscribers', 'id')"))
        if name := sequence.scalar():
            bind.execute(
                sa.text(
                    "SELECT setval(:s, GREATEST(coalesce((SELECT max(id) FROM subscribers), 0),"
                    " nextval(:s)))"
                ),
                {"s": name},
            )


def _rebuild_with_autoincrement(bind: sa.Connection) -> None:
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("migration 0012 needs SQLite's foreign keys off (engine.migrate)")
    with op.batch_alter_table(
        "subscribers", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.alter_column("link_key", existing_type=sa.String(length=32), nullable=False)
    # the highest id ever seen: deliveries and fan-out cursors may remember erased people
    highest = bind.exec_driver_sql(
        "SELECT max(coalesce((SELECT max(id) FROM subscribers), 0),"
        " coalesce((SELECT max(subscriber_id) FROM deliveries), 0),"
        " coalesce((SELECT max(fanout_cursor) FROM announcements), 0))"
    ).scalar_one()
    bind.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = 'subscribers'")
    bind.exec_driver_sql(
        "INSERT INTO sqlite_sequence (name, seq) VALUES ('subscribers', ?)", (int(highest),)
    )


def downgrade() -> None:
    with op.batch_alter_table(
        "subscribers", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ) as batch_op:
        batch_op.drop_column("suppressed_at")
        batch_op.drop_column("link_key")
