"""subscriber lifecycle: double opt-in, pauses, consent proof log, throttles; email optional
(a Telegram subscriber has none)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.alter_column("email", existing_type=sa.String(length=320), nullable=True)
        batch_op.add_column(sa.Column("confirmed_at", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("confirmation_sent_at", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("paused_until", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("consent_version", sa.String(length=20)))
    op.create_table(
        "consent_events",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("subscriber_id", Id, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(length=30), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=True),
        sa.Column("source", sa.String(length=20), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("consent_version", sa.String(length=20), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            ondelete="CASCADE",
            name=op.f("fk_consent_events_subscriber_id_subscribers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_events")),
    )
    op.create_index(
        op.f("ix_consent_events_subscriber_id"), "consent_events", ["subscriber_id"], unique=False
    )
    op.create_table(
        "throttles",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("reset_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_throttles")),
    )


def downgrade() -> None:
    op.drop_table("throttles")
    op.drop_index(op.f("ix_consent_events_subscriber_id"), table_name="consent_events")
    op.drop_table("consent_events")
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_column("consent_version")
        batch_op.drop_column("paused_until")
        batch_op.drop_column("confirmation_sent_at")
        batch_op.drop_column("confirmed_at")
        batch_op.alter_column("email", existing_type=sa.String(length=320), nullable=False)
