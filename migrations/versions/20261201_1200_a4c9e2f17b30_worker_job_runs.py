"""Worker: job_runs (one row per claim of a job) and one stored version/representation per job.

Revision ID: a4c9e2f17b30
Revises: 5dfb178d06d5
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a4c9e2f17b30"
down_revision: str | None = "5dfb178d06d5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTCOMES = "outcome IN ('succeeded', 'failed', 'cancelled', 'lost', 'interrupted', 'superseded')"


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.CheckConstraint(OUTCOMES, name=op.f("ck_job_runs_outcome")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_runs_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
        sa.UniqueConstraint("job_id", "attempt", name=op.f("uq_job_runs_job_id_attempt")),
    )
    # Plain unique indexes (not constraints): SQLite adds them without rebuilding the tables, which keeps
    # their partial "one active" indexes intact.
    op.create_index("uq_model_versions_job_id", "model_versions", ["job_id"], unique=True)
    op.create_index("uq_representations_job_id", "representations", ["job_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_representations_job_id", table_name="representations")
    op.drop_index("uq_model_versions_job_id", table_name="model_versions")
    op.drop_table("job_runs")
