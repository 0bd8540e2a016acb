"""``run_api_bench`` drives a real server end to end and reports what it measured."""

from __future__ import annotations

import json


def test_api_bench_runs_clients_against_a_real_server_and_writes_json(tmp_path):
    from app.bench.api import format_table, run_api_bench

    out = tmp_path / "api.json"
    result = run_api_bench(clients=3, rounds=4, warmup=1, think_ms=0, repeats=2, out=out, quiet=True)
    assert result["errors"] == 0
    # Two phases of 3 clients × 4 kept rounds, each phase with its own items and its own p99.
    assert result["operations"]["queue_next"]["n"] == 24 and result["operations"]["label_submit"]["n"] == 24
    assert len(result["phases"]) == 2
    # The server's CPU per request, read from /proc around each phase: a real, positive cost.
    assert all(0 < ph["server_cpu_ms_per_request"] < 1000 for ph in result["phases"])
    median = result["median_phase_p99_ms"]["queue_next"]
    assert (
        min(ph["queue_next_p99_ms"] for ph in result["phases"])
        <= median
        <= result["operations"]["queue_next"]["max_ms"]
    )
    ops = result["operations"]["queue_next"]
    assert 0 < ops["p50_ms"] <= ops["p99_ms"] <= ops["max_ms"]
    assert json.loads(out.read_text())["clients"] == 3
    assert "queue_next" in format_table(result)
    # Served as experts meet the queue after the first retrain: an active lens and its ranked round.
    served = result["served_from"]
    assert served["strategy"] == "auto" and served["active_model_version"] == 1 and served["ranked_items"] > 0


def test_al_bench_drives_the_product_through_rest_and_never_serves_worse_than_raw_z(tmp_path):
    from app.bench.al import run_al_bench
    from tests.conftest import SHARED_DATA

    out = tmp_path / "al.json"
    result = run_al_bench(
        data_dir=SHARED_DATA,
        seeds=1,
        strategies=["random"],
        n_pool=300,
        n_eval=200,
        labels=100,
        retrain_every=50,
        experts=2,
        base_epochs=1,
        cache_dir=tmp_path / "cache",
        lens={"epochs": 5, "n_flows": 4, "hidden": 32},
        out=out,
    )
    (run,) = result["runs"]
    assert run["errors"] == [] and run["handed"] == 100 and run["items_handed_twice"] == 0
    assert [r["n_labels"] for r in run["rounds"]] == [50, 100]
    for r in run["rounds"]:
        # What is served after a retrain measures at least raw z on the same eval items, within the
        # measured spread (the gate); a broken gate serves tiny lenses far below it.
        assert r["served"] + (r["served_se"] ** 2 + r["raw_z_se"] ** 2) ** 0.5 >= r["raw_z"]
        assert r["activated"] or r["held_back"]
        assert set(r["attributes"]) == {"digit", "thickness"}
    assert sum(run["digit_counts"]) == 100
    assert result["summary"]["random"]["retrains_within_spread_of_raw_z"] == "2 of 2"
    assert json.loads(out.read_text())["runs"][0]["strategy"] == "random"


def test_al_bench_refits_a_cached_base_whose_z_collapsed(tmp_path):
    """A cached z that collapsed (every image the same code) voided a seed of the comparison: every
    strategy scored chance on it. The bench refits it, as the product's pretrain does."""
    import numpy as np

    from app.bench.al import base_representation
    from ml.steps import z_collapsed
    from tests.conftest import SHARED_DATA

    cache = tmp_path / "cache"
    cache.mkdir()
    path = cache / "al-vae-mnist150-e2-seed0.npy"
    np.save(path, np.zeros((150, 10), dtype=np.float32))
    said: list[str] = []
    base = base_representation(SHARED_DATA, 0, 100, 50, 2, cache, log=said.append)
    assert base.z.shape == (150, 10) and not z_collapsed(base.z)
    assert not z_collapsed(np.load(path)) and any("base VAE, 2 epochs" in s for s in said)
