"""Run the Alembic migrations from code: the only way lenslab creates or changes its schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at ``migrations/`` and the given database URL."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision`` (default: the latest)."""
    command.upgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at, or None for an empty database."""
    import sqlalchemy as sa
    from alembic.runtime.migration import MigrationContext

    from app.config import Settings
    from app.db.session import create_db_engine

    engine = create_db_engine(Settings(database_url=url))
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except sa.exc.OperationalError:
        return None
    finally:
        engine.dispose()


def head() -> str | None:
    """The newest revision in ``migrations/`` (what ``upgrade`` brings a database to)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
