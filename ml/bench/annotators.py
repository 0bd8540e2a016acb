"""Experts who disagree: what the lens gains from a consensus over last-write-wins (MNIST, PCA-10 z).

Nine simulated experts label 1,000 MNIST training images, three different experts per image (the
product's ``overlap = 3``). Their digit labels are wrong at different rates — one expert replaces 30%
of them with another digit, the others 10, 10, 5, 5, 2, 2, 0 and 0% — and their thickness labels are
right. The lens (product defaults, all 60,000 images as its pool) is trained on the targets of each
consensus method (``ml.annotators.consensus``) from the same labels; its one-dimension score is
measured on 2,000 test images, the metric's probe trained on the true labels of the 1,000 images so
that only the lens's targets differ between methods. Paired over seeds (labels, experts, lens). The
ceiling: the same lens on the true labels (what perfect experts would give).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ml.bench.common import machine, table, write_results
from ml.bench.lens_train import _attributes, mnist_pca_z, test_scores

FLIP_RATES = (0.30, 0.10, 0.10, 0.05, 0.05, 0.02, 0.02, 0.0, 0.0)
OVERLAP = 3
METHODS = ("dawid_skene", "vote", "last")


def simulate(truth: np.ndarray, n_levels: int, seed: int) -> tuple[Any, np.ndarray]:
    """(``Labels`` of OVERLAP distinct experts per item in a shuffled time order, which labels are wrong)."""
    from ml.annotators import Labels

    rng = np.random.default_rng(seed)
    items, experts, values, wrong = [], [], [], []
    for i, t in enumerate(truth):
        for e in rng.choice(len(FLIP_RATES), OVERLAP, replace=False):
            flip = rng.random() < FLIP_RATES[e]
            v = (t + rng.integers(1, n_levels)) % n_levels if flip else t
            items.append(i)
            experts.append(e)
            values.append(v)
            wrong.append(flip)
    order = rng.permutation(len(items))  # labels arrive interleaved, as concurrent experts give them
    lab = Labels.of(np.asarray(items)[order], np.asarray(experts)[order], np.asarray(values)[order])
    return lab, np.asarray(wrong)[order]


def _fit_and_score(data: dict[str, Any], targets: np.ndarray, seed: int) -> dict[str, Any]:
    import torch

    from ml.lens.config import LensConfig
    from ml.lens.train import train

    attrs = _attributes()
    labels = dict(data["labels"])
    digit = np.zeros((len(data["Z"]), 10)) if targets.ndim == 2 else np.full(len(data["Z"]), -1)
    digit[data["lab"]] = targets
    labels["digit"] = digit
    t0 = time.perf_counter()
    fit = train(data["Z"], labels, attrs, LensConfig(seed=seed), device=torch.device("cpu"))
    seconds = time.perf_counter() - t0
    per = test_scores(fit, data, attrs)  # the probe reads the true labels
    return {"digit": per["digit"]["score"], "thickness": per["thickness"]["score"], "seconds": round(seconds, 1)}


def run(data_dir: str | Path, seeds: int = 3, out_dir: str | Path = "benchmarks/results") -> dict[str, Any]:
    from scipy import stats

    from ml.annotators import agreement, consensus

    attrs = _attributes()
    runs = []
    for seed in range(seeds):
        data = mnist_pca_z(data_dir, seed=seed)
        truth = data["labels"]["digit"][data["lab"]]
        lab, wrong = simulate(truth, 10, seed)
        agree = agreement(lab, attrs[0], len(truth), len(FLIP_RATES), n_boot=200, seed=seed)
        row: dict[str, Any] = {
            "seed": seed,
            "alpha": round(agree["alpha"], 3),
            "alpha_interval": [round(agree["low"], 3), round(agree["high"], 3)],
            "expert_alpha": {int(e): round(v["alpha"], 3) for e, v in agree["experts"].items()},
            "wrong_labels": round(float(wrong.mean()), 3),
        }
        for method in METHODS:
            targets = consensus(lab, attrs[0], len(truth), method)
            hard = targets.argmax(1) if targets.ndim == 2 else targets
            row[f"{method}_target_accuracy"] = round(float((hard == truth).mean()), 4)
            row[method] = _fit_and_score(data, targets, seed)
        row["truth"] = _fit_and_score(data, truth, seed)
        runs.append(row)
        print(f"seed {seed}: " + ", ".join(f"{m} {row[m]['digit']:.1f}" for m in (*METHODS, "truth")), flush=True)
    summary: dict[str, Any] = {}
    for method in (*METHODS, "truth"):
        d = np.asarray([r[method]["digit"] for r in runs])
        summary[method] = {"digit_mean": round(float(d.mean()), 2), "digit_per_seed": [round(x, 2) for x in d]}
    last = np.asarray([r["last"]["digit"] for r in runs])
    for method in ("dawid_skene", "vote"):
        d = np.asarray([r[method]["digit"] for r in runs])
        diff = d - last
        p = float(stats.ttest_rel(d, last).pvalue) if len(d) > 1 and diff.std() > 0 else None
        summary[method].update(gain_over_last=round(float(diff.mean()), 2), wins=int((diff > 0).sum()), paired_p=p)
    noisiest_lowest = all(min(r["expert_alpha"], key=r["expert_alpha"].get) == 0 for r in runs)
    payload = {
        "machine": machine(),
        "flip_rates": FLIP_RATES,
        "overlap": OVERLAP,
        "runs": runs,
        "summary": summary,
        "noisiest_expert_has_lowest_alpha_every_seed": noisiest_lowest,
    }
    path = write_results("annotators", payload, out_dir)
    rows = [
        {
            "method": m,
            "digit (mean)": summary[m]["digit_mean"],
            "per seed": " ".join(f"{x:.1f}" for x in summary[m]["digit_per_seed"]),
            "gain over last": summary[m].get("gain_over_last"),
            "wins": summary[m].get("wins"),
            "paired p": summary[m].get("paired_p"),
            "target acc": float(np.mean([r[f"{m}_target_accuracy"] for r in runs])) if m != "truth" else 1.0,
        }
        for m in (*METHODS, "truth")
    ]
    print(table(rows, list(rows[0])))
    print(f"noisiest expert (30% flips) has the lowest per-expert α on every seed: {noisiest_lowest}")
    print(f"wrote {path}")
    return payload
