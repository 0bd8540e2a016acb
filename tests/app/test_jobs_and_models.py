"""Jobs and model versions: enqueue rules, cancel, activation, scores, metrics, z/z*/predictions, traversals."""

from __future__ import annotations

import io

import numpy as np
import pytest
import sqlalchemy as sa

from tests.conftest import count


def test_posting_a_job_returns_the_already_queued_one_of_that_kind(client, admin, project, db):
    pid = project["id"]
    r = client.post(f"/api/v1/projects/{pid}/jobs", json={"kind": "pretrain"}, headers=admin)
    assert r.status_code == 202 and r.json()["id"] == project["job"]["id"]
    r2 = client.post(
        f"/api/v1/projects/{pid}/jobs", json={"kind": "score", "params": {"reason": "by hand"}}, headers=admin
    )
    assert r2.status_code == 202 and r2.json()["kind"] == "score" and r2.json()["params"] == {"reason": "by hand"}
    assert count(db, "jobs") == 2
    listed = client.get(f"/api/v1/projects/{pid}/jobs", headers=admin).json()["jobs"]
    assert [j["kind"] for j in listed] == ["score", "pretrain"]
    assert client.post(f"/api/v1/projects/{pid}/jobs", json={"kind": "dance"}, headers=admin).status_code == 422


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        (
            "retrain",
            {"strategy": "magic"},
            "params.strategy: must be one of ['auto', 'bald', 'max_entropy', 'random', 'cover', 'typiclust', "
            "'power', 'diverse'], got 'magic'",
        ),
        (
            "score",
            {"x": 1},
            "params.x: not a parameter of score jobs (value 1); allowed: ['reason', 'model_id', 'strategy']",
        ),
        ("pretrain", {"lens": {}}, "params.lens: not a parameter of pretrain jobs"),
        ("evaluate", {"model_id": 999}, "params.model_id: no model version 999 in project"),
        ("score", {"model_id": "one"}, "params.model_id: must be a non-negative integer, got 'one'"),
        ("retrain", {"lens": {"alpha": -2}}, "alpha"),
    ],
)
def test_unknown_job_parameters_and_values_are_refused_naming_key_value_and_allowed(
    client, admin, project, db, kind, params, message
):
    r = client.post(f"/api/v1/projects/{project['id']}/jobs", json={"kind": kind, "params": params}, headers=admin)
    assert r.status_code == 422 and message in r.text, r.text
    assert count(db, "jobs") == 1  # only the project's own pretrain: nothing was queued


def test_enqueue_races_never_leave_two_queued_jobs_of_one_kind(app, project):
    from app.db.models import Job
    from app.services import jobs

    with app.state.db.session() as s:
        # A row inserted behind the service's back (as a concurrent request would) is found, not duplicated.
        with pytest.raises(sa.exc.IntegrityError):
            s.add(Job(project_id=project["id"], kind="pretrain", status="queued", params={}))
            s.commit()
        s.rollback()
        job = jobs.enqueue(session=s, project_id=project["id"], kind="pretrain")
        assert job.id == project["job"]["id"]


def test_cancel_a_queued_job_then_cancel_again_is_409(client, admin, project):
    jid = project["job"]["id"]
    r = client.post(f"/api/v1/jobs/{jid}/cancel", headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/api/v1/jobs/{jid}/cancel", headers=admin).status_code == 409
    assert client.get(f"/api/v1/jobs/{jid}", headers=admin).json()["status"] == "cancelled"
    # With the old one cancelled a new pretrain can be queued.
    r = client.post(f"/api/v1/projects/{project['id']}/jobs", json={"kind": "pretrain"}, headers=admin)
    assert r.json()["id"] != jid


def test_cancelling_a_running_job_asks_the_worker_to_stop(client, admin, project, app):
    from app.db.models import Job

    with app.state.db.session() as s:
        s.execute(sa.update(Job).where(Job.id == project["job"]["id"]).values(status="running"))
        s.commit()
    r = client.post(f"/api/v1/jobs/{project['job']['id']}/cancel", headers=admin)
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True


def _models(app, pid, n):
    from app.db.models import ModelVersion

    with app.state.db.session() as s:
        rows = [ModelVersion(project_id=pid, version=v + 1, active=v == 0, metrics={"overall": v}) for v in range(n)]
        s.add_all(rows)
        s.commit()
        return [r.id for r in rows]


def test_activating_a_model_deactivates_the_others(client, admin, viewer, project):
    ids = _models(client.app, project["id"], 3)
    r = client.post(f"/api/v1/models/{ids[2]}/activate", headers=admin)
    assert r.status_code == 200 and r.json()["active"] is True
    listed = client.get(f"/api/v1/projects/{project['id']}/models", headers=viewer).json()["models"]
    assert [(m["version"], m["active"]) for m in listed] == [(3, True), (2, False), (1, False)]
    assert client.get(f"/api/v1/projects/{project['id']}", headers=viewer).json()["active_model"]["version"] == 3


def test_scores_and_traversals_are_409_before_any_model(client, viewer, project):
    r = client.get(f"/api/v1/projects/{project['id']}/scores", headers=viewer)
    assert r.status_code == 409 and "no active model" in r.json()["detail"]
    r = client.get(f"/api/v1/projects/{project['id']}/traversals/digit.png", headers=viewer)
    assert r.status_code == 409
    iid = client.get(f"/api/v1/projects/{project['id']}/items?limit=1", headers=viewer).json()["items"][0]["id"]
    r = client.get(f"/api/v1/items/{iid}/representation", headers=viewer)
    assert r.status_code == 409 and "pretrain" in r.json()["detail"]


def test_metrics_lists_the_points_in_label_order(client, viewer, project, app):
    from app.db.models import MetricPoint

    mv = _models(app, project["id"], 1)[0]
    with app.state.db.session() as s:
        s.add_all(
            [
                MetricPoint(
                    project_id=project["id"],
                    model_version_id=mv,
                    n_labels=n,
                    overall=o,
                    attributes={"digit": {"score": o, "accuracy": 0.5, "dim": 0}},
                    test_ll=-90.0,
                )
                for n, o in ((100, 30.0), (50, 20.0))
            ]
        )
        s.commit()
    points = client.get(f"/api/v1/projects/{project['id']}/metrics", headers=viewer).json()["points"]
    assert [(p["n_labels"], p["overall"], p["model_version"]) for p in points] == [(50, 20.0, 1), (100, 30.0, 1)]
    assert points[0]["attributes"]["digit"]["score"] == 20.0


def test_representation_gives_z_z_star_and_predictions_of_the_active_model(client, viewer, fitted):
    iid = int(fitted["ids"][5])
    r = client.get(f"/api/v1/items/{iid}/representation", headers=viewer)
    assert r.status_code == 200, r.text
    body = r.json()
    assert np.allclose(body["z"], fitted["Z"][5], atol=1e-5)
    assert np.allclose(body["z_star"], fitted["lens"].transform(fitted["Z"][5:6])[0], atol=1e-4)
    probs = body["predictions"]["shape"]["probs"]
    assert set(probs) == {"square", "ellipse", "heart"} and abs(sum(probs.values()) - 1) < 1e-4
    assert set(body["predictions"]["x"]) == {"mean", "var"} and body["model_version"] == 1


def test_traversal_png_has_one_row_per_item_and_one_column_per_step(client, viewer, fitted):
    from PIL import Image

    ids = ",".join(str(int(i)) for i in fitted["ids"][:3])
    r = client.get(
        f"/api/v1/projects/{fitted['project']['id']}/traversals/shape.png",
        params={"items": ids, "steps": 5, "scale": 1},
        headers=viewer,
    )
    assert r.status_code == 200, r.text
    w, h = Image.open(io.BytesIO(r.content)).size
    assert (h, w) == (3 * 16 + 4, 5 * 16 + 6)  # tiles plus 1-pixel padding
    r = client.get(f"/api/v1/projects/{fitted['project']['id']}/traversals/colour.png", headers=viewer)
    assert r.status_code == 404
    r = client.get(
        f"/api/v1/projects/{fitted['project']['id']}/traversals/shape.png", params={"items": "1,x"}, headers=viewer
    )
    assert r.status_code == 422
