"""announcements: translation_group links the language versions of one announcement

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("announcements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("translation_group", sa.String(length=100)))
        batch_op.create_index(
            batch_op.f("ix_announcements_translation_group"), ["translation_group"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("announcements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_announcements_translation_group"))
        batch_op.drop_column("translation_group")
