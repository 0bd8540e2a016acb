"""Queue strategies: a project may follow a batch rule (cover, typiclust, power, diverse) or "auto".

Revision ID: f4a2c8e1d093
Revises: e3b8d51a6c27
Create Date: 2026-12-05 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "f4a2c8e1d093"
down_revision: str | None = "e3b8d51a6c27"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The values as of this revision (not imported from ml: a later vocabulary must not rewrite history).
NEW = ("auto", "bald", "max_entropy", "random", "cover", "typiclust", "power", "diverse")
OLD = ("bald", "max_entropy", "random")


def _check(values: tuple[str, ...]) -> str:
    return f"strategy IN ({', '.join(repr(v) for v in values)})"


def _replace_check(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        with op.batch_alter_table("projects") as batch_op:
            batch_op.drop_constraint(op.f("ck_projects_strategy"), type_="check")
            batch_op.create_check_constraint("strategy", _check(new))
        return
    # SQLite changes a CHECK in place, in the schema text (sqlite.org/lang_altertable.html, "making
    # other kinds of table schema changes": constraints that do not change the stored rows). The usual
    # rebuild would drop the projects table, and with foreign keys on (every lenslab connection turns
    # them on, and the pragma cannot change inside the migration's transaction) dropping it deletes
    # every item, label and job of every project by cascade. The new CHECK holds for every row: a
    # widening on upgrade, and the downgrade first moves the rows it would refuse.
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'projects'").scalar()
    if _check(old) not in (sql or ""):
        raise RuntimeError(f"projects table: expected CHECK ({_check(old)}) in its schema, found {sql!r}")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = 'projects'",
        (_check(old), _check(new)),
    )
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")  # every connection re-reads the schema
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    _replace_check(OLD, NEW)


def downgrade() -> None:
    # Projects on a strategy the old vocabulary lacks go back to BALD top-k, the old default.
    op.execute(f"UPDATE projects SET strategy = 'bald' WHERE NOT ({_check(OLD)})")
    _replace_check(NEW, OLD)
