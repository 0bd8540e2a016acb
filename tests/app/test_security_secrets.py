"""Secrets: hashed at rest, never in logs or error bodies; pages carry no inline script and every form a CSRF
token; checkpoints load with ``weights_only`` so a pickled payload cannot run code."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.app.test_pages_access import PAGES, sign_in
from tests.conftest import create_project

PASSWORD = "correct horse battery"


def _login(client: Any, username: str = "admin", password: str = PASSWORD) -> Any:
    return client.post("/api/v1/auth/login", json={"username": username, "password": password})


def test_passwords_tokens_and_session_ids_are_stored_only_as_hashes(client, accounts, db):
    from app import security

    r = _login(client)
    assert r.status_code == 200
    sid = client.app.state.signer.loads(client.cookies.get(security.SESSION_COOKIE))
    token = client.post("/api/v1/tokens", json={"name": "at-rest"}, headers=accounts.headers("admin")).json()["token"]
    db.rollback()
    users = db.execute(sa.text("SELECT username, password_hash FROM users")).all()
    assert len(users) == 3
    for _, stored in users:
        assert stored.startswith("$argon2id$") and PASSWORD not in stored
    tokens = [t for (t,) in db.execute(sa.text("SELECT token_hash FROM api_tokens")).all()]
    assert len(tokens) == 4 and all(re.fullmatch(r"[0-9a-f]{64}", t) for t in tokens)
    assert token not in tokens and security.hash_token(token) in tokens
    for plaintext in accounts.tokens.values():
        assert plaintext not in tokens
    sessions = [s for (s,) in db.execute(sa.text("SELECT id FROM web_sessions")).all()]
    assert sessions == [security.hash_token(sid)] and sid not in sessions
    # Nothing in any table holds a plaintext secret (the dump of every row as text).
    dump = " ".join(
        str(row)
        for table in ("users", "api_tokens", "web_sessions")
        for row in db.execute(sa.text(f"SELECT * FROM {table}")).all()
    )
    for secret in (PASSWORD, token, sid, *accounts.tokens.values()):
        assert secret not in dump


def test_no_password_token_or_session_id_appears_in_logs_or_error_bodies(client, accounts, caplog):
    from app import security

    caplog.set_level(logging.DEBUG)  # everything any logger emits, including libraries
    secrets: list[str] = [PASSWORD, "a wrong password 123", *accounts.tokens.values()]
    bodies: list[str] = []
    bodies.append(_login(client, password="a wrong password 123").text)
    bodies.append(
        client.post("/api/v1/auth/login", json={"username": "admin", "password": PASSWORD, "extra": PASSWORD}).text
    )  # 422 must not echo it
    bodies.append(client.post("/api/v1/auth/login", json={"username": ["x"], "password": PASSWORD}).text)
    r = _login(client)
    assert r.status_code == 200
    secrets.append(client.cookies.get(security.SESSION_COOKIE))
    secrets.append(client.app.state.signer.loads(client.cookies.get(security.SESSION_COOKIE)))
    secrets.append(r.json()["csrf_token"])
    created = client.post("/api/v1/tokens", json={"name": "logged?"}, headers=accounts.headers("admin"))
    secrets.append(created.json()["token"])
    assert client.get("/api/v1/projects", headers={"Authorization": f"Bearer {secrets[-1]}"}).status_code == 200
    bodies.append(client.get("/api/v1/projects", headers={"Authorization": f"Bearer {secrets[-1]}x"}).text)
    client.cookies.clear()
    assert sign_in(client, "expert").status_code == 303  # the HTML form's login path too
    bodies.append(sign_in(client, "viewer", password="another wrong one").text)
    secrets.append("another wrong one")
    logged = caplog.text + " ".join(repr(rec.args) for rec in caplog.records)
    assert caplog.records, "nothing was logged: the check would be vacuous"
    for secret in secrets:
        assert secret and secret not in logged, f"a secret appears in the logs: {secret[:6]}…"
        for body in bodies:
            assert secret not in body


def test_pages_have_no_inline_script_and_every_post_form_carries_the_csrf_token(client, accounts, admin):
    pid = create_project(client, admin)["id"]
    assert sign_in(client, "admin").status_code == 303
    csp = client.get("/projects").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    assert directives["script-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    forms = 0
    for path in [*PAGES, "/login"]:
        html = client.get(path.format(pid=pid)).text
        for attrs, body in re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I):
            # Code only from files; a JSON data block is inert (browsers never execute it) and CSP-safe.
            inert = 'type="application/json"' in attrs
            assert inert or ("src=" in attrs and body.strip() == ""), (path, attrs, body[:100])
            assert "</" not in body, (path, "a data block must not be able to close its script tag")
        assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I), (path, "inline event handler")
        assert "javascript:" not in html.lower(), path
        for form in re.findall(r"<form\b[^>]*>.*?</form>", html, flags=re.S | re.I):
            if re.search(r'method="?post', form, flags=re.I):
                forms += 1
                assert re.search(r'name="(csrf_token|login_token)"', form), (path, form[:300])
    assert forms >= 5  # the check saw the real forms, not an empty page


def test_checkpoints_load_with_weights_only_so_a_pickled_payload_cannot_run(tmp_path: Path):
    import torch

    from ml.device import load_checkpoint

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
            return (Path.write_text, (marker, "ran"))

    buf = io.BytesIO()
    torch.save({"config": "{}", "state": Payload()}, buf)
    with pytest.raises(ValueError, match="not a readable lenslab checkpoint"):
        load_checkpoint(buf.getvalue(), torch.device("cpu"))
    assert not marker.exists()


def test_encoder_and_checkpoint_uploads_are_for_admins_only(client, accounts, admin):
    p = create_project(client, admin, name="ts", representation={"source": "torchscript"})
    files = {"file": ("enc.pt", b"PK\x03\x04not really", "application/octet-stream")}
    for role in ("viewer", "expert"):
        r = client.post(
            f"/api/v1/projects/{p['id']}/representation/encoder", files=files, headers=accounts.headers(role)
        )
        assert r.status_code == 403, r.text
    r = client.post(
        f"/api/v1/projects/{p['id']}/representation/encoder",
        files={"file": ("enc.pt", b"not a zip", "application/octet-stream")},
        headers=admin,
    )
    assert r.status_code == 422 and "TorchScript" in r.text
