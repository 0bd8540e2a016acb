"""Alembic environment: the URL comes from lenslab's settings; batch mode lets SQLite alter tables."""

from __future__ import annotations

from alembic import context

from app.config import Settings
from app.db import models  # noqa: F401  (registers every table on the metadata)
from app.db.base import metadata
from app.db.session import create_db_engine

config = context.config


def _url() -> str:
    return (
        config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url") or Settings().database_url
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_db_engine(Settings(database_url=_url()))
    try:
        with engine.connect() as conn:
            context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
