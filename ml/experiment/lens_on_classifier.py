"""The lens on a classifier's hidden layer (paper 2.1 and 6.1.3, MNISTrot).

A CNN (``ml.classifier.HiddenLayerClassifier``) is trained to recognise digits rotated by uniform
random angles in [0°, 360°); its hidden layer is z. The side information is the orientation cut
into 8 bins of 45°, revealed for ``clf_labels`` random pool items; the lens maps z to z* with
orientation on a designated dimension. The metric (fitted on held-out rotated images, scored on
others) is measured on the hidden layer before and after the lens, for orientation and, as a
check that the lens keeps what the network knows, for the digit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ml.attributes import Attribute
from ml.experiment.common import (
    Prepared,
    Profile,
    Progress,
    fmt_ms,
    header,
    mean_std,
    metric,
    paired_test,
    prepare,
    pyplot,
    random_labelled,
    reveal,
    save_outputs,
)

N_BINS = 8


def rotated(data: Prepared, profile: Profile, seed: int) -> Prepared:
    """The data set's images rotated by uniform angles (seeded), with digit and orientation bin as truth."""
    from ml.data import rotate_images

    rng = np.random.default_rng(10_000 + seed)
    digit_key = "digit"
    parts = []
    for X, S in (
        (data.X_pool[: profile.clf_pool], {k: v[: profile.clf_pool] for k, v in data.S_pool.items()}),
        (data.X_fit, data.S_fit),
        (data.X_test, data.S_test),
    ):
        angles = rng.uniform(0.0, 360.0, len(X))
        parts.append(
            (
                rotate_images(X, angles),
                {"digit": S[digit_key], "orientation": (angles // (360 / N_BINS)).astype(np.int64)},
            )
        )
    attrs = [
        Attribute("orientation", "categorical", tuple(f"{int(i * 360 / N_BINS)}°" for i in range(N_BINS))),
        Attribute("digit", "categorical", tuple(str(i) for i in range(10))),
    ]
    (Xp, Sp), (Xf, Sf), (Xt, St) = parts
    return Prepared(
        f"{data.name}-rot",
        attrs,
        Xp,
        Sp,
        Xf,
        Sf,
        Xt,
        St,
        data.vae_kwargs,
        notes=f"{data.name} rotated by U[0°, 360°); orientation in {N_BINS} bins of 45°",
    )


def run_seed(base: Prepared, profile: Profile, seed: int, bar: Progress) -> dict[str, Any]:
    """Train the CNN, fit the lens on its hidden layer, and measure the metric before and after."""
    from ml.classifier import HiddenLayerClassifier
    from ml.experiment.common import make_lens

    data = rotated(base, profile, seed)
    clf = HiddenLayerClassifier(10, data.image_shape, hidden_dim=32, epochs=profile.clf_epochs, seed=seed, device="cpu")
    clf.fit(data.X_pool, data.S_pool["digit"], progress=bar.sub(f"CNN s{seed}"))
    acc = float(clf.score(data.X_test, data.S_test["digit"]))
    bar.step(f"CNN s{seed}: test accuracy {acc:.3f}")
    Z, Z_fit, Z_test = clf.transform(data.X_pool), clf.transform(data.X_fit), clf.transform(data.X_test)
    before = metric(Z_fit, Z_test, data, seed)

    lens_data = Prepared(
        data.name,
        data.attributes[:1],
        data.X_pool,
        {"orientation": data.S_pool["orientation"]},
        data.X_fit,
        data.S_fit,
        data.X_test,
        data.S_test,
    )
    idx = random_labelled(lens_data.S_pool, min(profile.clf_labels, len(Z)), np.random.default_rng(seed))
    lens = make_lens(lens_data, profile, seed, profile.lens_epochs_first)
    lens.fit(Z, reveal(lens_data.S_pool, idx), progress=bar.sub(f"lens s{seed}"))
    after = metric(lens.transform(Z_fit), lens.transform(Z_test), data, seed)
    bar.step(f"lens s{seed}: orientation {before['orientation']:.1f} → {after['orientation']:.1f}")
    return {"seed": seed, "classifier_accuracy": acc, "n_labels": int(idx.size), "before": before, "after": after}


def run(
    profile: Profile,
    out: Path,
    seeds: int = 3,
    datasets: tuple[str, ...] = ("mnist",),
    data_dir: str = "../shared/data",
) -> dict[str, Any]:
    """The experiment on each data set; writes lens-on-classifier.{json,csv,png} under ``out``."""
    started = time.perf_counter()
    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name in datasets:
        if name == "shapes":
            raise ValueError("lens-on-classifier needs digit images: use --datasets mnist or digits")
        t_name = time.perf_counter()
        base = prepare(name, profile, data_dir)
        bar = Progress(2 * seeds, f"lens-on-classifier {name}")
        runs = [run_seed(base, profile, s, bar) for s in range(seeds)]
        bar.close()
        summary: dict[str, Any] = {"classifier_accuracy": mean_std([r["classifier_accuracy"] for r in runs])}
        for key in ("orientation", "digit", "overall"):
            b, a = [r["before"][key] for r in runs], [r["after"][key] for r in runs]
            summary[key] = {"before": mean_std(b), "after": mean_std(a), "after_vs_before": paired_test(a, b)}
        for r in runs:
            for when in ("before", "after"):
                rows.append(
                    {
                        "dataset": name,
                        "seed": r["seed"],
                        "z": f"hidden layer {when} lens",
                        "classifier_accuracy": r["classifier_accuracy"],
                        "n_labels": r["n_labels"],
                        **r[when],
                    }
                )
        results[name] = {
            "summary": summary,
            "runs": runs,
            "notes": f"{base.notes}; rotated, orientation in {N_BINS} bins",
            "wall_s": round(time.perf_counter() - t_name, 1),
        }
        print(format_table(name, summary))
    payload = {
        **header("lens-on-classifier", profile, seeds, datasets, started),
        "settings": {
            "hidden_dim": 32,
            "clf_epochs": profile.clf_epochs,
            "clf_pool": profile.clf_pool,
            "orientation_labels": profile.clf_labels,
            "n_flows": profile.n_flows,
        },
        "results": results,
    }
    payload = save_outputs(out, "lens-on-classifier", payload, rows)
    plot(payload["results"], out / "lens-on-classifier.png", profile.name)
    return payload


def format_table(name: str, summary: dict[str, Any]) -> str:
    """Metric on the hidden layer before and after the lens, per attribute."""
    from ml.bench.common import table

    rows = [
        {
            "data": name,
            "attribute": k,
            "before lens": fmt_ms(*summary[k]["before"]),
            "after lens": fmt_ms(*summary[k]["after"]),
        }
        for k in ("orientation", "digit")
    ]
    return table(rows, ["data", "attribute", "before lens", "after lens"])


def plot(results: dict[str, Any], path: Path, profile: str) -> Path:
    """Bars: metric before/after the lens for orientation and digit."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items(), strict=True):
        s = res["summary"]
        keys = ["orientation", "digit"]
        for j, when in enumerate(("before", "after")):
            ax.bar(
                np.arange(2) + (j - 0.5) * 0.38,
                [s[k][when][0] for k in keys],
                0.38,
                yerr=[s[k][when][1] for k in keys],
                capsize=2,
                label=f"hidden layer {when} lens",
            )
        ax.set_xticks(np.arange(2), keys)
        ax.set_ylabel("interpretability")
        ax.set_title(f"{name} (rotated), profile {profile}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
