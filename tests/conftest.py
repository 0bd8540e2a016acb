"""Shared fixtures: real databases built by the Alembic migrations (SQLite always, PostgreSQL when
LENSLAB_TEST_POSTGRES_URL is set), an app per test, users with API tokens for each role."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PG_URL = os.environ.get("LENSLAB_TEST_POSTGRES_URL")
TABLES = (
    "metric_points",
    "scores",
    "model_versions",
    "representations",
    "leases",
    "labels",
    "jobs",
    "items",
    "attributes",
    "projects",
    "web_sessions",
    "api_tokens",
    "users",
)


@pytest.fixture(autouse=True, scope="session")
def _cheap_password_hashing() -> Iterator[None]:
    """Argon2 at minimum cost: the tests check behaviour, and production cost (~0.3 s a hash here) adds minutes."""
    from argon2 import PasswordHasher

    from app import security

    saved = security._hasher
    security._hasher = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    yield
    security._hasher = saved


def _pg(url: str, database: str) -> str:
    return sa.make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once; each test gets a copy."""
    from app.db.migrate import upgrade

    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A private PostgreSQL database, migrated to head once, dropped at the end."""
    if not PG_URL:
        pytest.skip("LENSLAB_TEST_POSTGRES_URL is not set (scripts/test.sh starts a server)")
    from app.db.migrate import upgrade

    name = f"lenslab_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = _pg(PG_URL, name)
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A clean, migrated database for one test, on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "lenslab.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_database")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    engine.dispose()
    return url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Any:
    """Settings for a test: its database, a private data dir, the shared data sets as an import root."""
    from app.config import Settings

    return Settings(
        _env_file=None,
        env="development",
        database_url=db_url,
        data_dir=tmp_path / "data",
        import_roots=[SHARED_DATA, tmp_path / "imports"],
        secret_key="test-secret-key-0123456789abcdef",
        max_upload_mb=2,
        lease_seconds=600,
        retrain_every=50,
        eval_fraction=0.0,
    )


@pytest.fixture
def app(settings: Any) -> Iterator[Any]:
    from app.main import create_app

    application = create_app(settings)
    yield application
    application.state.db.dispose()


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.fixture
def db(app: Any) -> Iterator[Any]:
    """A session on the test database, for arranging rows and checking what was stored."""
    with app.state.db.session(write=False) as session:
        yield session


class Accounts:
    """Users of every role with API tokens; ``headers(role)`` authenticates as that role."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.users: dict[str, Any] = {}
        self.tokens: dict[str, str] = {}

    def add(self, username: str, role: str, password: str = "correct horse battery") -> dict[str, str]:
        from app.services import tokens, users

        with self.app.state.db.session() as session:
            user = users.create(session=session, username=username, password=password, role=role)
            _, plaintext = tokens.create(session=session, user=user, name="test")
        self.users[username] = user
        self.tokens[username] = plaintext
        return {"Authorization": f"Bearer {plaintext}"}

    def headers(self, username: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[username]}"}


@pytest.fixture
def accounts(app: Any) -> Accounts:
    acc = Accounts(app)
    for role in ("admin", "expert", "viewer"):
        acc.add(role, role)
    return acc


@pytest.fixture
def admin(accounts: Accounts) -> dict[str, str]:
    return accounts.headers("admin")


@pytest.fixture
def expert(accounts: Accounts) -> dict[str, str]:
    return accounts.headers("expert")


@pytest.fixture
def viewer(accounts: Accounts) -> dict[str, str]:
    return accounts.headers("viewer")


DIGITS_ATTRIBUTES = [
    {"name": "digit", "kind": "categorical", "levels": [str(i) for i in range(10)]},
    {"name": "thickness", "kind": "ordinal", "levels": ["1", "2", "3", "4", "5"]},
]


def create_project(client: Any, headers: dict[str, str], name: str = "digits", **extra: Any) -> dict[str, Any]:
    body = {"name": name, "dataset": {"source": "digits"}, "attributes": DIGITS_ATTRIBUTES, **extra}
    r = client.post("/api/v1/projects", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def project(client: Any, admin: dict[str, str]) -> dict[str, Any]:
    """A digits project (1,797 items) with attributes digit and thickness."""
    return create_project(client, admin)


def count(db: Any, table: str, where: str = "1=1") -> int:
    """Rows in ``table`` matching a SQL condition, read fresh."""
    db.rollback()
    return int(db.execute(sa.text(f"SELECT count(*) FROM {table} WHERE {where}")).scalar())
