"""``lenslab bench train`` runs the real jobs and writes what it measured."""

from __future__ import annotations

import json


def test_bench_train_times_a_pretrain_and_a_warm_retrain_and_writes_json(tmp_path, capsys):
    from app.bench.train import run_train_bench

    out = tmp_path / "train.json"
    # Tiny models: this checks the benchmark's plumbing; `lenslab bench train` uses the product defaults.
    payload = run_train_bench(
        out=out,
        threads=1,
        representation={"epochs": 1, "test_ll_k": 5},
        lens={"epochs": 3, "warm_epochs": 2, "n_flows": 2, "hidden": 16},
    )
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(payload["rows"]))
    pretrain, _cold, warm, cancel = saved["rows"]
    assert pretrain["target_s"] == 60 and warm["target_s"] == 15 and cancel["target_s"] == 2
    assert saved["cancel_s"] == cancel["seconds"] > 0  # measured from the request to the job's end
    # Where the numbers came from: the code's commit, whether it had uncommitted changes, the command.
    assert {"commit", "dirty", "command", "cpu_model"} <= set(saved["machine"])
    assert saved["machine"]["commit"] is None or len(saved["machine"]["commit"]) == 40
    assert all(r["seconds"] > 0 for r in saved["rows"])
    assert (
        saved["retrain_warm"]["result"]["warm_start"] is True and saved["retrain_cold"]["result"]["warm_start"] is False
    )
    assert saved["retrain_warm"]["result"]["n_labels"] == 200 and saved["retrain_warm"]["result"]["version"] == 2
    assert "retrain, warm (200 labels)" in capsys.readouterr().out
