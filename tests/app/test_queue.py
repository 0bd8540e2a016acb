"""The labelling queue: leases, eval hand-outs, acquisition order, release and expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.db.base import utcnow
from tests.conftest import count, create_project


def _next(client, headers, pid, n=1):
    r = client.post(f"/api/v1/projects/{pid}/queue/next", params={"n": n}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_next_returns_n_distinct_items_each_under_a_lease(client, expert, project, db):
    items = _next(client, expert, project["id"], 5)
    assert len({i["item_id"] for i in items}) == 5
    assert all(i["lease_id"] and i["expires_at"] and i["image_url"].endswith("/image.png") for i in items)
    assert count(db, "leases", "ended_at IS NULL") == 5
    assert count(db, "items", "lease_id IS NOT NULL") == 5


def test_next_item_never_hands_out_a_leased_item(client, accounts, expert, project):
    other = accounts.add("expert2", "expert")
    mine = {i["item_id"] for i in _next(client, expert, project["id"], 50)}
    theirs = {i["item_id"] for i in _next(client, other, project["id"], 50)}
    assert len(mine) == 50 and len(theirs) == 50 and not mine & theirs


def test_your_own_live_leases_come_back_first(client, expert, project):
    first = _next(client, expert, project["id"], 2)
    again = _next(client, expert, project["id"], 3)
    assert [i["lease_id"] for i in again[:2]] == [i["lease_id"] for i in first]
    assert again[0]["resumed"] is True and again[2]["resumed"] is False


def test_next_item_never_hands_out_a_labelled_item(client, admin, expert, db):
    p = create_project(client, admin, name="tiny", dataset={"source": "shapes", "n": 6})
    ids = [i["id"] for i in client.get(f"/api/v1/projects/{p['id']}/items", headers=admin).json()["items"]]
    r = client.post(
        f"/api/v1/projects/{p['id']}/labels:import",
        headers=admin,
        json={"labels": [{"item_id": i, "values": {"digit": "1"}} for i in ids[:4]]},
    )
    assert r.status_code == 201
    got = {i["item_id"] for i in _next(client, expert, p["id"], 10)}
    assert got == set(ids[4:])


def test_submitting_a_label_ends_the_lease(client, expert, project, db):
    item = _next(client, expert, project["id"])[0]
    r = client.post(
        f"/api/v1/items/{item['item_id']}/labels",
        headers=expert,
        json={"values": {"digit": "3"}, "lease_id": item["lease_id"]},
    )
    assert r.status_code == 201
    db.rollback()
    row = db.execute(sa.text("SELECT end_reason FROM leases WHERE id = :i"), {"i": item["lease_id"]}).scalar()
    assert row == "labelled"
    assert count(db, "items", "lease_id IS NOT NULL") == 0


def test_a_skipped_item_goes_to_other_experts_not_back_to_the_one_who_skipped(client, admin, accounts, expert, db):
    p = create_project(client, admin, name="tiny", dataset={"source": "shapes", "n": 1})
    item = _next(client, expert, p["id"])[0]
    assert client.post(f"/api/v1/projects/{p['id']}/queue/next", headers=expert).json()["items"][0]["resumed"]
    r = client.post(f"/api/v1/leases/{item['lease_id']}/release", headers=expert)
    assert r.status_code == 200 and r.json()["end_reason"] == "released"
    # The only item is free again, but not for the expert who skipped it: the queue says why it is empty.
    r = client.post(f"/api/v1/projects/{p['id']}/queue/next", headers=expert)
    assert r.json()["items"] == [] and r.json()["skipped"] == 1 and r.json()["next_return_at"]
    other = accounts.add("expert2", "expert")
    again = _next(client, other, p["id"])
    assert again[0]["item_id"] == item["item_id"] and again[0]["lease_id"] != item["lease_id"]
    assert client.post(f"/api/v1/leases/{item['lease_id']}/release", headers=expert).status_code == 409
    db.rollback()
    assert db.execute(sa.text("SELECT skip_count FROM items WHERE id = :i"), {"i": item["item_id"]}).scalar() == 1


def test_a_skip_lapses_after_the_projects_skip_hours(client, admin, expert, db):
    p = create_project(client, admin, name="tiny", dataset={"source": "shapes", "n": 1}, settings={"skip_hours": 0.5})
    item = _next(client, expert, p["id"])[0]
    client.post(f"/api/v1/leases/{item['lease_id']}/release", headers=expert)
    assert _next(client, expert, p["id"]) == []
    # Half an hour later (moved by hand) the item is back for them.
    past = utcnow() - timedelta(seconds=1)
    db.execute(
        sa.text("UPDATE skips SET until = :t"),
        {"t": past.replace(tzinfo=None) if db.get_bind().dialect.name == "sqlite" else past},
    )
    db.commit()
    assert [i["item_id"] for i in _next(client, expert, p["id"])] == [item["item_id"]]


def test_skip_hours_zero_lets_an_item_come_straight_back(client, admin, expert):
    p = create_project(client, admin, name="tiny", dataset={"source": "shapes", "n": 1}, settings={"skip_hours": 0})
    item = _next(client, expert, p["id"])[0]
    client.post(f"/api/v1/leases/{item['lease_id']}/release", headers=expert)
    assert [i["item_id"] for i in _next(client, expert, p["id"])] == [item["item_id"]]


def test_skip_lasts_the_rest_of_the_utc_day_by_default():
    from datetime import UTC, datetime

    from app.services.queue import skip_until

    now = datetime(2026, 12, 4, 23, 15, tzinfo=UTC)
    assert skip_until(now, None) == datetime(2026, 12, 5, tzinfo=UTC)
    assert skip_until(now, 2) == datetime(2026, 12, 5, 1, 15, tzinfo=UTC)


def test_items_skipped_by_every_active_expert_are_listed_for_the_admin(client, admin, accounts, expert):
    p = create_project(client, admin, name="tiny", dataset={"source": "shapes", "n": 3})
    other = accounts.add("expert2", "expert")
    url = f"/api/v1/projects/{p['id']}/items/skipped"
    assert client.get(url, headers=expert).status_code == 403
    a = _next(client, expert, p["id"])[0]
    b = _next(client, other, p["id"])[0]
    client.post(f"/api/v1/leases/{a['lease_id']}/release", headers=expert)
    # Only one of the two experts skipped it: not listed yet.
    assert client.get(url, headers=admin).json() == {"experts": 2, "items": []}
    a2 = _next(client, other, p["id"], 3)
    assert a["item_id"] in {i["item_id"] for i in a2}
    lease = next(i for i in a2 if i["item_id"] == a["item_id"])
    client.post(f"/api/v1/leases/{lease['lease_id']}/release", headers=other)
    listed = client.get(url, headers=admin).json()
    assert listed["experts"] == 2
    assert [(i["item_id"], i["skip_count"]) for i in listed["items"]] == [(a["item_id"], 2)]
    assert b["item_id"] not in {i["item_id"] for i in listed["items"]}


def test_an_admin_freeing_someone_elses_lease_is_not_their_skip(client, admin, expert, db):
    p = create_project(client, admin, name="tiny", dataset={"source": "shapes", "n": 1})
    item = _next(client, expert, p["id"])[0]
    assert client.post(f"/api/v1/leases/{item['lease_id']}/release", headers=admin).status_code == 200
    assert count(db, "skips") == 0
    assert [i["item_id"] for i in _next(client, expert, p["id"])] == [item["item_id"]]


def _expire(db, lease_id):
    past = utcnow() - timedelta(seconds=1)
    db.rollback()
    db.execute(
        sa.text("UPDATE leases SET expires_at = :t WHERE id = :i"),
        {"t": past.replace(tzinfo=None) if db.get_bind().dialect.name == "sqlite" else past, "i": lease_id},
    )
    db.execute(
        sa.text("UPDATE items SET lease_expires_at = :t WHERE lease_id = :i"),
        {"t": past.replace(tzinfo=None) if db.get_bind().dialect.name == "sqlite" else past, "i": lease_id},
    )
    db.commit()


def test_an_expired_lease_returns_its_item_to_the_pool(client, accounts, admin, expert, db):
    p = create_project(client, admin, name="tiny", dataset={"source": "shapes", "n": 1})
    other = accounts.add("expert2", "expert")
    item = _next(client, expert, p["id"])[0]
    assert _next(client, other, p["id"]) == []
    _expire(db, item["lease_id"])
    got = _next(client, other, p["id"])
    assert [i["item_id"] for i in got] == [item["item_id"]]
    db.rollback()
    assert (
        db.execute(sa.text("SELECT end_reason FROM leases WHERE id = :i"), {"i": item["lease_id"]}).scalar()
        == "expired"
    )


def test_a_label_with_an_expired_lease_is_409_and_writes_nothing(client, expert, project, db):
    item = _next(client, expert, project["id"])[0]
    _expire(db, item["lease_id"])
    r = client.post(
        f"/api/v1/items/{item['item_id']}/labels",
        headers=expert,
        json={"values": {"digit": "3"}, "lease_id": item["lease_id"]},
    )
    assert r.status_code == 409 and "expired" in r.json()["detail"]
    assert count(db, "labels") == 0


def test_a_label_with_another_users_lease_is_403_and_writes_nothing(client, accounts, expert, project, db):
    other = accounts.add("expert2", "expert")
    item = _next(client, other, project["id"])[0]
    r = client.post(
        f"/api/v1/items/{item['item_id']}/labels",
        headers=expert,
        json={"values": {"digit": "3"}, "lease_id": item["lease_id"]},
    )
    assert r.status_code == 403 and "another user" in r.json()["detail"]
    assert client.post(f"/api/v1/leases/{item['lease_id']}/release", headers=expert).status_code == 403
    assert count(db, "labels") == 0


def test_a_lease_for_a_different_item_is_422(client, expert, project, db):
    a, b = _next(client, expert, project["id"], 2)
    r = client.post(
        f"/api/v1/items/{b['item_id']}/labels",
        headers=expert,
        json={"values": {"digit": "3"}, "lease_id": a["lease_id"]},
    )
    assert r.status_code == 422 and count(db, "labels") == 0
    r = client.post(
        f"/api/v1/items/{b['item_id']}/labels", headers=expert, json={"values": {"digit": "3"}, "lease_id": "nope"}
    )
    assert r.status_code == 422


def test_eval_hand_outs_join_the_eval_split_and_their_labels_are_flagged(client, admin, expert, db):
    p = create_project(client, admin, name="evalonly", settings={"eval_fraction": 1.0})
    items = _next(client, expert, p["id"], 4)
    assert all(i["eval"] for i in items)
    assert count(db, "items", "split = 'eval'") == 4
    r = client.post(
        f"/api/v1/items/{items[0]['item_id']}/labels",
        headers=expert,
        json={"values": {"digit": "3"}, "lease_id": items[0]["lease_id"]},
    )
    assert r.json()["eval"] is True


def test_the_eval_fraction_of_hand_outs_is_respected(client, accounts, admin, expert, db):
    p = create_project(client, admin, name="some-eval", settings={"eval_fraction": 0.25})
    other = accounts.add("expert2", "expert")
    items = _next(client, expert, p["id"], 100) + _next(client, other, p["id"], 100)
    n_eval = sum(i["eval"] for i in items)
    assert 26 <= n_eval <= 74  # 200 Bernoulli(0.25) draws: mean 50, sd 6.1 (±4 sd)
    assert count(db, "items", "split = 'eval'") == n_eval


def test_queue_follows_the_active_models_scores_and_skips_eval_items(client, admin, expert, db, app):
    from app.db.models import Item, ModelVersion, Score

    p = create_project(client, admin, name="scored", dataset={"source": "shapes", "n": 30})
    with app.state.db.session() as s:
        ids = list(s.scalars(sa.select(Item.id).where(Item.project_id == p["id"]).order_by(Item.id)))
        mv = ModelVersion(project_id=p["id"], version=1, active=True)
        s.add(mv)
        s.flush()
        s.add_all(Score(model_version_id=mv.id, strategy="bald", item_id=i, score=float(k)) for k, i in enumerate(ids))
        s.execute(sa.update(Item).where(Item.id == ids[-1]).values(split="eval"))
        s.commit()
    got = _next(client, expert, p["id"], 3)
    # The highest score is an eval item, so the queue starts at the second highest.
    assert [i["item_id"] for i in got] == [ids[-2], ids[-3], ids[-4]]
    assert [i["score"] for i in got] == [28.0, 27.0, 26.0]
    scores = client.get(f"/api/v1/projects/{p['id']}/scores", params={"limit": 2}, headers=expert).json()
    assert [s["item_id"] for s in scores["items"]] == [ids[-1], ids[-2]] and scores["model_version"] == 1


def test_random_order_before_any_model_covers_the_pool(client, admin, expert):
    p = create_project(client, admin, name="rand", dataset={"source": "shapes", "n": 20})
    got = {i["item_id"] for i in _next(client, expert, p["id"], 25)}
    assert len(got) == 20


def test_viewers_cannot_pull_the_queue(client, viewer, project):
    assert client.post(f"/api/v1/projects/{project['id']}/queue/next", headers=viewer).status_code == 403


def test_after_a_job_sqlite_walks_the_score_index_for_the_scored_hand_out(client, admin, app):
    """Without statistics SQLite drove the scored hand-out from every free item and sorted them (2 ms on
    2,800 items, inside the write lock); the worker's ANALYZE after a job lets it walk the score index, also
    on a pooled connection that was open (and planned this query) before the ANALYZE: such a connection
    keeps its old statistics, so the pool replaces it at checkout."""
    from app.db.models import Item, ModelVersion, Score
    from app.services.queue import _candidates, _Pool

    db = app.state.db
    if not db.is_sqlite:
        pytest.skip("PostgreSQL keeps its own statistics (autovacuum)")
    p = create_project(client, admin, name="planned", dataset={"source": "shapes", "n": 3000, "size": 16})
    with db.session() as s:
        mv = ModelVersion(project_id=p["id"], version=1, active=True)
        s.add(mv)
        s.flush()
        ids = s.scalars(sa.select(Item.id).where(Item.project_id == p["id"])).all()
        s.execute(
            sa.insert(Score),
            [{"model_version_id": mv.id, "strategy": "bald", "item_id": i, "score": (i * 7919) % 1000} for i in ids],
        )
        s.commit()
        mv_id = mv.id

    def plan() -> list[str]:
        with db.session(write=False) as s:
            captured: list[str] = []

            @sa.event.listens_for(s.get_bind(), "before_cursor_execute", retval=True)
            def explain(conn, cursor, statement, parameters, context, executemany):
                if statement.lstrip().upper().startswith("SELECT ITEMS.ID, SCORES.SCORE"):
                    captured.extend(r[3] for r in cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters))
                return statement, parameters

            try:
                now = utcnow()
                # The queue's own scan (next_batch), as an expert with no skips meets it.
                got = _candidates(s, "scored", _Pool("pool"), 5, pid=p["id"], uid=1, now=now, mv=mv_id, strategy="bald")
            finally:
                sa.event.remove(s.get_bind(), "before_cursor_execute", explain)
        assert len(got) == 5 and [g[1] for g in got] == sorted((g[1] for g in got), reverse=True)
        return captured

    before = plan()
    assert any("TEMP B-TREE FOR ORDER BY" in step for step in before), before  # every free item, then a sort
    db.refresh_statistics()
    after = plan()
    assert after[0].startswith("SEARCH scores USING INDEX ix_scores_model_version_strategy_score"), after
