"""Objects of one project used through another: a lease, a label, a project id in the body, a model.

Every role may read every project (lenslab has no per-project membership), so the boundary to hold is
that an object id from project A never acts on project B, and one user's lease or label is not another's.
Each refusal is a 4xx that names the problem, and nothing is written.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.app.test_pages_access import sign_in
from tests.conftest import count, create_project


@pytest.fixture
def two(client: Any, admin: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    return create_project(client, admin, name="A"), create_project(client, admin, name="B")


def _lease(client: Any, headers: dict[str, str], pid: int) -> dict[str, Any]:
    r = client.post(f"/api/v1/projects/{pid}/queue/next", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"][0]


def test_a_lease_of_project_a_cannot_label_an_item_of_project_b(client, expert, two, db):
    a, b = two
    lease_a = _lease(client, expert, a["id"])
    item_b = _lease(client, expert, b["id"])["item_id"]
    r = client.post(
        f"/api/v1/items/{item_b}/labels",
        headers=expert,
        json={"values": {"digit": "1"}, "lease_id": lease_a["lease_id"]},
    )
    assert r.status_code in (403, 409, 422), r.text
    assert "lease" in r.text
    assert count(db, "labels") == 0


def test_a_project_id_in_the_body_must_match_the_item(client, expert, two, db):
    a, b = two
    item_b = _lease(client, expert, b["id"])["item_id"]
    r = client.post(
        f"/api/v1/items/{item_b}/labels", headers=expert, json={"values": {"digit": "1"}, "project_id": a["id"]}
    )
    assert 400 <= r.status_code < 500 and "project" in r.text, r.text
    assert count(db, "labels") == 0


def test_another_users_lease_cannot_be_released_or_used(client, accounts, expert, two, db):
    a, _ = two
    other = accounts.add("expert2", "expert")
    it = _lease(client, expert, a["id"])
    r = client.post(f"/api/v1/leases/{it['lease_id']}/release", headers=other)
    assert r.status_code == 403, r.text
    r = client.post(
        f"/api/v1/items/{it['item_id']}/labels",
        headers=other,
        json={"values": {"digit": "1"}, "lease_id": it["lease_id"]},
    )
    assert r.status_code in (403, 409), r.text
    assert count(db, "labels") == 0 and count(db, "leases", "ended_at IS NULL") == 1


def test_bulk_import_refuses_item_ids_of_another_project(client, admin, expert, two, db):
    a, b = two
    item_b = _lease(client, expert, b["id"])["item_id"]
    r = client.post(
        f"/api/v1/projects/{a['id']}/labels:import",
        headers=admin,
        json={"labels": [{"item_id": item_b, "values": {"digit": "1"}}]},
    )
    assert r.status_code in (404, 409, 422), r.text
    assert count(db, "labels") == 0


def test_the_jobs_page_of_project_b_shows_only_b_s_jobs(client, accounts, admin, two):
    a, b = two
    jobs_a = [j["id"] for j in client.get(f"/api/v1/projects/{a['id']}/jobs", headers=admin).json()["jobs"]]
    jobs_b = [j["id"] for j in client.get(f"/api/v1/projects/{b['id']}/jobs", headers=admin).json()["jobs"]]
    assert jobs_a and jobs_b  # each has its queued pretrain
    assert sign_in(client, "admin").status_code == 303
    page = client.get(f"/admin/projects/{b['id']}/jobs")
    assert page.status_code == 200
    assert all(f'data-job-id="{j}"' in page.text for j in jobs_b)
    assert not any(f'data-job-id="{j}"' in page.text for j in jobs_a)
    assert client.get("/projects/999999/label").status_code in (403, 404)
