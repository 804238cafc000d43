"""staff Telegram chats proven by a one-time code; login throttling

Chat ids typed in by hand were never proven to be the staff member's own private chat (a channel
id posted unapproved drafts to the public): they are cleared, and each person links their chat
again with /verbinden. Login throttling counts in the existing ``throttles`` table.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.execute("UPDATE users SET telegram_chat_id = NULL")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("telegram_linked_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "staff_telegram_codes",
        sa.Column("user_id", Id, nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_staff_telegram_codes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_staff_telegram_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_staff_telegram_codes_code_hash")),
    )


def downgrade() -> None:
    op.drop_table("staff_telegram_codes")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("telegram_linked_at")
