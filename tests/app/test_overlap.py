"""Overlap: each item goes to `overlap` different experts; agreement (Krippendorff's α); disagreements and
their resolution; the worker trains on the experts' consensus."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import sqlalchemy as sa

from tests.app.test_pages_access import sign_in
from tests.app.worker_support import DIGIT_ATTR, digits_pca

N_ITEMS = 12


@pytest.fixture
def overlapped(client, admin, accounts, tmp_path):
    """An embeddings project of 12 digits with overlap 3, no eval hand-outs, and four experts."""
    Z, y = digits_pca(N_ITEMS)
    (tmp_path / "imports").mkdir(exist_ok=True)
    path = tmp_path / "imports" / "z.npy"
    np.save(path, Z)
    body = {
        "name": "overlap",
        "dataset": {"source": "embeddings", "path": str(path)},
        "attributes": DIGIT_ATTR,
        "representation": {"source": "embeddings"},
        "settings": {"overlap": 3, "eval_fraction": 0.0, "retrain_every": 100_000},
    }
    r = client.post("/api/v1/projects", json=body, headers=admin)
    assert r.status_code == 201, r.text
    experts = {f"e{k}": accounts.add(f"e{k}", "expert") for k in range(4)}
    return r.json()["id"], experts, y


def _state(db, iid):
    db.rollback()  # a fresh read: the test's session must not answer from an earlier snapshot
    return tuple(db.execute(sa.text("SELECT labellers, labelled FROM items WHERE id = :i"), {"i": iid}).one())


def _pull(client, headers, pid):
    r = client.post(f"/api/v1/projects/{pid}/queue/next", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _label(client, headers, item, digit):
    r = client.post(
        f"/api/v1/items/{item['item_id']}/labels",
        json={"values": {"digit": digit}, "lease_id": item["lease_id"]},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_each_item_goes_to_three_different_experts_and_never_twice_to_one(client, overlapped, db):
    pid, experts, _ = overlapped
    handed = defaultdict(list)  # expert → items handed out
    names = list(experts)
    active = set(names)
    turn = 0
    while active:
        name = names[turn % len(names)]
        turn += 1
        if name not in active:
            continue
        items = _pull(client, experts[name], pid)
        if not items:
            active.discard(name)
            continue
        handed[name].append(items[0]["item_id"])
        _label(client, experts[name], items[0], "1")
    assert all(len(v) == len(set(v)) for v in handed.values())  # never the same item twice to one expert
    per_item = defaultdict(set)
    for name, items in handed.items():
        for iid in items:
            per_item[iid].add(name)
    assert len(per_item) == N_ITEMS and all(len(v) == 3 for v in per_item.values())
    rows = db.execute(sa.text("SELECT labellers, labelled FROM items WHERE project_id = :p"), {"p": pid}).all()
    assert all(r.labellers == 3 and r.labelled for r in rows)
    # Partly labelled items come first: an item waits for its second and third expert, not for the pool.
    first_four = [handed[n][0] for n in names]
    assert len(set(first_four[:3])) == 1


def test_a_retracted_label_reopens_the_item_for_another_expert_only(client, overlapped, db):
    pid, experts, _ = overlapped
    e0, e1, e2, e3 = experts.values()
    item = _pull(client, e0, pid)[0]
    label = _label(client, e0, item, "3")
    for h in (e1, e2):
        got = _pull(client, h, pid)[0]
        assert got["item_id"] == item["item_id"]
        _label(client, h, got, "3")
    row = db.execute(sa.text("SELECT labellers, labelled FROM items WHERE id = :i"), {"i": item["item_id"]}).one()
    assert (row.labellers, row.labelled) == (3, True)
    assert client.post(f"/api/v1/labels/{label['id']}/retract", headers=e0).status_code == 201
    assert _state(db, item["item_id"]) == (2, False)
    assert _pull(client, e3, pid)[0]["item_id"] == item["item_id"]  # the open item first
    assert item["item_id"] not in {i["item_id"] for i in _pull(client, e0, pid)}


def test_changing_overlap_recounts_which_items_are_labelled(client, admin, overlapped, db):
    pid, experts, _ = overlapped
    e0, e1 = list(experts.values())[:2]
    item = _pull(client, e0, pid)[0]
    _label(client, e0, item, "3")
    _label(client, e1, _pull(client, e1, pid)[0], "3")
    done = "SELECT COUNT(*) FROM items WHERE project_id = :p AND labelled"
    db.rollback()
    assert db.execute(sa.text(done), {"p": pid}).scalar() == 0
    r = client.patch(f"/api/v1/projects/{pid}", json={"settings": {"overlap": 2}}, headers=admin)
    assert r.status_code == 200, r.text
    db.rollback()
    assert db.execute(sa.text(done), {"p": pid}).scalar() == 1
    r = client.patch(f"/api/v1/projects/{pid}", json={"settings": {"overlap": 0}}, headers=admin)
    assert r.status_code == 422 and "overlap" in r.text


def _simulate(client, admin, overlapped, flips):
    """Every expert labels every item once (overlap raised to 4), expert k flipping items in flips[k]."""
    pid, experts, y = overlapped
    assert client.patch(f"/api/v1/projects/{pid}", json={"settings": {"overlap": 4}}, headers=admin).status_code == 200
    for k, h in enumerate(experts.values()):
        while items := _pull(client, h, pid):
            item = items[0]
            src = client.get(f"/api/v1/items/{item['item_id']}", headers=h).json()["source_index"]
            digit = (int(y[src]) + 1) % 10 if src in flips[k] else int(y[src])
            _label(client, h, item, str(digit))


def test_agreement_is_krippendorffs_alpha_of_the_stored_labels_and_finds_the_noisy_expert(
    client, admin, viewer, overlapped, db
):
    import krippendorff

    pid = overlapped[0]
    r = client.patch(f"/api/v1/projects/{pid}", json={"settings": {"overlap": 4}}, headers=admin)
    assert r.status_code == 200
    _simulate(client, admin, overlapped, flips=[set(range(0, N_ITEMS, 2)), {1}, set(), set()])
    r = client.get(f"/api/v1/projects/{pid}/agreement", headers=viewer)
    assert r.status_code == 200, r.text
    digit = r.json()["attributes"]["digit"]
    # The same α straight from the label rows, with the package, independently of the service.
    rows = db.execute(
        sa.text("SELECT item_id, user_id, \"values\" FROM labels WHERE project_id = :p AND kind = 'label'"), {"p": pid}
    ).all()
    users = sorted({r.user_id for r in rows})
    items = sorted({r.item_id for r in rows})
    m = np.full((len(users), len(items)), np.nan)
    for row in rows:
        values = row.values if isinstance(row.values, dict) else __import__("json").loads(row.values)
        m[users.index(row.user_id), items.index(row.item_id)] = float(values["digit"])
    want = krippendorff.alpha(reliability_data=m, level_of_measurement="nominal", value_domain=list(range(10)))
    assert digit["alpha"] == pytest.approx(want, abs=1e-9)
    assert digit["level"] == "nominal" and digit["n_items"] == N_ITEMS
    assert digit["low"] <= digit["alpha"] <= digit["high"]
    assert digit["experts"][0]["username"] == "e0"  # the noisiest, lowest first
    assert digit["experts"][0]["alpha"] < min(e["alpha"] for e in digit["experts"][1:])
    sign_in(client, "viewer")
    page = client.get(f"/projects/{pid}/insights")
    assert page.status_code == 200 and 'data-role="agreement"' in page.text and "e0" in page.text


def test_disagreements_list_the_split_items_and_a_resolution_becomes_the_target(client, admin, overlapped, app):
    from app.services import labels
    from app.services.projects import schema
    from ml.annotators import targets

    pid, experts, _ = overlapped
    _simulate(client, admin, overlapped, flips=[{0, 1}, {0}, set(), set()])
    r = client.get(f"/api/v1/projects/{pid}/disagreements", headers=admin)
    assert r.status_code == 200, r.text
    found = r.json()["items"]
    assert len(found) == 2
    top = found[0]  # item of source 0: two of four experts wrong, the most split
    assert top["split"] == 0.5 and len(top["attributes"]["digit"]["labels"]) == 4
    iid = top["item_id"]
    r = client.post(f"/api/v1/items/{iid}/resolve", json={"values": {"digit": "7"}}, headers=admin)
    assert r.status_code == 201 and r.json()["adjudicated"] is True
    assert client.get(f"/api/v1/items/{iid}", headers=admin).json()["labels"] == {"digit": "7"}
    assert len(client.get(f"/api/v1/projects/{pid}/disagreements", headers=admin).json()["items"]) == 1
    again = client.get(f"/api/v1/projects/{pid}/disagreements", params={"include_resolved": True}, headers=admin)
    assert again.json()["items"][0]["attributes"]["digit"]["resolved"]["value"] == "7"
    with app.state.db.session() as s:  # what the worker trains on
        from app.db.models import Project

        project = s.get(Project, pid)
        rows = labels.expert_labels(session=s, project_id=pid, eval=False)
        ids = sorted({r[0] for r in rows})
        S = targets(ids, rows, schema(project), "dawid_skene")["digit"]
    assert S.shape == (N_ITEMS, 10) and S[ids.index(iid)].tolist() == [0.0] * 7 + [1.0] + [0.0] * 2
    agree = client.get(f"/api/v1/projects/{pid}/agreement", headers=admin).json()["attributes"]["digit"]
    assert agree["n_labels"] == 4 * N_ITEMS  # the resolution is not an expert's vote
    r = client.post(f"/api/v1/items/{iid}/resolve", json={"values": {"digit": "x"}}, headers=admin)
    assert r.status_code == 422 and "digit" in r.text
    expert = next(iter(experts.values()))
    assert client.get(f"/api/v1/projects/{pid}/disagreements", headers=expert).status_code == 403


def test_the_admin_page_lists_disagreements_and_its_form_resolves_one(client, admin, overlapped):
    import re

    pid, _, _ = overlapped
    _simulate(client, admin, overlapped, flips=[{0}, set(), set(), set()])
    sign_in(client, "admin")
    page = client.get(f"/admin/projects/{pid}/disagreements")
    assert page.status_code == 200 and page.text.count('class="dispute"') == 1
    iid = int(re.search(r'data-item="(\d+)"', page.text).group(1))
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert re.search(r"<option selected>0</option>", page.text)  # the majority's level is offered first
    r = client.post(f"/admin/items/{iid}/resolve", data={"csrf_token": csrf, "digit": "0"}, follow_redirects=True)
    assert r.status_code == 200 and f"Item {iid} resolved." in r.text and "No open disagreements." in r.text
    history = client.get(f"/api/v1/projects/{pid}/labels", params={"history": True}, headers=admin).json()["labels"]
    assert [h["adjudicated"] for h in history if h["item_id"] == iid].count(True) == 1


def test_a_retrain_trains_on_the_experts_consensus(client, admin, overlapped, app):
    """The worker's retrain on items three and four experts labelled, some of them differently (soft targets)."""
    from tests.app.test_worker_jobs import worker_thread
    from tests.app.worker_support import wait_job

    pid, _, _ = overlapped
    _simulate(client, admin, overlapped, flips=[{0, 1, 2}, {0}, set(), set()])
    r = client.patch(f"/api/v1/projects/{pid}", json={"settings": {"lens": {"epochs": 5, "n_flows": 2}}}, headers=admin)
    assert r.status_code == 200, r.text
    with worker_thread(app):
        jobs = client.get(f"/api/v1/projects/{pid}/jobs", headers=admin).json()["jobs"]
        wait_job(client, admin, next(j["id"] for j in jobs if j["kind"] == "pretrain"))
        r = client.post(f"/api/v1/projects/{pid}/jobs", json={"kind": "retrain"}, headers=admin)
        job = wait_job(client, admin, r.json()["id"])
    assert job["result"]["n_labels"] == N_ITEMS
    versions = client.get(f"/api/v1/projects/{pid}/models", headers=admin).json()["models"]
    assert len(versions) == 1 and versions[0]["n_labels"] == N_ITEMS
