"""Cold start: each pool item's place in the diversity order the queue follows before the first lens.

Revision ID: e3b8d51a6c27
Revises: c71e5a0b9d42
Create Date: 2026-12-05 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e3b8d51a6c27"
down_revision: str | None = "c71e5a0b9d42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable ADD COLUMN: no table rebuild on SQLite.
    op.add_column("items", sa.Column("cold_rank", sa.Integer(), nullable=True))
    op.create_index("ix_items_project_cold_rank", "items", ["project_id", "cold_rank"])


def downgrade() -> None:
    op.drop_index("ix_items_project_cold_rank", table_name="items")
    with op.batch_alter_table("items") as batch_op:
        batch_op.drop_column("cold_rank")
