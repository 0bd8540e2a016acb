"""Skips: which expert skipped which item until when, and a skip count per item.

Revision ID: c71e5a0b9d42
Revises: a4c9e2f17b30
Create Date: 2026-12-04 23:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c71e5a0b9d42"
down_revision: str | None = "a4c9e2f17b30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "skips",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("lease_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_skips_project_id_projects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name=op.f("fk_skips_item_id_items"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_skips_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_skips")),
    )
    op.create_index("ix_skips_project_user_until", "skips", ["project_id", "user_id", "until"])
    op.create_index("ix_skips_item_id", "skips", ["item_id"])
    # A plain ADD COLUMN with a constant default: SQLite needs no table rebuild, so the items table's
    # indexes stay as they are.
    op.add_column("items", sa.Column("skip_count", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("items") as batch_op:
        batch_op.drop_column("skip_count")
    op.drop_index("ix_skips_item_id", table_name="skips")
    op.drop_index("ix_skips_project_user_until", table_name="skips")
    op.drop_table("skips")
