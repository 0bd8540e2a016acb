"""Every API route × every role: 401 without credentials, 403 below the route's role, through above it.

The route list comes from the app itself, so a new route is covered (or fails here) automatically.
"""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute, iter_route_contexts

ROLES = ("viewer", "expert", "admin")
RANK = {r: i for i, r in enumerate(ROLES)}
# Routes anyone may call; every other /api route must declare a role dependency.
PUBLIC = {("POST", "/api/v1/auth/login")}
PLACEHOLDERS = {"attribute": "digit"}


def _min_role(dependant) -> str | None:
    roles = []
    stack = [dependant]
    while stack:
        d = stack.pop()
        if d.call is not None and hasattr(d.call, "min_role"):
            roles.append(d.call.min_role)
        stack.extend(d.dependencies)
    return max(roles, key=RANK.__getitem__) if roles else None


def api_routes():
    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(_env_file=None, database_url="sqlite://"))
    out = []
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        if not isinstance(route, APIRoute) or not ctx.path.startswith("/api/"):
            continue
        for method in sorted(ctx.methods or ()):
            out.append((method, ctx.path, _min_role(route.dependant)))
    app.state.db.dispose()
    return out


ROUTES = api_routes()


def test_the_route_list_covers_the_whole_contract():
    paths = {(m, p) for m, p, _ in ROUTES}
    for expected in [
        ("POST", "/api/v1/projects/{pid}/queue/next"),
        ("POST", "/api/v1/items/{iid}/labels"),
        ("GET", "/api/v1/projects/{pid}/traversals/{attribute}.png"),
        ("DELETE", "/api/v1/tokens/{token_id}"),
    ]:
        assert expected in paths
    assert len(ROUTES) >= 30


@pytest.mark.parametrize("method, path, role", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_route_enforces_its_role(client, accounts, method, path, role):
    if (method, path) in PUBLIC:
        assert role is None
        return
    assert role is not None, f"{method} {path} has no role dependency (add CurrentUser/ExpertUser/AdminUser)"
    # Ids that exist nowhere: authorisation must be decided before any look-up (no 404 leaks).
    url = re.sub(r"\{(\w+)\}", lambda m: PLACEHOLDERS.get(m.group(1), "999999"), path)
    kwargs = {"json": {}} if method in ("POST", "PATCH", "PUT", "DELETE") else {}
    r = client.request(method, url, **kwargs)
    assert r.status_code == 401, (method, url, r.status_code, r.text)
    for user in ROLES:
        r = client.request(method, url, headers=accounts.headers(user), **kwargs)
        if RANK[user] < RANK[role]:
            assert r.status_code == 403, (method, url, user, r.status_code, r.text)
        else:
            assert r.status_code not in (401, 403), (method, url, user, r.status_code, r.text)
            assert r.status_code < 500, (method, url, user, r.status_code, r.text)
