"""parts of a multi-part delivery (a Mastodon thread): idempotency keys and remote ids

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "delivery_parts",
        sa.Column("delivery_id", Id, nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("remote_id", sa.String(length=200), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            ondelete="CASCADE",
            name=op.f("fk_delivery_parts_delivery_id_deliveries"),
        ),
        sa.PrimaryKeyConstraint("delivery_id", "part", name=op.f("pk_delivery_parts")),
    )


def downgrade() -> None:
    op.drop_table("delivery_parts")
