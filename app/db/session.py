"""Engines and sessions: SQLite gets WAL, foreign keys and a busy timeout; writes take the lock up front."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import Request
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings

ANALYSIS_LIMIT = 1000  # rows SQLite's ANALYZE samples per index
# Execution option carrying how a SQLite transaction begins ("IMMEDIATE" for request handlers that write).
SQLITE_BEGIN = "lenslab_sqlite_begin"


def _prepare_sqlite_dir(url: sa.URL) -> None:
    db = url.database
    if db and db != ":memory:" and not db.startswith("file:"):
        Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _in_memory(url: sa.URL) -> bool:
    db = url.database or ""
    return db in ("", ":memory:") or "mode=memory" in db or "mode=memory" in str(url.query)


def create_db_engine(settings: Settings, **kwargs: Any) -> sa.Engine:
    """An engine for ``settings.database_url`` with lenslab's connection set-up applied."""
    url = sa.make_url(settings.database_url)
    if url.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_size", settings.db_pool_size)
        kwargs.setdefault("max_overflow", settings.db_pool_size * 2)
        kwargs.setdefault("pool_pre_ping", True)
        return sa.create_engine(url, **kwargs)

    _prepare_sqlite_dir(url)
    kwargs.setdefault("connect_args", {})
    kwargs["connect_args"].setdefault("check_same_thread", False)
    kwargs["connect_args"].setdefault("timeout", settings.sqlite_busy_timeout_ms / 1000)
    engine = sa.create_engine(url, **kwargs)
    busy_ms = settings.sqlite_busy_timeout_ms

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # pysqlite's own BEGIN handling is disabled so that the "begin" hook below decides the mode.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    def _on_checkout(dbapi_conn: sqlite3.Connection, record: Any, _proxy: Any) -> None:
        # A connection plans with the statistics it loaded when it opened: another connection's ANALYZE
        # (the worker's, after each job) bumps the schema version but is not reloaded here, so the
        # queue would keep sorting every free item. Reloading in place (ANALYZE sqlite_schema) needs the
        # write lock; a fresh connection does not: the pool replaces this one when the version moved.
        version = dbapi_conn.execute("PRAGMA schema_version").fetchone()[0]
        seen = record.info.setdefault("schema_version", version)
        if seen != version:
            raise sa.exc.DisconnectionError("the schema version moved (statistics or tables changed)")

    if not _in_memory(url):  # a new connection to an in-memory database would be a new, empty one
        event.listen(engine, "checkout", _on_checkout)

    # SQLite admits one writer. Writers of this process queue on a Python lock (first come, first
    # served) instead of polling in SQLite's busy handler, whose growing sleeps starve some requests for
    # seconds under 32 concurrent clients. Other processes still meet busy_timeout.
    writer = threading.Lock()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY when another
        # writer committed in between (the busy handler is not consulted); IMMEDIATE waits for the lock.
        mode = conn.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
        if mode == "IMMEDIATE":
            if not writer.acquire(timeout=busy_ms / 1000):
                raise sa.exc.OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))
            conn.info["lenslab_writer"] = True
        try:
            conn.exec_driver_sql(f"BEGIN {mode}")
        except BaseException:
            _release(conn)
            raise

    def _release(conn: sa.Connection) -> None:
        if conn.info.pop("lenslab_writer", False):
            writer.release()

    event.listen(engine, "commit", _release)
    event.listen(engine, "rollback", _release)

    return engine


class Database:
    """An engine plus the two session factories the app uses (reads and writes)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_db_engine(settings)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.read_sessions = sessionmaker(self.engine, expire_on_commit=False)
        write_engine = self.engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"}) if self.is_sqlite else self.engine
        self.write_sessions = sessionmaker(write_engine, expire_on_commit=False)

    def session(self, *, write: bool = True) -> Session:
        """A new session; ``write=True`` takes SQLite's write lock at the first statement."""
        return (self.write_sessions if write else self.read_sessions)()

    def refresh_statistics(self) -> None:
        """Give SQLite's query planner the tables' current shape (ANALYZE, sampled); PostgreSQL's autovacuum does it.

        Without statistics SQLite orders the queue's scored hand-out by walking every free item and
        sorting (2.0 ms on 2,800 items, inside the write lock); with them it walks the score index from
        the top and stops at the first free items (0.06 ms). ``analysis_limit`` samples each index, so
        this stays fast on millions of rows. The worker calls it after every job it finishes successfully;
        connections of other processes pick the statistics up when the pool hands them out next.
        """
        if not self.is_sqlite:
            return
        with self.session() as s:
            s.execute(sa.text(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}"))
            s.execute(sa.text("ANALYZE"))
            s.commit()

    def dispose(self) -> None:
        self.engine.dispose()


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def get_db(request: Request) -> AsyncIterator[Session]:
    """FastAPI dependency: one session per request, rolled back unless a service committed.

    async on purpose: creating a session does no I/O, and closing one is a local rollback, so this
    saves two worker-thread hops per request (they add up under 32 concurrent clients).
    """
    db: Database = request.app.state.db
    session = db.session(write=request.method not in SAFE_METHODS)
    try:
        yield session
    finally:
        session.close()
