"""Pages with TestClient: who may see what, login/logout, CSRF on forms, htmx partials, the scatter endpoint."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import create_project

PASSWORD = "correct horse battery"


def sign_in(client: Any, username: str, password: str = PASSWORD, next_url: str = "/projects") -> Any:
    page = client.get(f"/login?next={next_url}")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    return client.post(
        "/login",
        data={"username": username, "password": password, "login_token": token, "next": next_url},
        follow_redirects=False,
    )


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


@pytest.fixture
def pid(client, admin) -> int:
    return create_project(client, admin)["id"]


PAGES = {  # path template → least role that may open it
    "/projects": "viewer",
    "/projects/{pid}/insights": "viewer",
    "/projects/{pid}/label": "expert",
    "/projects/{pid}/label/counters": "expert",
    "/admin": "admin",
    "/admin/projects/new": "admin",
    "/admin/projects/{pid}": "admin",
    "/admin/projects/{pid}/jobs": "admin",
    "/admin/projects/{pid}/models": "admin",
    "/admin/users": "admin",
}
RANK = {"viewer": 0, "expert": 1, "admin": 2}


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_redirects_to_login_without_a_session(client, pid, path):
    r = client.get(path.format(pid=pid), follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=")
    r = client.get(path.format(pid=pid), headers={"HX-Request": "true"}, follow_redirects=False)
    assert r.status_code == 401 and r.headers["HX-Redirect"].startswith("/login?next=")


@pytest.mark.parametrize("role", ["viewer", "expert", "admin"])
def test_each_page_renders_for_its_roles_and_is_403_for_the_others(client, accounts, pid, role):
    assert sign_in(client, role).status_code == 303
    for path, least in PAGES.items():
        r = client.get(path.format(pid=pid), follow_redirects=False)
        if RANK[role] >= RANK[least]:
            assert r.status_code == 200, (path, r.text[:300])
        else:
            assert r.status_code == 403, path
            assert "needs the" in r.text


def test_login_rejects_a_wrong_password_and_a_forged_form_then_logout_ends_the_session(client, accounts):
    r = sign_in(client, "expert", password="wrong password")
    assert r.status_code == 401 and "wrong username or password" in r.text.lower()
    r = client.post(
        "/login", data={"username": "expert", "password": PASSWORD, "login_token": "forged"}, follow_redirects=False
    )
    assert r.status_code == 403
    r = sign_in(client, "expert", next_url="https://evil.example/")
    assert r.status_code == 303 and r.headers["location"] == "/projects"
    page = client.get("/projects")
    assert page.status_code == 200 and "expert" in page.text
    assert client.post("/logout", follow_redirects=False).status_code == 403  # no CSRF token
    r = client.post("/logout", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/projects", follow_redirects=False).status_code == 303


def test_the_sign_in_page_and_the_api_login_share_one_throttle_and_one_cookie(client, accounts, settings):
    for _ in range(settings.login_max_failures):  # failures through the API ...
        r = client.post("/api/v1/auth/login", json={"username": "expert", "password": "wrong password"})
        assert r.status_code == 401
    r = sign_in(client, "expert")  # ... make the page wait too, even with the right password
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "retry in" in r.text.lower()
    assert client.get("/projects", follow_redirects=False).status_code == 303
    client.app.state.throttle.succeeded("expert", "testclient")
    r = sign_in(client, "expert")
    cookie = r.headers["set-cookie"].lower()
    assert r.status_code == 303 and "httponly" in cookie and "samesite=lax" in cookie
    assert client.get("/api/v1/auth/me").json()["user"]["username"] == "expert"


@pytest.mark.parametrize(
    "path,data",
    [
        ("/admin/projects", {"name": "x", "attr_name": "a", "attr_kind": "categorical", "attr_levels": "p,q"}),
        ("/admin/projects/{pid}/jobs", {"kind": "retrain"}),
        ("/admin/projects/{pid}/import", {"source": "digits"}),
        ("/admin/users", {"username": "zed", "role": "expert", "password": "password123"}),
        ("/admin/tokens", {"user_id": "1", "name": "t"}),
    ],
)
def test_forms_without_the_csrf_token_are_403_and_change_nothing(client, accounts, pid, db, path, data):
    from tests.conftest import count

    sign_in(client, "admin")
    before = {t: count(db, t) for t in ("projects", "jobs", "users", "api_tokens", "items")}
    r = client.post(path.format(pid=pid), data=data, follow_redirects=False)
    assert r.status_code == 403
    assert {t: count(db, t) for t in before} == before


def test_admin_creates_a_project_from_the_form_and_bad_fields_are_named(client, accounts, db):
    from tests.conftest import count

    sign_in(client, "admin")
    csrf = csrf_of(client.get("/admin/projects/new").text)
    bad = client.post(
        "/admin/projects",
        data={
            "csrf_token": csrf,
            "name": "p",
            "source": "digits",
            "attr_name": "size",
            "attr_kind": "continuous",
            "attr_low": "big",
            "retrain_every": "0",
        },
    )
    assert bad.status_code == 422
    assert "attributes[0].low" in bad.text and "retrain_every" in bad.text
    assert count(db, "projects") == 0
    ok = client.post(
        "/admin/projects",
        data={
            "csrf_token": csrf,
            "name": "digits",
            "source": "digits",
            "attr_name": ["digit", "thickness"],
            "attr_kind": ["categorical", "ordinal"],
            "attr_levels": ["0,1,2,3,4,5,6,7,8,9", "1,2,3,4,5"],
            "attr_low": ["", ""],
            "attr_high": ["", ""],
            "representation": "vae",
            "latent_dim": "8",
            "strategy": "bald",
            "retrain_every": "25",
            "lease_seconds": "300",
            "eval_fraction": "0.1",
        },
    )
    assert ok.status_code == 201, ok.text[:500]
    assert "1797 items imported" in ok.text
    assert count(db, "items") == 1797 and count(db, "jobs", "kind = 'pretrain'") == 1
    row = db.execute(sa.text("SELECT settings FROM projects")).scalar()
    stored = json.loads(row) if isinstance(row, str) else row  # JSON text on SQLite, a dict on PostgreSQL
    assert stored["retrain_every"] == 25 and stored["lease_seconds"] == 300


def test_import_reports_bad_files_one_by_one(client, accounts, pid, tmp_path):
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    sign_in(client, "admin")
    csrf = csrf_of(client.get(f"/admin/projects/{pid}").text)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(3):
            png = io.BytesIO()
            Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)).save(png, "PNG")
            zf.writestr(f"ok{i}.png", png.getvalue())
        zf.writestr("broken.png", b"not a png at all")
    r = client.post(
        f"/admin/projects/{pid}/import",
        data={"csrf_token": csrf, "source": "none"},
        files={"file": ("images.zip", buf.getvalue(), "application/zip")},
    )
    assert r.status_code == 200, r.text[:500]
    assert "3 items imported" in r.text
    assert "broken.png" in r.text and "1 file could not be imported" in r.text


def test_htmx_requests_get_partials(client, accounts, pid):
    sign_in(client, "admin")
    csrf = csrf_of(client.get(f"/admin/projects/{pid}/jobs").text)
    r = client.post(
        f"/admin/projects/{pid}/jobs", data={"kind": "retrain"}, headers={"HX-Request": "true", "X-CSRF-Token": csrf}
    )
    assert r.status_code == 200
    assert r.text.lstrip().startswith('<div id="jobs-table"') and "<html" not in r.text
    assert 'sse-connect="/api/v1/jobs/' in r.text
    jid = re.search(r'data-job-id="(\d+)"', r.text).group(1)
    row = client.get(f"/admin/jobs/{jid}/row?mode=poll", headers={"HX-Request": "true"})
    assert row.text.lstrip().startswith("<tr") and 'hx-trigger="every 2s"' in row.text
    r = client.post(f"/admin/jobs/{jid}/cancel", headers={"HX-Request": "true", "X-CSRF-Token": csrf})
    assert 'data-job-status="cancelled"' in r.text and "hx-trigger" not in r.text.split(">")[0]
    # Insights: 204 while the active model is unchanged, the section otherwise.
    assert client.get(f"/projects/{pid}/insights?since=0", headers={"HX-Request": "true"}).status_code == 204
    part = client.get(f"/projects/{pid}/insights", headers={"HX-Request": "true"})
    assert part.text.lstrip().startswith('<section id="insights-body"')


def test_label_page_renders_shortcuts_and_counters(client, accounts, pid):
    sign_in(client, "expert")
    html = client.get(f"/projects/{pid}/label").text
    assert 'data-key="3"' in html and 'data-attr="thickness"' in html
    assert "<script>" not in html and "onclick" not in html  # CSP: no inline script
    counters = client.get(f"/projects/{pid}/label/counters").json()
    assert counters == {"mine_today": 0, "items": 1797, "labelled": 0, "eval_items": 0, "eval_labelled": 0}


def test_level_shortcuts_use_level_names_when_they_are_single_keys():
    from app.web.labelling import level_shortcuts

    assert [s["key"] for s in level_shortcuts("categorical", list("0123456789"))] == list("0123456789")
    assert [s["key"] for s in level_shortcuts("ordinal", ["1", "2", "3"])] == ["1", "2", "3"]
    assert [s["key"] for s in level_shortcuts("ordinal", ["thin", "mid", "thick"])] == ["1", "2", "3"]
    # "s" and "z" are skip and undo: such level names fall back to index keys.
    assert [s["key"] for s in level_shortcuts("categorical", ["r", "s", "t"])] == ["1", "2", "3"]


def test_scatter_is_409_before_a_model_and_gives_pca_and_zstar_points_after(client, viewer, app, pid):
    assert client.get(f"/api/v1/projects/{pid}/scatter", headers=viewer).status_code == 409
    fitted = _fit(app, client, pid)
    r = client.get(f"/api/v1/projects/{pid}/scatter", params={"attribute": "digit", "limit": 100}, headers=viewer)
    assert r.status_code == 200, r.text
    body = r.json()
    pts = body["points"]
    assert len(pts["item_id"]) == 100 and len(pts["z"][0]) == 2 and len(pts["z_star"][0]) == 2
    import numpy as np

    Zs = fitted["lens"].transform(fitted["Z"][fitted["rows"](pts["item_id"])])
    assert np.allclose(np.asarray(pts["z_star"]), Zs[:, body["z_star"]["dims"]], atol=1e-3)
    assert body["z_star"]["dims"][0] == fitted["lens"].attribute_dims_["digit"][0]
    assert (
        client.get(f"/api/v1/projects/{pid}/scatter", params={"attribute": "colour"}, headers=viewer).status_code == 404
    )


def _fit(app: Any, client: Any, pid: int) -> dict[str, Any]:
    import io

    import numpy as np
    import sqlalchemy as sa

    from app.db.models import Item, ModelVersion, Representation
    from ml.lens import InterpretableLens
    from tests.conftest import DIGITS_ATTRIBUTES

    with app.state.db.session() as s:
        ids = np.asarray(s.scalars(sa.select(Item.id).where(Item.project_id == pid).order_by(Item.id)).all())
    Z = np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32)
    n = len(ids)
    S = {
        "digit": np.where(np.arange(n) < 200, np.arange(n) % 10, -1),
        "thickness": np.where(np.arange(n) < 200, np.arange(n) % 5, -1),
    }
    lens = InterpretableLens(DIGITS_ATTRIBUTES, n_flows=1, hidden=8, epochs=1, device="cpu").fit(Z, S)

    def npy(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    with app.state.db.session() as s:
        rep = Representation(project_id=pid, source="embeddings", z=npy(Z), item_ids=npy(ids), active=True)
        s.add(rep)
        s.flush()
        s.add(
            ModelVersion(project_id=pid, version=1, representation_id=rep.id, checkpoint=lens.to_bytes(), active=True)
        )
        s.commit()
    pos = {int(i): k for k, i in enumerate(ids)}
    return {"Z": Z, "lens": lens, "rows": lambda item_ids: [pos[int(i)] for i in item_ids]}


def test_reloading_the_page_a_token_was_shown_on_leads_back_to_the_users_page(client, accounts):
    """Creating a token leaves /admin/tokens in the address bar; a reload (a GET) must not be a 405."""
    assert sign_in(client, "admin").status_code == 303
    r = client.get("/admin/tokens", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/users"
    assert client.get("/admin/tokens").status_code == 200
