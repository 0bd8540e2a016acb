"""The worker end to end on SQLite: digits → pretrain → expert labels → automatic retrain → new queue order."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from tests.app.worker_support import wait_job
from tests.conftest import DIGITS_ATTRIBUTES
from tests.quality import SEED, at_least

# A base VAE trained long enough for z to carry the digit, and a lens trained long enough to learn
# from 50 labels: otherwise a trained lens and an untrained one cannot be told apart (measured: with
# a 4-epoch VAE and a 5-epoch lens, the stored lens's held-out digit log-likelihood was below uniform).
REP = {"source": "vae", "latent_dim": 10, "epochs": 15}
LENS = {"epochs": 30, "n_flows": 8, "hidden": 128}
N_EVAL = 290  # the 290 digits from 1500 on: held-out figures steady enough to assert on


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
    # Before the first model the queue hands out in random order (Python's ``random``): seeded, the 60
    # labelled items are the same on every run of a seed, so LENSLAB_TEST_SEED moves them.
    random.seed(SEED)
    acc = Accounts(client.app)
    admin, expert = acc.add("admin", "admin"), acc.add("expert", "expert")
    body = {
        "name": "digits",
        "dataset": {"source": "digits"},
        "attributes": DIGITS_ATTRIBUTES,
        "representation": REP,
        "strategy": "bald",  # the per-item order this test follows (batch rules: test_worker_jobs.py)
        # The activation gate is not what this test is about (test_activation_gate.py is): on this small
        # base the lens's metric is level with raw z's (17.0 vs 16.8), so the gate would decide by noise
        # whether version 1 goes live (a CI run saw it held back). A margin of -100 lets it through.
        "settings": {"retrain_every": 50, "eval_fraction": 0.0, "lens": LENS, "activation_margin": -100},
    }
    r = client.post("/api/v1/projects", json=body, headers=admin)
    assert r.status_code == 201, r.text
    pid, pretrain = r.json()["id"], r.json()["job"]["id"]
    job = wait_job(client, admin, pretrain, timeout=120)
    assert (
        job["result"]["dim"] == REP["latent_dim"] and job["result"]["n_items"] == 1797 and job["result"]["test_ll"] < 0
    )
    assert job["runs"][0]["outcome"] == "succeeded"

    digit, thick = _ground_truth()
    # Held-out labels for the metric, by source_index (the simulated expert knows the ground truth).
    rows = [{"source_index": i, "values": _values(digit, thick, i), "eval": True} for i in range(1500, 1500 + N_EVAL)]
    assert client.post(f"/api/v1/projects/{pid}/labels:import", json={"labels": rows}, headers=admin).status_code in (
        200,
        201,
    )

    labelled: list[int] = []
    while len(labelled) < 60:
        got = client.post(f"/api/v1/projects/{pid}/queue/next?n=10", headers=expert).json()["items"]
        for entry in got:
            if len(labelled) == 60:
                client.post(f"/api/v1/leases/{entry['lease_id']}/release", headers=expert)
                continue
            src = client.get(f"/api/v1/items/{entry['item_id']}", headers=expert).json()["source_index"]
            r = client.post(
                f"/api/v1/items/{entry['item_id']}/labels",
                headers=expert,
                json={"values": _values(digit, thick, src), "lease_id": entry["lease_id"]},
            )
            assert r.status_code == 201, r.text
            labelled.append(entry["item_id"])

    retrains = [
        j for j in client.get(f"/api/v1/projects/{pid}/jobs", headers=admin).json()["jobs"] if j["kind"] == "retrain"
    ]
    assert len(retrains) == 1 and retrains[0]["params"]["reason"] == "50 new labels"
    done = wait_job(client, admin, retrains[0]["id"], timeout=120)
    assert done["result"]["version"] == 1 and done["result"]["n_labels"] >= 50

    models = client.get(f"/api/v1/projects/{pid}/models", headers=admin).json()["models"]
    assert [(m["version"], m["active"]) for m in models] == [(1, True)]
    assert models[0]["content_hash"] and models[0]["stats"]["epochs"] == LENS["epochs"]

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
        assert 0 < a["score"] <= 100 and 0 <= a["accuracy"] <= 1 and a["n_test"] == N_EVAL
        assert 0 < a["z_score"] <= 100  # the same metric on raw z, for comparison
    # The stored lens is the trained one: its head p(s|z*) predicts held-out eval items better than a
    # uniform guess. Mean log p(true level) − log(uniform), over 12 runs (threads 1 and 2, the queue's
    # random first hand-outs differing): digit 0.071–0.469, thickness 0.019–0.209, their sum never
    # below 0.119; an untrained lens stored instead gives digit −0.34, thickness −0.01 (sum −0.35).
    # Thickness alone is too close to that to bound on 60 labels, so the bounds are on digit and on
    # the sum. The metric itself is not compared with raw z here: on this small base the lens's
    # one-dimension score is level with raw z's (17.0 vs 16.8).
    exported = client.get(f"/api/v1/projects/{pid}/labels", headers=admin).json()["labels"]
    evals = [r for r in exported if r["split"] == "eval"]
    assert len(evals) == N_EVAL
    log_p = {"digit": 0.0, "thickness": 0.0}
    for r in evals:
        rep = client.get(f"/api/v1/items/{r['item_id']}/representation", headers=admin).json()
        assert rep["model_version"] == 1
        for name in log_p:
            log_p[name] += math.log(max(1e-12, rep["predictions"][name]["probs"][r["values"][name]])) / N_EVAL
    gain = {"digit": log_p["digit"] - math.log(1 / 10), "thickness": log_p["thickness"] - math.log(1 / 5)}
    at_least("stored lens: held-out digit log p - uniform", gain["digit"], 0.0)
    at_least("stored lens: held-out digit + thickness log p - uniform", gain["digit"] + gain["thickness"], 0.05)
    assert points[0]["test_ll"] == pytest.approx(job["result"]["test_ll"])
    assert points[0]["n_eval"] == N_EVAL and points[0]["skipped"] == {}
