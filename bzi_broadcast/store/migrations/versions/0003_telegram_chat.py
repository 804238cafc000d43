"""subscribers reachable through the Telegram bot

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("telegram_chat_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"))
        )
        batch_op.create_unique_constraint(
            batch_op.f("uq_subscribers_telegram_chat_id"), ["telegram_chat_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_subscribers_telegram_chat_id"), type_="unique")
        batch_op.drop_column("telegram_chat_id")
