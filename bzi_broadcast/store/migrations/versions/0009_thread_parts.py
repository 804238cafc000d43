"""thread parts: when each part was first attempted, and when staff deleted it

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_COLUMNS = ("first_attempt_at", "deleted_at")


def upgrade() -> None:
    with op.batch_alter_table("delivery_parts", schema=None) as batch_op:
        for column in _COLUMNS:
            batch_op.add_column(sa.Column(column, sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery_parts", schema=None) as batch_op:
        for column in reversed(_COLUMNS):
            batch_op.drop_column(column)
