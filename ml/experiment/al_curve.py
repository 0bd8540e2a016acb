"""Figure 8: the interpretability metric against the number of labels, for each acquisition strategy.

A simulated oracle (the pool's ground truth) answers. Each run starts from ``al_init`` (20) random
labels; each round the lens scores the pool (BALD, eq. 10; max-entropy, eq. 14; random; optionally
greedy BatchBALD on the first attribute), the ``al_batch`` (50) best unlabelled items are
revealed, and the lens is retrained warm-started. After every fit the metric is measured on the
fixed held-out labelled sets (fitted on ``fit``, scored on ``test``). Per strategy: mean ± std
curves over seeds, area under the curve (the mean score over the label range, trapezoids), and
the labels needed to reach random acquisition's final mean score; paired tests over seeds of
each strategy's area against random's.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml.experiment.common import (
    Prepared,
    Profile,
    Progress,
    base_vae,
    header,
    make_lens,
    mean_std,
    metric,
    paired_test,
    prepare,
    pyplot,
    random_labelled,
    reveal,
    save_outputs,
)
from ml.strategies import STRATEGIES

# Experiment arms: ``<model>-<strategy>[-<batch method>]``, built from ``ml.strategies`` (per-item
# scores, batch rules); the names label stored results, so they stay as first published.
ARMS = ("ilvm-bald", "max-entropy", "random")
# BALD scores with another batch rule: "-power" draws the batch ∝ score^β (Kirsch et al. 2023),
# "-diverse" takes one item per k-means cluster of the best-scored items in z (Zhdanov 2019),
# "-cover" one item per region of z no label covers yet, by BALD × density (Hacohen et al. 2022;
# Settles & Craven 2008); "batchbald" is greedy BatchBALD on the first attribute. "typiclust" is
# the cover rule without BALD (density alone; Hacohen et al. 2022), the control that tells what
# BALD adds to the coverage.
OPTIONAL = ("ilvm-bald-power", "ilvm-bald-diverse", "ilvm-bald-cover", "batchbald", "typiclust")
# Each arm's per-item scores (ml.strategies.STRATEGIES); its batch rule follows its suffix.
_ACQ = {
    "ilvm-bald": "bald",
    "ilvm-bald-power": "bald",
    "ilvm-bald-diverse": "bald",
    "ilvm-bald-cover": "bald",
    "max-entropy": "max_entropy",
    "random": "random",
}
assert set(_ACQ.values()) <= set(STRATEGIES)


def area_under_curve(x: np.ndarray, y: np.ndarray) -> float:
    """Mean score over the label range: ∫ y dx / (x_max − x_min), trapezoids."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2:
        return float(y[0]) if y.size else float("nan")
    return float(np.sum((y[1:] + y[:-1]) / 2.0 * np.diff(x)) / (x[-1] - x[0]))


def labels_to_reach(x: np.ndarray, y: np.ndarray, target: float) -> int | None:
    """The first label count at which the curve reaches ``target`` (None if it never does)."""
    hit = np.flatnonzero(np.asarray(y) >= target)
    return int(np.asarray(x)[hit[0]]) if hit.size else None


def _acquire(
    lens: Any, strategy: str, Z: np.ndarray, labelled: np.ndarray, k: int, seed: int, profile: Profile, data: Prepared
) -> np.ndarray:
    from ml.acquisition import lens_scores, select_batch

    if strategy == "typiclust":
        return select_batch(np.ones(len(Z)), k, "cover", features=Z, exclude=labelled, seed=seed)
    if strategy == "batchbald":
        attr = data.attributes[0].name
        probs = lens.sample_probs(Z, n_samples=profile.n_samples, seed=seed)[attr]
        return select_batch(probs, k, "batchbald", exclude=labelled, seed=seed)
    scores = lens_scores(lens, Z, _ACQ[strategy], n_samples=profile.n_samples, seed=seed)
    # A top-k batch of 50 can pile into one ambiguous region of z; the variants spread it.
    if strategy.endswith("-power"):
        return select_batch(scores, k, "power", beta=profile.al_power_beta, exclude=labelled, seed=seed)
    if strategy.endswith("-diverse"):
        return select_batch(
            scores, k, "diverse", features=Z, exclude=labelled, seed=seed, prefilter=profile.al_prefilter
        )
    if strategy.endswith("-cover"):
        return select_batch(scores, k, "cover", features=Z, exclude=labelled, seed=seed)
    return select_batch(scores, k, "topk", exclude=labelled)


def run_one(
    data: Prepared,
    profile: Profile,
    strategy: str,
    seed: int,
    Z: np.ndarray,
    Z_fit: np.ndarray,
    Z_test: np.ndarray,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """One active-learning run: the metric after every (re)fit, as rows {labels, overall, <attr>…}."""
    rng = np.random.default_rng(seed)
    idx = random_labelled(data.S_pool, profile.al_init, rng)  # the same 20 for every strategy of a seed
    lens = make_lens(data, profile, seed, profile.al_epochs_first or profile.lens_epochs_first)
    rows = []
    for rnd in range(profile.al_rounds + 1):
        if rnd:
            labelled = np.zeros(len(Z), bool)
            labelled[idx] = True
            new = _acquire(lens, strategy, Z, labelled, profile.al_batch, seed * 1000 + rnd, profile, data)
            idx = np.sort(np.concatenate([idx, new]))
            lens.epochs = profile.lens_epochs_warm
        cb = progress.sub(f"{strategy} s{seed} r{rnd}") if progress else None
        lens.fit(Z, reveal(data.S_pool, idx), warm_start=rnd > 0, progress=cb)
        m = metric(lens.transform(Z_fit), lens.transform(Z_test), data, seed)
        rows.append({"strategy": strategy, "seed": seed, "round": rnd, "labels": int(idx.size), **m})
        if progress:
            progress.step(f"{strategy} s{seed} {idx.size} labels: {m['overall']:.1f}")
    return rows


def summarise(rows: list[dict[str, Any]], strategies: list[str], seeds: list[int], keys: list[str]) -> dict[str, Any]:
    """Mean ± std curves, areas, labels-to-reach-random and paired tests, per metric key."""
    out: dict[str, Any] = {}
    for key in keys:
        curves: dict[str, np.ndarray] = {}
        x = None
        for st in strategies:
            per_seed = []
            for s in seeds:
                r = sorted((r for r in rows if r["strategy"] == st and r["seed"] == s), key=lambda r: r["round"])
                per_seed.append([r[key] for r in r])
                x = np.array([r["labels"] for r in r])
            curves[st] = np.array(per_seed)  # (seeds, rounds+1)
        assert x is not None
        rand_final = float(curves["random"][:, -1].mean()) if "random" in curves else float("nan")
        res: dict[str, Any] = {"labels": x.tolist(), "random_final": rand_final, "strategies": {}}
        aucs = {st: [area_under_curve(x, c) for c in curves[st]] for st in strategies}
        for st in strategies:
            mean, std = curves[st].mean(0), curves[st].std(0, ddof=1) if len(seeds) > 1 else np.zeros(len(x))
            entry = {
                "mean": mean.tolist(),
                "std": std.tolist(),
                "auc": aucs[st],
                "auc_mean_std": mean_std(aucs[st]),
                "final_mean_std": mean_std(curves[st][:, -1]),
                "labels_to_random_final": labels_to_reach(x, mean, rand_final),
                "labels_to_random_final_per_seed": [labels_to_reach(x, c, rand_final) for c in curves[st]],
            }
            if st != "random" and "random" in curves:
                entry["vs_random_auc"] = paired_test(aucs[st], aucs["random"])
            res["strategies"][st] = entry
        out[key] = res
    return out


def plot(summary: dict[str, Any], keys: list[str], title: str, path: Path) -> Path:
    """Figure 8: mean ± std metric curves per strategy, one panel per metric key."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        res = summary[key]
        x = np.array(res["labels"])
        for st, e in res["strategies"].items():
            m, s = np.array(e["mean"]), np.array(e["std"])
            ax.plot(x, m, marker="o", ms=3, label=f"{st} (AUC {e['auc_mean_std'][0]:.1f})")
            ax.fill_between(x, m - s, m + s, alpha=0.2)
        ax.set_xlabel("labelled items")
        ax.set_ylabel(f"interpretability ({key})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(
    profile: Profile,
    out: Path,
    seeds: int = 3,
    datasets: tuple[str, ...] = ("mnist",),
    data_dir: str = "../shared/data",
    strategies: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run Figure 8 on each data set; write al-curve.{json,csv,png} (one file per data set) under ``out``.

    ``strategies``: default the profile's ``al_strategies``; "random" must be among them.
    """
    strategies = tuple(profile.al_strategies if strategies is None else strategies)
    if not strategies or len(set(strategies)) != len(strategies):
        raise ValueError(f"strategies must be distinct and non-empty, got {list(strategies)}")
    unknown = set(strategies) - set(ARMS) - set(OPTIONAL)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; choose from {ARMS + OPTIONAL}")
    if "random" not in strategies:
        raise ValueError("the strategies must include 'random' (the baseline every curve is compared with)")
    started = time.perf_counter()
    results: dict[str, Any] = {}
    all_rows: list[dict[str, Any]] = []
    for name in datasets:
        t_name = time.perf_counter()
        shared = profile.al_shared_vae and name == "mnist"
        if shared:
            from ml.experiment.label_curve import curve_data

            full, vae_profile = curve_data(profile, data_dir)
        else:
            full, vae_profile = prepare(name, profile, data_dir), profile
        n_pool = min(profile.al_pool or len(full.X_pool), len(full.X_pool))
        # The AL pool: the first n_pool items of the (shuffled) pool the base VAE was trained on.
        data = dataclasses.replace(
            full, X_pool=full.X_pool[:n_pool], S_pool={k: v[:n_pool] for k, v in full.S_pool.items()}
        )
        bar = Progress(seeds * (len(strategies) * (profile.al_rounds + 1) + 1), f"al-curve {name}")
        rows: list[dict[str, Any]] = []
        for seed in range(seeds):
            vae = base_vae(full, vae_profile, 0 if shared else seed, out / "cache", bar)
            bar.step(f"VAE seed {0 if shared else seed}")
            Z, Z_fit, Z_test = vae.encode(data.X_pool), vae.encode(data.X_fit), vae.encode(data.X_test)
            for st in strategies:
                rows += run_one(data, profile, st, seed, Z, Z_fit, Z_test, bar)
        bar.close()
        keys = ["overall"] + [a.name for a in data.attributes]
        summary = summarise(rows, list(strategies), list(range(seeds)), keys)
        for r in rows:
            r["dataset"] = name
        all_rows += rows
        plot(
            summary,
            keys,
            f"Figure 8 — {name}, profile {profile.name}, {seeds} seeds "
            f"({profile.al_init} initial + {profile.al_batch}/round)",
            out / f"al-curve-{name}.png",
        )
        vae_note = "; one base VAE (seed 0) on the whole training split, shared by all seeds" if shared else ""
        results[name] = {
            "summary": summary,
            "notes": f"{data.notes}; AL pool = the first {n_pool} pool items{vae_note}",
            "attributes": [a.name for a in data.attributes],
            "al_pool": n_pool,
            "wall_s": round(time.perf_counter() - t_name, 1),
        }
        print(format_table(name, summary, keys))
    payload = {
        **header("al-curve", profile, seeds, datasets, started),
        "strategies": list(strategies),
        "settings": {
            "al_init": profile.al_init,
            "al_batch": profile.al_batch,
            "rounds": profile.al_rounds,
            "n_flows": profile.n_flows,
            "lens_hidden": profile.lens_hidden,
            "lens_epochs_first": profile.al_epochs_first or profile.lens_epochs_first,
            "lens_epochs_warm": profile.lens_epochs_warm,
            "lens_extra": dict(profile.lens_extra),
            "alpha": profile.lens_alpha,
            "n_samples": profile.n_samples,
            "power_beta": profile.al_power_beta,
            "prefilter": profile.al_prefilter,
        },
        "results": results,
    }
    payload = save_outputs(out, "al-curve", payload, all_rows)
    return payload


def format_table(name: str, summary: dict[str, Any], keys: list[str]) -> str:
    """A printed table: AUC, final score, labels to reach random's final, p vs random, per key."""
    from ml.bench.common import table

    rows = []
    for key in keys:
        for st, e in summary[key]["strategies"].items():
            vs = e.get("vs_random_auc") or {}
            rows.append(
                {
                    "data": name,
                    "metric": key,
                    "strategy": st,
                    "AUC": f"{e['auc_mean_std'][0]:.1f} ± {e['auc_mean_std'][1]:.1f}",
                    "final": f"{e['final_mean_std'][0]:.1f} ± {e['final_mean_std'][1]:.1f}",
                    "labels→random final": e["labels_to_random_final"],
                    "p (t, vs random)": None if vs.get("p_ttest") is None else f"{vs['p_ttest']:.3f}",
                }
            )
    return table(rows, ["data", "metric", "strategy", "AUC", "final", "labels→random final", "p (t, vs random)"])
