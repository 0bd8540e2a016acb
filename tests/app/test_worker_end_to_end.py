"""The worker end to end on SQLite: digits → pretrain → expert labels → automatic retrain → new queue order."""

from __future__ import annotations

import numpy as np
import pytest

from tests.app.worker_support import wait_job
from tests.conftest import DIGITS_ATTRIBUTES


def _ground_truth() -> tuple[np.ndarray, np.ndarray]:
    from ml.data import load_digits, stroke_thickness, thickness_levels

    ds = load_digits()
    levels, _ = thickness_levels(stroke_thickness(ds.images), n_levels=5)
    return ds.factors["digit"], levels


def _values(digit: np.ndarray, thick: np.ndarray, i: int) -> dict[str, str]:
    return {"digit": str(int(digit[i])), "thickness": str(int(thick[i]) + 1)}


def test_labels_through_the_api_trigger_a_retrain_whose_scores_order_the_queue(served):
    from tests.conftest import Accounts

    client = served
    acc = Accounts(client.app)
    admin, expert = acc.add("admin", "admin"), acc.add("expert", "expert")
    body = {"name": "digits", "dataset": {"source": "digits"}, "attributes": DIGITS_ATTRIBUTES,
            "representation": {"source": "vae", "latent_dim": 8, "epochs": 4},
            "settings": {"retrain_every": 50, "eval_fraction": 0.0, "lens": {"epochs": 5, "n_flows": 4, "hidden": 64}}}
    r = client.post("/api/v1/projects", json=body, headers=admin)
    assert r.status_code == 201, r.text
    pid, pretrain = r.json()["id"], r.json()["job"]["id"]
    job = wait_job(client, admin, pretrain, timeout=120)
    assert job["result"]["dim"] == 8 and job["result"]["n_items"] == 1797 and job["result"]["test_ll"] < 0
    assert job["runs"][0]["outcome"] == "succeeded"

    digit, thick = _ground_truth()
    # Held-out labels for the metric, by source_index (the simulated expert knows the ground truth).
    rows = [{"source_index": i, "values": _values(digit, thick, i), "eval": True} for i in range(1500, 1560)]
    assert client.post(f"/api/v1/projects/{pid}/labels:import", json={"labels": rows}, headers=admin).status_code in (200, 201)

    labelled: list[int] = []
    while len(labelled) < 60:
        got = client.post(f"/api/v1/projects/{pid}/queue/next?n=10", headers=expert).json()["items"]
        for entry in got:
            if len(labelled) == 60:
                client.post(f"/api/v1/leases/{entry['lease_id']}/release", headers=expert)
                continue
            src = client.get(f"/api/v1/items/{entry['item_id']}", headers=expert).json()["source_index"]
            r = client.post(f"/api/v1/items/{entry['item_id']}/labels", headers=expert,
                            json={"values": _values(digit, thick, src), "lease_id": entry["lease_id"]})
            assert r.status_code == 201, r.text
            labelled.append(entry["item_id"])

    retrains = [j for j in client.get(f"/api/v1/projects/{pid}/jobs", headers=admin).json()["jobs"]
                if j["kind"] == "retrain"]
    assert len(retrains) == 1 and retrains[0]["params"]["reason"] == "50 new labels"
    done = wait_job(client, admin, retrains[0]["id"], timeout=120)
    assert done["result"]["version"] == 1 and done["result"]["n_labels"] >= 50

    models = client.get(f"/api/v1/projects/{pid}/models", headers=admin).json()["models"]
    assert [(m["version"], m["active"]) for m in models] == [(1, True)]
    assert models[0]["content_hash"] and models[0]["stats"]["epochs"] == 5

    # The queue now hands out the active version's top-scored unlabelled pool items, in score order.
    top = client.get(f"/api/v1/projects/{pid}/scores?unlabelled=true&limit=5", headers=admin).json()
    assert top["model_version"] == 1 and len(top["items"]) == 5
    handed = client.post(f"/api/v1/projects/{pid}/queue/next?n=5", headers=admin).json()["items"]
    assert [h["item_id"] for h in handed] == [t["item_id"] for t in top["items"]]
    assert [h["score"] for h in handed] == pytest.approx([t["score"] for t in top["items"]])
    assert not set(labelled) & {h["item_id"] for h in handed}

    points = client.get(f"/api/v1/projects/{pid}/metrics", headers=admin).json()["points"]
    assert len(points) == 1 and points[0]["model_version"] == 1
    attrs = points[0]["attributes"]
    assert set(attrs) == {"digit", "thickness"}
    for a in attrs.values():
        assert 0 < a["score"] <= 100 and 0 <= a["accuracy"] <= 1 and a["n_test"] == 60
        assert 0 < a["z_score"] <= 100  # the same metric on raw z, for comparison
    assert points[0]["test_ll"] == pytest.approx(job["result"]["test_ll"])
    assert points[0]["n_eval"] == 60 and points[0]["skipped"] == {}
