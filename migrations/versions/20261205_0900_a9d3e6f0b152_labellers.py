"""Overlap: per item the number of distinct experts with a live label; labels that adjudicate a disagreement.

Revision ID: a9d3e6f0b152
Revises: f4a2c8e1d093
Create Date: 2026-12-05 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a9d3e6f0b152"
down_revision: str | None = "f4a2c8e1d093"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("labels", sa.Column("adjudicated", sa.Boolean(), nullable=False, server_default=sa.false()))
    # NOT NULL with a constant default: an in-place ADD COLUMN on SQLite, no rebuild.
    op.add_column("items", sa.Column("labellers", sa.Integer(), nullable=False, server_default="0"))
    # Existing labels: a label whose author was deleted counts as its own expert.
    op.execute(
        """
        UPDATE items SET labellers = (
            SELECT COUNT(DISTINCT COALESCE(l.user_id, -l.id)) FROM labels l
            WHERE l.item_id = items.id AND l.kind = 'label'
              AND NOT EXISTS (SELECT 1 FROM labels r WHERE r.retracts_id = l.id)
        )
        WHERE label_count > 0
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("items") as batch_op:
        batch_op.drop_column("labellers")
    with op.batch_alter_table("labels") as batch_op:
        batch_op.drop_column("adjudicated")
