"""Table 1: the interpretability metric of ILVM, JLVM, a β-VAE and the raw VAE z ("no lens").

Per data set and seed: the base VAE (cached) gives z on the pool; ``n_labels`` random pool items
are revealed (the same for ILVM and JLVM). ILVM is the lens on z; JLVM is trained on the pool
images with the same labels, β chosen per seed from the profile's grid by the metric
cross-fitted on the held-out ``fit`` set (appendix 12: "β is tuned using cross-validation"); the
β-VAE (Higgins et al. 2017) sees no labels. Every score is fitted on ``fit`` and scored on
``test``. A method's mean is marked as a significant win (paper convention, bold) when a paired
t-test over seeds against every other method gives p < 0.05 with a higher mean.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml.experiment.common import (
    Prepared,
    Profile,
    Progress,
    base_vae,
    base_vae_key,
    cached_healthy,
    fmt_ms,
    header,
    health_report,
    make_lens,
    mean_std,
    metric,
    model_key,
    paired_test,
    prepare,
    pyplot,
    random_labelled,
    reveal,
    save_outputs,
)

METHODS = ("ILVM", "JLVM", "beta-VAE", "no lens (VAE z)")
ALPHA = 0.05


def jlvm_path(cache: Path, data: Prepared, profile: Profile, seed: int, beta: float) -> Path:
    """Where the JLVM of (data set, profile, seed, β) is cached (table 2 reads it back)."""
    epochs = profile.sizes[data.name].vae_epochs
    key = model_key("jlvm", data, epochs=epochs, beta=beta, model="jlvm")
    return cache / f"jlvm-{data.name}-{profile.name}-e{epochs}-seed{seed}-beta{beta:g}-{key}.pt"


def fit_jlvm(
    data: Prepared,
    profile: Profile,
    seed: int,
    beta: float,
    S: dict[str, np.ndarray],
    cache: Path,
    progress: Progress | None = None,
) -> Any:
    """Train (or load from the cache) the JLVM of (data set, seed, β) on the pool with labels S."""
    from ml.jlvm import JLVM

    path = jlvm_path(cache, data, profile, seed, beta)
    if path.exists():
        return JLVM.load(path, device="cpu")
    model = JLVM(
        data.attributes,
        beta=beta,
        **data.vae_kwargs,
        epochs=profile.sizes[data.name].vae_epochs,
        seed=seed,
        device="cpu",
    )
    model.fit(data.X_pool, S, progress=progress.sub(f"JLVM β={beta:g} s{seed}") if progress else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def fit_beta_vae(data: Prepared, profile: Profile, seed: int, cache: Path, progress: Progress | None = None) -> Any:
    """Train (or load) the β-VAE baseline of (data set, seed), with the base VAE's collapse check."""
    from ml.jlvm import JLVM, BetaVAE

    epochs = profile.sizes[data.name].vae_epochs
    return cached_healthy(
        cache
        / (
            f"betavae-{data.name}-{profile.name}-e{epochs}-seed{seed}-beta{profile.beta_vae_beta:g}-"
            f"{beta_vae_key(data, profile)}.pt"
        ),
        lambda p: JLVM.load(p, device="cpu"),
        lambda s: BetaVAE(profile.beta_vae_beta, **data.vae_kwargs, epochs=epochs, seed=s, device="cpu"),
        data,
        seed,
        f"β-VAE {data.name}",
        progress,
    )


def beta_vae_key(data: Prepared, profile: Profile) -> str:
    """The cache key (``model_key``) of the β-VAE baseline of ``data`` under ``profile``."""
    epochs = profile.sizes[data.name].vae_epochs
    return model_key("jlvm", data, epochs=epochs, beta=profile.beta_vae_beta, model="beta-vae")


def validation_score(model: Any, data: Prepared, seed: int) -> float:
    """β selection: the metric cross-fitted (2 folds) on the held-out ``fit`` set only, never on ``test``."""
    from ml.metrics import interpretability_score_cv

    return float(
        interpretability_score_cv(model.transform(data.X_fit), data.S_fit, data.attributes, folds=2, seed=seed)[
            "overall"
        ]
    )


def lens_epochs(profile: Profile, name: str) -> int:
    """Table 1's lens epochs on data set ``name``."""
    epochs = profile.sizes[name].lens_epochs
    return profile.lens_epochs_first if epochs is None else epochs


def run_seed(data: Prepared, profile: Profile, seed: int, cache: Path, bar: Progress) -> list[dict[str, Any]]:
    """Every method's metric for one seed, as rows {method, seed, overall, <attr>…, extra}."""
    size = profile.sizes[data.name]
    vae = base_vae(data, profile, seed, cache, bar)
    bar.step(f"VAE s{seed}")
    Z, Z_fit, Z_test = vae.encode(data.X_pool), vae.encode(data.X_fit), vae.encode(data.X_test)
    idx = random_labelled(data.S_pool, size.n_labels, np.random.default_rng(seed))
    S = reveal(data.S_pool, idx)
    rows = [{"method": "no lens (VAE z)", "seed": seed, **metric(Z_fit, Z_test, data, seed)}]

    lens = make_lens(data, profile, seed, lens_epochs(profile, data.name))
    lens.fit(Z, S, progress=bar.sub(f"ILVM s{seed}"))
    rows.append(
        {
            "method": "ILVM",
            "seed": seed,
            "alpha": lens.alpha_,
            "epochs": len(lens.history_),
            **metric(lens.transform(Z_fit), lens.transform(Z_test), data, seed),
        }
    )
    bar.step(f"ILVM s{seed}: {rows[-1]['overall']:.1f}")

    val: dict[float, float] = {}
    best = None
    for beta in profile.jlvm_betas:
        model = fit_jlvm(data, profile, seed, beta, S, cache, bar)
        val[beta] = validation_score(model, data, seed)
        if best is None or val[beta] > val[best[0]]:
            best = (beta, model)
        bar.step(f"JLVM β={beta:g} s{seed}: val {val[beta]:.1f}")
    assert best is not None
    beta, model = best
    rows.append(
        {
            "method": "JLVM",
            "seed": seed,
            "beta": beta,
            "validation": json.dumps({f"{k:g}": round(v, 2) for k, v in val.items()}),
            **metric(model.transform(data.X_fit), model.transform(data.X_test), data, seed),
        }
    )

    bvae = fit_beta_vae(data, profile, seed, cache, bar)
    rows.append(
        {
            "method": "beta-VAE",
            "seed": seed,
            "beta": profile.beta_vae_beta,
            **metric(bvae.transform(data.X_fit), bvae.transform(data.X_test), data, seed),
        }
    )
    bar.step(f"β-VAE s{seed}: {rows[-1]['overall']:.1f}")
    for r in rows:
        r["dataset"] = data.name
        r["n_labels"] = int(idx.size)
    return rows


def summarise(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Per key: mean ± std per method, paired t-tests between methods, and the significant winner."""
    out: dict[str, Any] = {}
    seeds = sorted({r["seed"] for r in rows})
    for key in keys:
        vals = {m: [next(r[key] for r in rows if r["method"] == m and r["seed"] == s) for s in seeds] for m in METHODS}
        stats = {m: mean_std(v) for m, v in vals.items()}
        best = max(METHODS, key=lambda m: stats[m][0])
        tests = {m: paired_test(vals[best], vals[m]) for m in METHODS if m != best}
        significant = bool(tests) and all(
            t["p_ttest"] is not None and t["p_ttest"] < ALPHA and t["mean_diff"] > 0 for t in tests.values()
        )
        out[key] = {"per_seed": vals, "mean_std": stats, "best": best, "best_vs": tests, "significant": significant}
    return out


def run(
    profile: Profile,
    out: Path,
    seeds: int = 3,
    datasets: tuple[str, ...] = ("digits", "mnist", "shapes"),
    data_dir: str = "../shared/data",
) -> dict[str, Any]:
    """Table 1 on each data set; writes table1.{json,csv,png} under ``out``."""
    started = time.perf_counter()
    cache = out / "cache"
    results: dict[str, Any] = {}
    all_rows: list[dict[str, Any]] = []
    for name in datasets:
        t_name = time.perf_counter()
        data = prepare(name, profile, data_dir)
        bar = Progress(seeds * (3 + len(profile.jlvm_betas)), f"table1 {name}")
        rows: list[dict[str, Any]] = []
        for seed in range(seeds):
            rows += run_seed(data, profile, seed, cache, bar)
        bar.close()
        keys = ["overall"] + [a.name for a in data.attributes]
        results[name] = {
            "summary": summarise(rows, keys),
            "notes": data.notes,
            "keys": keys,
            "collapsed_and_retrained": health_report(
                cache,
                f"*-{name}-{profile.name}-e{profile.sizes[name].vae_epochs}-seed*.health.json",
                keys={base_vae_key(data, profile), beta_vae_key(data, profile)},
            ),
            "n_labels": profile.sizes[name].n_labels,
            "lens_epochs": lens_epochs(profile, name),
            "jlvm_beta": {r["seed"]: r["beta"] for r in rows if r["method"] == "JLVM"},
            "wall_s": round(time.perf_counter() - t_name, 1),
        }
        all_rows += rows
        print(format_table(name, results[name]["summary"], keys))
    payload = {
        **header("table1", profile, seeds, datasets, started),
        "settings": {
            "jlvm_betas": list(profile.jlvm_betas),
            "beta_vae_beta": profile.beta_vae_beta,
            "n_flows": profile.n_flows,
            "lens_hidden": profile.lens_hidden,
            "lens_epochs": profile.lens_epochs_first,
            "lens_extra": dict(profile.lens_extra),
            "alpha": profile.lens_alpha,
        },
        "results": results,
    }
    payload = save_outputs(out, "table1", payload, all_rows)
    plot(payload["results"], out / "table1.png", profile.name)
    return payload


def format_table(name: str, summary: dict[str, Any], keys: list[str]) -> str:
    """Rows = methods, columns = metric keys, 'mean ± std' with '*' on a significant win."""
    from ml.bench.common import table

    rows = []
    for m in METHODS:
        row: dict[str, Any] = {"data": name, "method": m}
        for k in keys:
            s = summary[k]
            row[k] = fmt_ms(*s["mean_std"][m]) + (" *" if s["significant"] and s["best"] == m else "")
        rows.append(row)
    return table(rows, ["data", "method", *keys])


def plot(results: dict[str, Any], path: Path, profile: str) -> Path:
    """Grouped bars: overall metric per method and data set, error bars = std over seeds."""
    plt = pyplot()
    names = list(results)
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(names), 3.4))
    w = 0.8 / len(METHODS)
    for j, m in enumerate(METHODS):
        means = [results[n]["summary"]["overall"]["mean_std"][m][0] for n in names]
        stds = [results[n]["summary"]["overall"]["mean_std"][m][1] for n in names]
        ax.bar(np.arange(len(names)) + (j - 1.5) * w, means, w, yerr=stds, label=m, capsize=2)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("interpretability (overall)")
    ax.set_title(f"Table 1 — profile {profile}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
