"""The schema comes only from the migrations, and database trouble answers 503, never 500."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from app.db.base import metadata
from app.db.migrate import alembic_config, current


def test_migrations_build_exactly_the_models_schema(db_url):
    # db_url is a database the migrations built; nothing in the models may differ from it.
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []
    assert current(db_url) is not None


def test_migrations_downgrade_to_empty_and_upgrade_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    engine = sa.create_engine(url)
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    command.upgrade(cfg, "head")
    assert "labels" in sa.inspect(engine).get_table_names()
    engine.dispose()


def test_sqlite_connections_use_wal_and_foreign_keys(app):
    with app.state.db.engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            return
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_a_database_that_is_away_answers_503_with_retry_after(tmp_path):
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(_env_file=None, database_url="postgresql://nobody@127.0.0.1:1/none", data_dir=tmp_path))
    with TestClient(app) as client:
        r = client.get("/api/v1/projects", headers={"Authorization": "Bearer ll_whatever"})
    assert r.status_code == 503 and r.headers["retry-after"] and "retry" in r.json()["detail"]


def test_a_sqlite_write_lock_held_too_long_answers_503_not_500(settings, accounts, tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app

    if not settings.is_sqlite:
        return
    impatient = settings.model_copy(update={"sqlite_busy_timeout_ms": 200})
    app = create_app(impatient)
    path = sa.make_url(settings.database_url).database
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        with TestClient(app) as client:
            r = client.post("/api/v1/tokens", json={"name": "x"}, headers=accounts.headers("viewer"))
        assert r.status_code == 503 and r.headers["retry-after"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        app.state.db.dispose()


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    assert "/api/v1/projects/{pid}/queue/next" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_the_queue_strategy_migration_keeps_every_row_and_the_check(tmp_path):
    # SQLite rebuilds the projects table to change its CHECK; with foreign keys on, dropping the old
    # table would cascade-delete the project's items. The migration must keep them, and the new CHECK.
    url = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "e3b8d51a6c27")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO projects (id, name, representation, strategy, settings, created_at) "
            "VALUES (1, 'p', '{}', 'max_entropy', '{}', '2026-12-05 00:00:00')"
        )
        for i in range(3):
            conn.exec_driver_sql(
                "INSERT INTO items (project_id, source_index, split, random_key, label_count, labelled, skip_count, "
                f"created_at) VALUES (1, {i}, 'pool', 0.5, 0, 0, 0, '2026-12-05 00:00:00')"
            )
    command.upgrade(cfg, "head")
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM items").scalar() == 3
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        assert conn.exec_driver_sql("SELECT strategy FROM projects").scalar() == "max_entropy"
        conn.exec_driver_sql("UPDATE projects SET strategy = 'cover'")
    with engine.connect() as conn:
        try:
            conn.exec_driver_sql("UPDATE projects SET strategy = 'nonsense'")
            raise AssertionError("the CHECK let an unknown strategy through")
        except sa.exc.IntegrityError:
            pass
    command.downgrade(cfg, "e3b8d51a6c27")  # a strategy the old vocabulary lacks goes back to BALD
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT strategy FROM projects").scalar() == "bald"
        assert conn.exec_driver_sql("SELECT count(*) FROM items").scalar() == 3
    engine.dispose()


def test_the_contrastive_source_migration_keeps_every_row_and_downgrades_only_without_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "a9d3e6f0b152")
    engine = sa.create_engine(url)
    rep = (
        "INSERT INTO representations (project_id, source, config, active, created_at) "
        "VALUES (1, '{}', '{{}}', {}, '2026-12-06')"
    )
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO projects (id, name, representation, strategy, settings, created_at) "
            "VALUES (1, 'p', '{}', 'auto', '{}', '2026-12-06 00:00:00')"
        )
        conn.exec_driver_sql(rep.format("vae", 1))
    command.upgrade(cfg, "head")
    with engine.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        conn.exec_driver_sql(rep.format("contrastive", 0))
    with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.exec_driver_sql(rep.format("simclr", 0))
    with pytest.raises(RuntimeError, match="1 representation\\(s\\) use source 'contrastive'"):
        command.downgrade(cfg, "a9d3e6f0b152")
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM representations WHERE source = 'contrastive'")
    command.downgrade(cfg, "a9d3e6f0b152")
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT source FROM representations").scalars().all() == ["vae"]
        with pytest.raises(sa.exc.IntegrityError):
            conn.exec_driver_sql(rep.format("contrastive", 0))
    engine.dispose()
