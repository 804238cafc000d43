"""bounces: hard and soft bounces and complaints read back from the bounce mailbox

One row per delivery and kind (``bzi_broadcast/bounces/effects.py``).

Revision ID: 0015
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bounces",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("delivery_id", Id, nullable=False),
        sa.Column("announcement_id", Id, nullable=False),
        sa.Column("subscriber_id", Id, nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            ondelete="CASCADE",
            name=op.f("fk_bounces_delivery_id_deliveries"),
        ),
        sa.ForeignKeyConstraint(
            ["announcement_id"],
            ["announcements.id"],
            ondelete="CASCADE",
            name=op.f("fk_bounces_announcement_id_announcements"),
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            ondelete="CASCADE",
            name=op.f("fk_bounces_subscriber_id_subscribers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bounces")),
        sa.UniqueConstraint("delivery_id", "kind", name=op.f("uq_bounces_delivery_id_kind")),
    )
    op.create_index(op.f("ix_bounces_announcement_id_kind"), "bounces", ["announcement_id", "kind"])
    op.create_index(
        op.f("ix_bounces_subscriber_id_kind_at"), "bounces", ["subscriber_id", "kind", "at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_bounces_subscriber_id_kind_at"), table_name="bounces")
    op.drop_index(op.f("ix_bounces_announcement_id_kind"), table_name="bounces")
    op.drop_table("bounces")
