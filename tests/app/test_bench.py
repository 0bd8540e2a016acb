"""``run_api_bench`` drives a real server end to end and reports what it measured."""

from __future__ import annotations

import json


def test_api_bench_runs_clients_against_a_real_server_and_writes_json(tmp_path):
    from app.bench.api import format_table, run_api_bench

    out = tmp_path / "api.json"
    result = run_api_bench(clients=3, rounds=4, warmup=1, think_ms=0, out=out, quiet=True)
    assert result["errors"] == 0
    assert result["operations"]["queue_next"]["n"] == 12 and result["operations"]["label_submit"]["n"] == 12
    ops = result["operations"]["queue_next"]
    assert 0 < ops["p50_ms"] <= ops["p99_ms"] <= ops["max_ms"]
    assert json.loads(out.read_text())["clients"] == 3
    assert "queue_next" in format_table(result)
