"""Table 2: test log-likelihood (IWAE bound, k samples) of ILVM's base VAE and of JLVM.

ILVM's test LL is the base VAE's: the lens is a bijection on z and leaves p(x) unchanged
(DESIGN.md, the exact inverse). JLVM's is that of its own generative model p(z*) p(x|z*). Both are
IWAE bounds (Burda et al. 2016) on the held-out ``test`` images, in nats per image, with the
Bernoulli likelihood against grey values (the models are trained on grey values; the paper's
numbers are on binarised MNIST, so only the ILVM − JLVM gap is comparable, not the level).
The JLVM of each seed is table 1's (its validated β, read from ``table1.json`` and the cache);
without table 1's results it is trained with the profile's first β.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml.experiment.common import (
    Profile,
    Progress,
    base_vae,
    fmt_ms,
    header,
    mean_std,
    paired_test,
    prepare,
    random_labelled,
    reveal,
    save_outputs,
)
from ml.experiment.table1 import fit_jlvm


def chosen_betas(out: Path, dataset: str, profile: Profile) -> dict[int, float]:
    """Table 1's validated β per seed for ``dataset`` (empty when table 1 has not run at this profile)."""
    path = out / "table1.json"
    if not path.exists():
        return {}
    t1 = json.loads(path.read_text())
    if t1.get("profile") != profile.name or dataset not in t1.get("results", {}):
        return {}
    return {int(s): float(b) for s, b in t1["results"][dataset].get("jlvm_beta", {}).items()}


def run(
    profile: Profile,
    out: Path,
    seeds: int = 3,
    datasets: tuple[str, ...] = ("digits", "mnist", "shapes"),
    data_dir: str = "../shared/data",
) -> dict[str, Any]:
    """Table 2 on each data set; writes table2.{json,csv} under ``out``."""
    started = time.perf_counter()
    cache = out / "cache"
    k = profile.iwae_k
    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name in datasets:
        t_name = time.perf_counter()
        data = prepare(name, profile, data_dir)
        betas = chosen_betas(out, name, profile)
        bar = Progress(seeds * 2, f"table2 {name}")
        per: dict[str, list[float]] = {"ILVM (base VAE)": [], "JLVM": []}
        for seed in range(seeds):
            vae = base_vae(data, profile, seed, cache, bar)
            ll_vae = vae.test_log_likelihood(data.X_test, k=k, seed=seed)
            bar.step(f"VAE s{seed}: {ll_vae:.1f}")
            beta = betas.get(seed, profile.jlvm_betas[0])
            idx = random_labelled(data.S_pool, profile.sizes[name].n_labels, np.random.default_rng(seed))
            jl = fit_jlvm(data, profile, seed, beta, reveal(data.S_pool, idx), cache, bar)
            ll_j = jl.test_log_likelihood(data.X_test, k=k, seed=seed)
            bar.step(f"JLVM s{seed}: {ll_j:.1f}")
            per["ILVM (base VAE)"].append(ll_vae)
            per["JLVM"].append(ll_j)
            rows += [
                {"dataset": name, "seed": seed, "model": "ILVM (base VAE)", "test_ll": ll_vae, "k": k},
                {"dataset": name, "seed": seed, "model": "JLVM", "beta": beta, "test_ll": ll_j, "k": k},
            ]
        bar.close()
        results[name] = {
            "mean_std": {m: mean_std(v) for m, v in per.items()},
            "per_seed": per,
            "ilvm_vs_jlvm": paired_test(per["ILVM (base VAE)"], per["JLVM"]),
            "notes": data.notes,
            "wall_s": round(time.perf_counter() - t_name, 1),
        }
        print(format_table(name, results[name]))
    payload = {
        **header("table2", profile, seeds, datasets, started),
        "k": k,
        "likelihood": "Bernoulli on grey values (not binarised)",
        "results": results,
    }
    payload = save_outputs(out, "table2", payload, rows)
    return payload


def format_table(name: str, res: dict[str, Any]) -> str:
    """One row per model: mean ± std test LL over seeds."""
    from ml.bench.common import table

    return table(
        [{"data": name, "model": m, "test LL (nats)": fmt_ms(*ms)} for m, ms in res["mean_std"].items()],
        ["data", "model", "test LL (nats)"],
    )
