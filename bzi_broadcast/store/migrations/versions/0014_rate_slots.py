"""rate_slots: rate limits shared by every replica (GCRA), with today's counts carried over

One row per limit and per party of a limit (delivery/ratelimit.py). A daily cap counted in
``rate_limits`` today (by the process-local bucket this replaces) still holds after the upgrade:
the count moves to the new row of the same key. ``rate_limits`` stays until the superseded bucket
goes.

Revision ID: 0014
Revises: 0012
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None

_rate_limits = sa.table(
    "rate_limits",
    sa.column("key", sa.String),
    sa.column("day", sa.String),
    sa.column("day_count", sa.Integer),
)
_rate_slots = sa.table(
    "rate_slots",
    sa.column("key", sa.String),
    sa.column("tat", sa.Float),
    sa.column("day", sa.Integer),
    sa.column("day_count", sa.Integer),
    sa.column("granted", sa.Integer),
)


def upgrade() -> None:
    op.create_table(
        "rate_slots",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("tat", sa.Float(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("day_count", sa.Integer(), nullable=False),
        sa.Column("granted", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_slots")),
    )
    today = datetime.now(UTC)
    counted = op.get_bind().execute(
        sa.select(_rate_limits.c.key, _rate_limits.c.day_count).where(
            _rate_limits.c.day == today.date().isoformat(), _rate_limits.c.day_count > 0
        )
    )
    day = int(today.timestamp() // 86_400)
    rows = [{"key": k, "tat": 0.0, "day": day, "day_count": n, "granted": 0} for k, n in counted]
    if rows:
        op.bulk_insert(_rate_slots, rows)


def downgrade() -> None:
    op.drop_table("rate_slots")
