"""``lenslab bench al``: simulated experts label MNIST through the REST API while the product retrains.

Nothing here calls the services or the worker's code: per (seed, strategy) a fresh SQLite file, a
``lenslab serve``-equivalent uvicorn process and a ``lenslab worker`` process; the admin and the experts
are made with ``lenslab users add`` (as an operator would), every other step is an HTTP call. The admin
creates the project (the base representation imported as embeddings), imports the eval labels
(``labels:import`` with ``eval: true``); experts (threads, each logged in with its own token) take
items from ``queue/next`` and post the true labels. The product's own worker retrains after every
``retrain_every`` labels; the experts wait for that retrain (rounds, as in the paper's Fig. 8) and the
product's ``metrics`` endpoint is read after it: the score of what is served, raw z's score on the same
eval items, and what the new version measured.

The base representation is the conv VAE of ``ml.vae`` trained once per seed on the project's images
(cached), so strategies compare paired on the same z.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "bench password 0123"
LEVELS = {"digit": [str(i) for i in range(10)], "thickness": [f"t{i}" for i in range(5)]}
ATTRIBUTES = [
    {"name": "digit", "kind": "categorical", "levels": LEVELS["digit"]},
    {"name": "thickness", "kind": "ordinal", "levels": LEVELS["thickness"]},
]


@dataclass
class Base:
    """One seed's base representation of the project's items and the experts' ground truth."""

    z: np.ndarray  # (N, d) float32, row = the item's source_index
    truth: dict[str, np.ndarray]  # attribute → level index per row
    eval_rows: np.ndarray  # rows whose labels form the eval set


# A collapsed base is refitted with seed + stride·attempt, clear of the other bases' seeds.
REFIT_SEED_STRIDE = 1000


def base_representation(
    data_dir: Path, seed: int, n_pool: int, n_eval: int, epochs: int, cache_dir: Path, log: Any = print
) -> Base:
    """MNIST test images (a fixed subset), their thickness levels, and a seeded conv VAE's z (cached)."""
    from ml.data import load_mnist, stroke_thickness, thickness_levels
    from ml.steps import COLLAPSE_RETRIES, z_collapsed

    test = load_mnist(data_dir / "mnist", "test")
    n = n_pool + n_eval
    if n > len(test):
        raise ValueError(f"--pool + --eval must be at most {len(test)}, got {n}")
    rows = np.random.default_rng(1234).permutation(len(test))[:n]
    X = test.images[rows]
    thick = stroke_thickness(X)
    _, edges = thickness_levels(thick[:n_pool], 5)
    levels, _ = thickness_levels(thick, edges=edges)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"al-vae-mnist{n}-e{epochs}-seed{seed}.npy"
    z = np.load(path) if path.exists() else None
    if z is None or z_collapsed(z):
        # As the product's pretrain does (ml.steps): a VAE whose z collapsed (every image the same z,
        # every score at chance) is refitted with other seeds, so no seed of the comparison is void. Not
        # the next seed, as the pretrain takes: that is the next base's own, and the two would be one.
        from ml.vae import VAE

        t0 = time.perf_counter()
        for attempt in range(COLLAPSE_RETRIES + 1):
            fit_seed = seed + REFIT_SEED_STRIDE * attempt
            vae = VAE(image_shape=(1, 28, 28), latent_dim=10, epochs=epochs, seed=fit_seed, device="cpu").fit(X)
            z = vae.encode(X).astype(np.float32)
            if not z_collapsed(z):
                break
            log(f"seed {seed}: the base VAE with seed {fit_seed} collapsed; refitting")
        np.save(path, z)
        log(f"seed {seed}: base VAE, {epochs} epochs on {n} images, {time.perf_counter() - t0:.0f} s")
    return Base(
        z=z,
        truth={"digit": test.factors["label"][rows].astype(int), "thickness": levels.astype(int)},
        eval_rows=np.arange(n_pool, n),
    )


def _cli(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, env={**os.environ, **env}, check=True, capture_output=True
    )


def _token(base_url: str, username: str) -> str:
    """Log in as ``username`` (session + CSRF) and create an API token, as a user would in the browser."""
    with httpx.Client(base_url=base_url, timeout=30) as c:
        r = c.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
        r.raise_for_status()
        r = c.post("/api/v1/tokens", json={"name": "bench"}, headers={"X-CSRF-Token": r.json()["csrf_token"]})
        r.raise_for_status()
        return str(r.json()["token"])


def _wait_retrains(c: httpx.Client, pid: int, done: int, timeout: float = 1800.0) -> dict[str, Any]:
    """Wait until ``done`` retrain jobs of the project have finished; the newest one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for j in c.get(f"/api/v1/projects/{pid}/jobs").json()["jobs"] if j["kind"] == "retrain"]
        finished = [j for j in jobs if j["status"] in ("succeeded", "failed", "cancelled")]
        if len(finished) >= done:
            newest = max(finished, key=lambda j: j["id"])
            if newest["status"] != "succeeded":
                raise RuntimeError(f"retrain job {newest['id']} {newest['status']}: {newest.get('message')}")
            return newest
        time.sleep(0.5)
    raise TimeoutError(f"project {pid}: retrain {done} did not finish in {timeout:.0f} s")


def run_one(
    base: Base,
    strategy: str,
    *,
    labels: int,
    retrain_every: int,
    experts: int,
    workdir: Path,
    lens: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One simulated project: rounds of ``retrain_every`` labels up to ``labels``; what was served after each."""
    from app.bench.server import stop_process, uvicorn_server

    data_dir = workdir / "data"
    data_dir.mkdir(parents=True)
    np.save(data_dir / "z.npy", base.z)
    env = {
        "LENSLAB_DATABASE_URL": f"sqlite:///{workdir / 'al.db'}",
        "LENSLAB_DATA_DIR": str(data_dir),
        "LENSLAB_SECRET_KEY": "al-bench-secret-key-0123456789abcdef",
        "LENSLAB_ENV": "development",
        "BENCH_PASSWORD": PASSWORD,
    }
    _cli(env, "db", "upgrade")
    names = ["admin"] + [f"expert{k}" for k in range(experts)]
    for name in names:
        role = "admin" if name == "admin" else "expert"
        _cli(env, "users", "add", name, "--role", role, "--password-env", "BENCH_PASSWORD")
    log_file = open(workdir / "worker.log", "wb")  # noqa: SIM115  (closed below)
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--threads", "1", "--id", "al-bench"],
        cwd=ROOT,
        env={**os.environ, **env, "LENSLAB_WORKER_POLL_S": "0.3", "LENSLAB_DEVICE": "cpu"},
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        with uvicorn_server(env, log_path=workdir / "server.log") as url:
            tokens = {name: _token(url, name) for name in names}
            return _drive(url, tokens, base, strategy, labels, retrain_every, experts, lens)
    finally:
        stop_process(worker, timeout=30)
        log_file.close()


def _drive(
    url: str,
    tokens: dict[str, str],
    base: Base,
    strategy: str,
    labels: int,
    retrain_every: int,
    experts: int,
    lens: dict[str, Any] | None,
) -> dict[str, Any]:
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['admin']}"}, timeout=60)
    settings: dict[str, Any] = {"retrain_every": retrain_every, "eval_fraction": 0.0}
    if lens:
        settings["lens"] = lens
    r = admin.post(
        "/api/v1/projects",
        json={
            "name": f"al-{strategy}",
            "dataset": {"source": "embeddings", "path": "z.npy"},
            "attributes": ATTRIBUTES,
            "representation": {"source": "embeddings"},
            "strategy": strategy,
            "settings": settings,
        },
    )
    r.raise_for_status()
    pid = int(r.json()["id"])

    def values(row: int) -> dict[str, str]:
        return {a: LEVELS[a][int(base.truth[a][row])] for a in LEVELS}

    rows = [{"source_index": int(i), "values": values(int(i)), "eval": True} for i in base.eval_rows]
    admin.post(f"/api/v1/projects/{pid}/labels:import", json={"labels": rows}).raise_for_status()
    row_of: dict[int, int] = {}
    cursor = None
    while True:  # item id → source row, from the project's item list (paged)
        page = admin.get(
            f"/api/v1/projects/{pid}/items", params={"limit": 1000, **({"cursor": cursor} if cursor else {})}
        )
        page.raise_for_status()
        body = page.json()
        row_of.update({int(it["id"]): int(it["source_index"]) for it in body["items"]})
        cursor = body.get("next_cursor")
        if not cursor:
            break

    lock = threading.Lock()
    state = {"posted": 0, "quota": 0}
    handed: list[tuple[int, int]] = []  # (expert, item id) per hand-out
    errors: list[str] = []

    def expert(k: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[f'expert{k}']}"}, timeout=60) as c:
            while True:
                with lock:
                    if state["posted"] >= state["quota"]:
                        return
                    state["posted"] += 1  # reserve one label of this round
                r = c.post(f"/api/v1/projects/{pid}/queue/next", params={"n": 1})
                items = r.json().get("items", []) if r.status_code == 200 else []
                if not items:
                    errors.append(f"queue/next {r.status_code}: {r.text[:200]}")
                    with lock:
                        state["posted"] -= 1
                    return
                it = items[0]
                with lock:
                    handed.append((k, int(it["item_id"])))
                r = c.post(
                    f"/api/v1/items/{it['item_id']}/labels",
                    json={"values": values(row_of[int(it["item_id"])]), "lease_id": it["lease_id"]},
                )
                if r.status_code not in (200, 201):
                    errors.append(f"label {r.status_code}: {r.text[:200]}")

    rounds = []
    t0 = time.perf_counter()
    for rnd in range(1, labels // retrain_every + 1):
        state["quota"] = rnd * retrain_every
        threads = [threading.Thread(target=expert, args=(k,)) for k in range(experts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        job = _wait_retrains(admin, pid, rnd)
        point = admin.get(f"/api/v1/projects/{pid}/metrics").json()["points"][-1]
        res = job["result"] or {}
        rounds.append(
            {
                "n_labels": point["n_labels"],
                "served": point["overall"],
                "raw_z": point.get("baseline_overall"),
                # The measured spread of the two (standard errors over the eval items).
                "served_se": point.get("overall_se"),
                "raw_z_se": point.get("baseline_overall_se"),
                "served_is_raw_z": bool(point.get("raw_z")),
                "attributes": {
                    a: {k: v.get(k) for k in ("score", "z_score", "chance_score", "dim")}
                    for a, v in point["attributes"].items()
                },
                "candidate": res.get("overall"),
                "activated": res.get("activated"),
                "held_back": res.get("held_back"),
                "fit_seconds": res.get("fit_seconds"),
            }
        )
    picks = [base.truth["digit"][row_of[i]] for _, i in handed]
    return {
        "rounds": rounds,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "handed": len(handed),
        "items_handed_twice": len(handed) - len({i for _, i in handed}),
        "digit_counts": np.bincount(np.asarray(picks, int), minlength=10).tolist(),
        "errors": errors[:10],
    }


def auc(rounds: list[dict[str, Any]]) -> float:
    """Mean served score over the rounds (the area under the label curve per round)."""
    vals = [r["served"] for r in rounds if r["served"] is not None]
    return float(np.mean(vals)) if vals else float("nan")


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per strategy: the served score per round (mean ± std over seeds), raw z's, the AUC, and how many
    retrains served at least raw z's score; printed as a table."""
    out: dict[str, Any] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["strategy"] == strategy]
        counts = [x["n_labels"] for x in runs[0]["rounds"]]
        served = np.array([[x["served"] for x in r["rounds"]] for r in runs], dtype=float)
        raw = np.array([[x["raw_z"] for x in r["rounds"]] for r in runs], dtype=float)
        spread = np.array(
            [[np.hypot(x.get("served_se") or 0.0, x.get("raw_z_se") or 0.0) for x in r["rounds"]] for r in runs]
        )
        out[strategy] = {
            "n_labels": counts,
            "served_mean": served.mean(0).round(2).tolist(),
            "served_std": served.std(0).round(2).tolist(),
            "raw_z_mean": raw.mean(0).round(2).tolist(),
            "auc_per_seed": [round(r["auc"], 2) for r in runs],
            "retrains_at_or_above_raw_z": f"{int((served >= raw).sum())} of {served.size}",
            "retrains_within_spread_of_raw_z": f"{int((served + spread >= raw).sum())} of {served.size}",
            "activated": f"{sum(bool(x['activated']) for r in runs for x in r['rounds'])} of {served.size}",
        }
        print(f"{strategy} ({len(runs)} seeds): labels " + " ".join(f"{c:>11}" for c in counts))
        print(
            "  served   " + " ".join(f"{m:5.1f} ± {s:3.1f}" for m, s in zip(served.mean(0), served.std(0), strict=True))
        )
        print("  raw z    " + " ".join(f"{m:11.1f}" for m in raw.mean(0)))
        print(
            f"  AUC {np.mean(out[strategy]['auc_per_seed']):.1f} (per seed {out[strategy]['auc_per_seed']}); "
            f"served ≥ raw z at {out[strategy]['retrains_at_or_above_raw_z']} retrains "
            f"({out[strategy]['retrains_within_spread_of_raw_z']} within the measured spread); "
            f"activated {out[strategy]['activated']}"
        )
    return out


def run_al_bench(
    *,
    data_dir: Path,
    seeds: int,
    strategies: list[str],
    n_pool: int,
    n_eval: int,
    labels: int,
    retrain_every: int,
    experts: int,
    base_epochs: int,
    cache_dir: Path,
    lens: dict[str, Any] | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Every (seed, strategy) run, then the summary; JSON to ``out`` when given."""
    from ml.bench.common import machine

    results: dict[str, Any] = {
        "benchmark": "al",
        "settings": {
            "seeds": seeds,
            "strategies": strategies,
            "pool": n_pool,
            "eval": n_eval,
            "labels": labels,
            "retrain_every": retrain_every,
            "experts": experts,
            "base_epochs": base_epochs,
            "lens": lens,
        },
        "machine": machine(),
        "runs": [],
    }
    for seed in range(seeds):
        base = base_representation(data_dir, seed, n_pool, n_eval, base_epochs, cache_dir)
        for strategy in strategies:
            with tempfile.TemporaryDirectory(prefix="lenslab-al-") as tmp:
                run = run_one(
                    base,
                    strategy,
                    labels=labels,
                    retrain_every=retrain_every,
                    experts=experts,
                    workdir=Path(tmp),
                    lens=lens,
                )
            run.update(seed=seed, strategy=strategy, auc=auc(run["rounds"]))
            results["runs"].append(run)
            served = " ".join(f"{r['served']:.1f}/{r['raw_z']:.1f}" for r in run["rounds"] if r["served"] is not None)
            print(f"seed {seed} {strategy}: served/raw z per round {served}  ({run['wall_seconds']:.0f} s)", flush=True)
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["summary"] = summarize(results)
    if out is not None:
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {out}")
    return results
