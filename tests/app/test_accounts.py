"""Accounts, sessions, CSRF, API tokens, settings and the account CLI."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from tests.conftest import count


def _login(client, username="admin", password="correct horse battery"):
    return client.post("/api/v1/auth/login", json={"username": username, "password": password})


def test_login_sets_an_httponly_samesite_session_cookie(client, accounts):
    r = _login(client)
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert r.json()["user"]["role"] == "admin" and r.json()["csrf_token"]
    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200 and me.json()["via"] == "session"


def test_wrong_password_is_refused_and_repeated_failures_are_throttled(client, accounts, settings):
    for _ in range(settings.login_max_failures):
        assert _login(client, password="wrong password!").status_code == 401
    r = _login(client)  # even the right password waits out the window
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_session_id_rotates_at_login_and_the_old_one_stops_working(client, accounts, db):
    _login(client)
    first = client.cookies.get("lenslab_session")
    _login(client)
    second = client.cookies.get("lenslab_session")
    assert first != second
    assert count(db, "web_sessions") == 1
    client.cookies.set("lenslab_session", first)
    assert client.get("/api/v1/auth/me").status_code == 401


def test_cookie_writes_need_the_csrf_token(client, accounts):
    csrf = _login(client).json()["csrf_token"]
    r = client.post("/api/v1/tokens", json={"name": "x"})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = client.post("/api/v1/tokens", json={"name": "x"}, headers={"X-CSRF-Token": "wrong"})
    assert r.status_code == 403
    r = client.post("/api/v1/tokens", json={"name": "x"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201


def test_csrf_token_is_accepted_as_a_form_field(client, accounts):
    csrf = _login(client).json()["csrf_token"]
    assert client.post("/api/v1/auth/logout", data={"csrf_token": "nope"}).status_code == 403
    assert client.post("/api/v1/auth/logout", data={"csrf_token": csrf}).status_code == 200
    assert client.get("/api/v1/auth/me").status_code == 401


def test_bearer_requests_are_exempt_from_csrf(client, admin):
    assert client.post("/api/v1/tokens", json={"name": "ci"}, headers=admin).status_code == 201


def test_token_is_shown_once_stored_hashed_and_revocable(client, viewer, db):
    r = client.post("/api/v1/tokens", json={"name": "laptop"}, headers=viewer)
    assert r.status_code == 201
    token, tid = r.json()["token"], r.json()["id"]
    assert token not in str(client.get("/api/v1/tokens", headers=viewer).json())
    stored = db.execute(sa.text("SELECT token_hash FROM api_tokens WHERE id = :i"), {"i": tid}).scalar()
    assert stored != token and len(stored) == 64
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/projects", headers=bearer).status_code == 200
    listed = {t["id"]: t for t in client.get("/api/v1/tokens", headers=viewer).json()["tokens"]}
    assert listed[tid]["last_used_at"] is not None
    assert client.delete(f"/api/v1/tokens/{tid}", headers=viewer).status_code == 200
    assert client.get("/api/v1/projects", headers=bearer).status_code == 401
    assert client.delete(f"/api/v1/tokens/{tid}", headers=viewer).status_code == 409


def test_another_users_token_cannot_be_revoked_by_a_non_admin(client, accounts, expert, admin):
    tid = client.post("/api/v1/tokens", json={"name": "a"}, headers=admin).json()["id"]
    assert client.delete(f"/api/v1/tokens/{tid}", headers=expert).status_code == 403


def test_malformed_authorization_header_is_401(client, accounts):
    for value in ("Basic abc", "Bearer", "Bearer ll_not-a-token"):
        assert client.get("/api/v1/projects", headers={"Authorization": value}).status_code == 401


def test_responses_carry_security_headers(client):
    r = client.get("/healthz")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "unsafe-inline" not in r.headers["content-security-policy"].split("script-src")[1].split(";")[0]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"]


def test_default_secret_is_refused_outside_development():
    from pydantic import ValidationError

    from app.config import Settings

    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(_env_file=None, env="production")
    assert Settings(_env_file=None, env="production", secret_key="x" * 32).env == "production"


def test_postgres_urls_are_upgraded_to_psycopg():
    from app.config import Settings

    s = Settings(_env_file=None, database_url="postgres://u:p@h/db")
    assert s.database_url == "postgresql+psycopg://u:p@h/db"


def test_import_roots_accept_a_comma_separated_environment_value(monkeypatch):
    from app.config import Settings

    monkeypatch.setenv("LENSLAB_IMPORT_ROOTS", "/a,/b")
    assert [str(p) for p in Settings(_env_file=None).import_roots] == ["/a", "/b"]


@pytest.fixture
def cli_env(monkeypatch, settings):
    from app.config import get_settings

    monkeypatch.setenv("LENSLAB_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("LENSLAB_SECRET_KEY", settings.secret_key)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


CLI_MODULES = ("app.commands.db", "app.commands.users", "app.commands.tokens", "app.commands.demo")


def test_cli_adds_users_and_creates_tokens(cli_env, client, capsys, monkeypatch):
    from app import cli
    from app.cli import main

    monkeypatch.setattr(cli, "COMMAND_MODULES", CLI_MODULES)
    monkeypatch.setenv("PW", "a long password")
    assert main(["users", "add", "alice", "--role", "expert", "--password-env", "PW"]) == 0
    assert main(["users", "add", "alice", "--role", "expert", "--password-env", "PW"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["tokens", "create", "alice"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    r = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert r.json()["user"]["username"] == "alice" and r.json()["user"]["role"] == "expert"
    assert _login(client, "alice", "a long password").status_code == 200
    with pytest.raises(SystemExit):  # argparse refuses an unknown role
        main(["users", "add", "bob", "--role", "wizard", "--generate"])


def test_demo_sets_up_an_admin_and_a_seeded_shapes_project_with_its_pretrain_then_retrain_queued(
    cli_env, client, capsys, monkeypatch, db
):
    from app import cli
    from ml.data import by_eye_levels, make_shapes

    monkeypatch.setattr(cli, "COMMAND_MODULES", CLI_MODULES)
    monkeypatch.delenv("LENSLAB_ADMIN_PASSWORD", raising=False)
    assert cli.main(["demo", "--no-serve", "--items", "600"]) == 0
    out = capsys.readouterr().out
    password = next(line.split(": ", 1)[1] for line in out.splitlines() if "shown once" in line)
    assert _login(client, "admin", password).status_code == 200
    assert count(db, "items") == 600
    names = db.execute(sa.text("SELECT name, kind FROM attributes ORDER BY position")).all()
    assert [tuple(r) for r in names] == [("shape", "categorical"), ("size", "ordinal"), ("position", "ordinal")]
    assert "project 'shapes': id 1, created, pretrain job 1 queued" in out
    # Seeded labels (600 items: an eighth held out, a twelfth for training), each the generator's truth,
    # and the retrain they queue waits behind the pretrain.
    assert "seeded 50 training and 75 eval labels" in out
    assert count(db, "labels", "eval") == 75 and count(db, "labels", "NOT eval") == 50
    assert count(db, "items", "split = 'eval'") == 75
    truth = by_eye_levels(make_shapes(n=600, seed=0, size=32, rotation_range=0).factors)
    rows = db.execute(
        sa.text('SELECT items.source_index, labels."values" FROM labels JOIN items ON items.id = labels.item_id')
    ).all()
    for src, values in rows:
        values = json.loads(values) if isinstance(values, str) else values
        assert values == {k: str(v[src]) for k, v in truth.items()}
    queued = db.execute(sa.text("SELECT id, kind FROM jobs WHERE status = 'queued' ORDER BY id")).all()
    assert [tuple(r) for r in queued] == [(1, "pretrain"), (2, "retrain")]
    capsys.readouterr()
    assert cli.main(["demo", "--no-serve", "--items", "600"]) == 0  # a second run finds both and changes nothing
    assert count(db, "items") == 600 and count(db, "users") == 1 and count(db, "labels") == 125
    again = capsys.readouterr().out
    # It says what it found, and how to get at the admin account without the first run's output.
    assert "shown once" not in again and "lenslab users passwd admin" in again
    assert "project 'shapes': id 1, exists, pretrain job 1 queued" in again and "seeded" not in again
    assert count(db, "jobs") == 2  # no second pretrain or retrain queued
    # LENSLAB_ADMIN_PASSWORD is honoured for an existing admin too.
    monkeypatch.setenv("LENSLAB_ADMIN_PASSWORD", "a new demo password")
    assert cli.main(["demo", "--no-serve", "--items", "600"]) == 0
    assert "password set from LENSLAB_ADMIN_PASSWORD" in capsys.readouterr().out
    assert _login(client, "admin", "a new demo password").status_code == 200
    assert _login(client, "admin", password).status_code != 200
