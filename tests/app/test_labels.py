"""Labels: validation, idempotency, append-only undo, export, bulk import, the retrain rule."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.conftest import count, create_project


def _items(client, headers, pid, n=5):
    return [i["id"] for i in client.get(f"/api/v1/projects/{pid}/items?limit={n}", headers=headers).json()["items"]]


def _label(client, headers, iid, values, **extra):
    return client.post(f"/api/v1/items/{iid}/labels", json={"values": values, **extra}, headers=headers)


def test_a_label_is_stored_and_becomes_the_items_current_value(client, expert, project, db):
    iid = _items(client, expert, project["id"], 1)[0]
    r = _label(client, expert, iid, {"digit": "7", "thickness": "2"})
    assert r.status_code == 201, r.text
    assert r.json()["values"] == {"digit": "7", "thickness": "2"} and r.json()["eval"] is False
    item = client.get(f"/api/v1/items/{iid}", headers=expert).json()
    assert item["labels"] == {"digit": "7", "thickness": "2"} and item["labelled"] is True
    assert count(db, "labels") == 1


def test_a_later_partial_label_overrides_only_its_attribute(client, expert, project):
    iid = _items(client, expert, project["id"], 1)[0]
    _label(client, expert, iid, {"digit": "7", "thickness": "2"})
    _label(client, expert, iid, {"thickness": "4"})
    assert client.get(f"/api/v1/items/{iid}", headers=expert).json()["labels"] == {"digit": "7", "thickness": "4"}


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"values": {"colour": "red"}}, "unknown attribute 'colour'"),
        ({"values": {"digit": "11"}}, "'digit'"),
        ({"values": {"thickness": "9"}}, "'thickness'"),
        ({"values": {"digit": 3}}, "'digit'"),
        ({"values": {}}, "at least one attribute"),
        ({"values": {"digit": None}}, "at least one attribute"),
        ({"values": "7"}, "values"),
        ({"values": {"digit": "1"}, "idempotency_key": 5}, "idempotency_key"),
        ({"values": {"digit": "1"}, "surprise": True}, "surprise"),
        ({}, "values"),
    ],
)
def test_bad_label_bodies_are_422_naming_the_problem_and_write_nothing(client, expert, project, db, body, fragment):
    iid = _items(client, expert, project["id"], 1)[0]
    r = client.post(f"/api/v1/items/{iid}/labels", json=body, headers=expert)
    assert r.status_code == 422, r.text
    assert fragment in json.dumps(r.json()["detail"])
    assert count(db, "labels") == 0 and count(db, "items", "labelled") == 0


def test_malformed_json_is_422(client, expert, project, db):
    iid = _items(client, expert, project["id"], 1)[0]
    r = client.post(
        f"/api/v1/items/{iid}/labels",
        content=b'{"values": {"digit": "1"',
        headers={**expert, "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and count(db, "labels") == 0


def test_continuous_values_are_checked_against_low_and_high(client, admin, expert):
    attrs = [{"name": "angle", "kind": "continuous", "low": 0, "high": 360}]
    p = create_project(client, admin, name="angles", attributes=attrs)
    iid = _items(client, expert, p["id"], 1)[0]
    assert _label(client, expert, iid, {"angle": 90.5}).status_code == 201
    r = _label(client, expert, iid, {"angle": 400})
    assert r.status_code == 422 and "'angle'" in r.json()["detail"]
    assert _label(client, expert, iid, {"angle": "ninety"}).status_code == 422


def test_a_label_for_another_projects_item_is_refused(client, admin, expert, project, db):
    other = create_project(client, admin, name="other")
    iid = _items(client, expert, other["id"], 1)[0]
    r = _label(client, expert, iid, {"digit": "1"}, project_id=project["id"])
    assert r.status_code == 422 and "belongs to project" in r.json()["detail"]
    r = client.post(
        f"/api/v1/projects/{project['id']}/labels:import",
        json={"labels": [{"item_id": iid, "values": {"digit": "1"}}]},
        headers=admin,
    )
    assert r.status_code == 422 and "belongs to project" in json.dumps(r.json()["detail"])
    assert count(db, "labels") == 0


def test_an_idempotency_key_makes_retries_exactly_once(client, expert, project, db):
    iid = _items(client, expert, project["id"], 1)[0]
    first = _label(client, expert, iid, {"digit": "5"}, idempotency_key="k-1")
    again = _label(client, expert, iid, {"digit": "5"}, idempotency_key="k-1")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["replayed"] is True
    assert count(db, "labels") == 1
    assert client.get(f"/api/v1/items/{iid}", headers=expert).json()["label_count"] == 1


def test_same_idempotency_key_with_a_different_body_is_409(client, expert, project, db):
    iid = _items(client, expert, project["id"], 1)[0]
    assert _label(client, expert, iid, {"digit": "5"}, idempotency_key="k-2").status_code == 201
    r = _label(client, expert, iid, {"digit": "6"}, idempotency_key="k-2")
    assert r.status_code == 409 and "idempotency_key" in r.json()["detail"]
    assert count(db, "labels") == 1


def test_idempotency_keys_are_per_user(client, accounts, expert, project, db):
    other = accounts.add("expert2", "expert")
    iid = _items(client, expert, project["id"], 1)[0]
    assert _label(client, expert, iid, {"digit": "5"}, idempotency_key="same").status_code == 201
    assert _label(client, other, iid, {"digit": "5"}, idempotency_key="same").status_code == 201
    assert count(db, "labels") == 2


def test_undo_appends_a_retraction_and_restores_the_previous_value(client, expert, project, db):
    iid = _items(client, expert, project["id"], 1)[0]
    _label(client, expert, iid, {"digit": "1"})
    second = _label(client, expert, iid, {"digit": "2"}).json()
    r = client.post(f"/api/v1/labels/{second['id']}/retract", headers=expert)
    assert r.status_code == 201 and r.json()["kind"] == "retraction" and r.json()["retracts_id"] == second["id"]
    item = client.get(f"/api/v1/items/{iid}", headers=expert).json()
    assert item["labels"] == {"digit": "1"} and item["label_count"] == 1 and item["labelled"] is True
    assert count(db, "labels") == 3  # nothing deleted
    assert client.post(f"/api/v1/labels/{second['id']}/retract", headers=expert).status_code == 409


def test_retracting_the_only_label_makes_the_item_unlabelled_again(client, expert, project):
    iid = _items(client, expert, project["id"], 1)[0]
    lid = _label(client, expert, iid, {"digit": "1"}).json()["id"]
    client.post(f"/api/v1/labels/{lid}/retract", headers=expert)
    item = client.get(f"/api/v1/items/{iid}", headers=expert).json()
    assert item["labelled"] is False and item["labels"] == {}
    unlabelled = client.get(
        f"/api/v1/projects/{project['id']}/items", params={"labelled": False, "limit": 1}, headers=expert
    ).json()["items"]
    assert unlabelled[0]["id"] == iid


def test_only_the_author_or_an_admin_may_retract(client, accounts, expert, admin, project):
    other = accounts.add("expert2", "expert")
    iid = _items(client, expert, project["id"], 1)[0]
    lid = _label(client, expert, iid, {"digit": "1"}).json()["id"]
    assert client.post(f"/api/v1/labels/{lid}/retract", headers=other).status_code == 403
    assert client.post(f"/api/v1/labels/{lid}/retract", headers=admin).status_code == 201


def test_a_retrain_is_queued_after_retrain_every_training_labels(client, admin, expert, db):
    p = create_project(client, admin, name="small", settings={"retrain_every": 3})
    ids = _items(client, expert, p["id"], 7)
    for iid in ids[:2]:
        _label(client, expert, iid, {"digit": "1"})
    assert count(db, "jobs", "kind = 'retrain'") == 0
    _label(client, expert, ids[2], {"digit": "1"})
    assert count(db, "jobs", "kind = 'retrain' AND status = 'queued'") == 1
    for iid in ids[3:7]:  # a queued retrain is never duplicated
        _label(client, expert, iid, {"digit": "1"})
    assert count(db, "jobs", "kind = 'retrain'") == 1


def test_eval_labels_do_not_count_towards_a_retrain(client, admin, expert, db):
    p = create_project(client, admin, name="small", settings={"retrain_every": 2})
    ids = _items(client, expert, p["id"], 3)
    r = client.post(
        f"/api/v1/projects/{p['id']}/labels:import",
        headers=admin,
        json={
            "labels": [
                {"item_id": ids[0], "values": {"digit": "1"}, "eval": True},
                {"item_id": ids[1], "values": {"digit": "2"}, "eval": True},
            ]
        },
    )
    assert r.status_code == 201 and r.json()["eval"] == 2
    assert count(db, "jobs", "kind = 'retrain'") == 0
    assert client.get(f"/api/v1/items/{ids[0]}", headers=expert).json()["split"] == "eval"
    assert _label(client, expert, ids[0], {"digit": "3"}).json()["eval"] is True


def test_bulk_import_by_source_index_is_all_or_nothing(client, admin, project, db):
    url = f"/api/v1/projects/{project['id']}/labels:import"
    good = {"source_index": 0, "values": {"digit": "0"}}
    r = client.post(url, json={"labels": [good, {"source_index": 1, "values": {"digit": "x"}}]}, headers=admin)
    assert r.status_code == 422 and "labels[1]" in json.dumps(r.json()["detail"])
    assert count(db, "labels") == 0
    r = client.post(url, json={"labels": [good, {"source_index": 5, "values": {"digit": "9"}}]}, headers=admin)
    assert r.status_code == 201 and r.json()["imported"] == 2
    assert count(db, "items", "labelled") == 2


def test_an_item_with_training_labels_cannot_join_the_eval_split(client, admin, expert, project, db):
    iid = _items(client, expert, project["id"], 1)[0]
    _label(client, expert, iid, {"digit": "1"})
    r = client.post(
        f"/api/v1/projects/{project['id']}/labels:import",
        headers=admin,
        json={"labels": [{"item_id": iid, "values": {"digit": "1"}, "eval": True}]},
    )
    assert r.status_code == 422 and "training labels" in json.dumps(r.json()["detail"])
    assert count(db, "labels") == 1


def test_export_gives_current_values_as_json_jsonl_and_csv(client, expert, viewer, project):
    ids = _items(client, expert, project["id"], 2)
    _label(client, expert, ids[0], {"digit": "4", "thickness": "1"})
    _label(client, expert, ids[1], {"digit": "8"})
    url = f"/api/v1/projects/{project['id']}/labels"
    as_json = client.get(url, headers=viewer).json()["labels"]
    assert [(r["item_id"], r["values"]) for r in as_json] == [
        (ids[0], {"digit": "4", "thickness": "1"}),
        (ids[1], {"digit": "8"}),
    ]
    lines = client.get(url, params={"format": "jsonl"}, headers=viewer).text.strip().splitlines()
    assert [json.loads(line)["item_id"] for line in lines] == ids
    rows = list(csv.DictReader(io.StringIO(client.get(url, params={"format": "csv"}, headers=viewer).text)))
    assert rows[1]["digit"] == "8" and rows[1]["thickness"] == "" and rows[0]["source_index"] == "0"
    history = client.get(url, params={"history": True}, headers=viewer).json()["labels"]
    assert len(history) == 2 and all(h["kind"] == "label" for h in history)
    assert client.get(url, params={"format": "xml"}, headers=viewer).status_code == 422
