"""Representations: a contrastive base (a SimCLR encoder with a decoder fitted to its codes) is a source.

Revision ID: b7e1f3a9c254
Revises: a9d3e6f0b152
Create Date: 2026-12-06 04:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "b7e1f3a9c254"
down_revision: str | None = "a9d3e6f0b152"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The values as of this revision (not imported from ml: a later vocabulary must not rewrite history).
NEW = ("vae", "contrastive", "classifier", "torchscript", "embeddings")
OLD = ("vae", "classifier", "torchscript", "embeddings")


def _check(values: tuple[str, ...]) -> str:
    return f"source IN ({', '.join(repr(v) for v in values)})"


def _replace_check(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        with op.batch_alter_table("representations") as batch_op:
            batch_op.drop_constraint(op.f("ck_representations_source"), type_="check")
            batch_op.create_check_constraint("source", _check(new))
        return
    # In place, in the schema text, as revision f4a2c8e1d093 does for projects and for the same
    # reason: rebuilding the table would, with foreign keys on, delete every row that references a
    # representation (its z table, its model versions) by cascade. The new CHECK holds for every row.
    sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'representations'"
    ).scalar()
    if _check(old) not in (sql or ""):
        raise RuntimeError(f"representations table: expected CHECK ({_check(old)}) in its schema, found {sql!r}")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = 'representations'",
        (_check(old), _check(new)),
    )
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    _replace_check(OLD, NEW)


def downgrade() -> None:
    # A contrastive representation has no equivalent under the old vocabulary (its checkpoint is not a
    # VAE's): refuse, rather than delete models and their labels' history, until they are removed.
    n = op.get_bind().exec_driver_sql("SELECT count(*) FROM representations WHERE source = 'contrastive'").scalar()
    if n:
        raise RuntimeError(
            f"{n} representation(s) use source 'contrastive', which the older schema cannot hold: "
            "delete them (or their projects) before downgrading"
        )
    _replace_check(NEW, OLD)
