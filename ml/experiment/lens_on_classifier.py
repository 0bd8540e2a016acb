"""The lens on a classifier's hidden layer (paper 2.1 and 6.1.3, after MNISTrot).

A CNN (``ml.classifier.HiddenLayerClassifier``) is trained on every pool image, each rotated by a
seeded uniform angle in [−30°, 30°), to recognise the digit; its hidden layer is z. The range keeps
the digits unambiguous and the classifier one a user would bring: on the paper's full turn a 6 is a
9 (0.671 test accuracy on 5,000 images), and at ±45° this CNN stopped at 0.969. The side
information is the orientation in 6 bins of 10°, the stroke thickness (Table 1's 5 levels, MNIST only) and the digit,
revealed for ``clf_labels`` random pool items; the lens maps z to z* with each attribute on its
own dimension. The metric (fitted on held-out rotated images, scored on others) is measured on the
hidden layer before and after the lens, beside the ceiling: an MLP on all of the hidden layer
trained on the same labels (``label_curve.reference_point``), which bounds what any one dimension
can reach from z.
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

ROTATION_DEG = 30.0  # angles uniform in [−ROTATION_DEG, ROTATION_DEG)
N_BINS = 6
HIDDEN_DIM = 32


def orientation_attribute() -> Attribute:
    """The side information the paper's MNISTrot experiment uses: the angle, in ``N_BINS`` bins."""
    width = 2 * ROTATION_DEG / N_BINS
    return Attribute("orientation", "categorical", tuple(f"{int(-ROTATION_DEG + i * width)}°" for i in range(N_BINS)))


def rotated(data: Prepared, seed: int) -> Prepared:
    """The data set's images rotated by uniform angles (seeded), orientation bin added to the truth."""
    from ml.data import rotate_images

    rng = np.random.default_rng(10_000 + seed)
    parts = []
    for X, S in ((data.X_pool, data.S_pool), (data.X_fit, data.S_fit), (data.X_test, data.S_test)):
        angles = rng.uniform(-ROTATION_DEG, ROTATION_DEG, len(X))
        bins = np.minimum(((angles + ROTATION_DEG) // (2 * ROTATION_DEG / N_BINS)).astype(np.int64), N_BINS - 1)
        parts.append((rotate_images(X, angles), {"orientation": bins, **S}))
    (Xp, Sp), (Xf, Sf), (Xt, St) = parts
    return Prepared(
        f"{data.name}-rot",
        [orientation_attribute(), *data.attributes],
        Xp,
        Sp,
        Xf,
        Sf,
        Xt,
        St,
        data.vae_kwargs,
        notes=f"{data.notes}; rotated by U[−{ROTATION_DEG:g}°, {ROTATION_DEG:g}°), orientation in {N_BINS} bins",
    )


def classifier_data(name: str, profile: Profile, data_dir: str) -> Prepared:
    """The data set with ``profile.clf_pool`` pool images (the CNN's training set and the lens's pool)."""
    from dataclasses import replace

    prof = replace(profile, sizes={**profile.sizes, name: replace(profile.sizes[name], pool=profile.clf_pool)})
    return prepare(name, prof, data_dir)


def run_seed(base: Prepared, profile: Profile, seed: int, bar: Progress) -> dict[str, Any]:
    """Train the CNN, fit the lens on its hidden layer, and measure the metric before and after."""
    from ml.classifier import HiddenLayerClassifier
    from ml.experiment.label_curve import reference_point

    data = rotated(base, seed)
    clf = HiddenLayerClassifier(
        10, data.image_shape, hidden_dim=HIDDEN_DIM, epochs=profile.clf_epochs, seed=seed, device="cpu"
    )
    clf.fit(data.X_pool, data.S_pool["digit"], progress=bar.sub(f"CNN s{seed}"))
    acc = float(clf.score(data.X_test, data.S_test["digit"]))
    bar.step(f"CNN s{seed}: test accuracy {acc:.3f}")
    Z, Z_fit, Z_test = clf.transform(data.X_pool), clf.transform(data.X_fit), clf.transform(data.X_test)
    before = metric(Z_fit, Z_test, data, seed)

    idx = random_labelled(data.S_pool, min(profile.clf_labels, len(Z)), np.random.default_rng(seed))
    ceiling = reference_point(data, Z, Z_fit, Z_test, idx, seed)
    lens = make_lens(data, profile, seed, profile.lens_epochs_first)
    lens.fit(Z, reveal(data.S_pool, idx), progress=bar.sub(f"lens s{seed}"))
    after = metric(lens.transform(Z_fit), lens.transform(Z_test), data, seed)
    designated = {a: dims[0] for a, dims in lens.attribute_dims_.items()}
    bar.step(
        f"lens s{seed}: " + ", ".join(f"{a.name} {before[a.name]:.1f} → {after[a.name]:.1f}" for a in data.attributes)
    )
    return {
        "seed": seed,
        "classifier_accuracy": acc,
        "n_labels": int(idx.size),
        "before": before,
        "after": after,
        "ceiling": {a.name: ceiling[a.name] for a in data.attributes},
        "ceiling_one_dim": {a.name: ceiling[f"{a.name}_one_dim"] for a in data.attributes},
        "designated_dims": designated,
    }


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
        base = classifier_data(name, profile, data_dir)
        bar = Progress(2 * seeds, f"lens-on-classifier {name}")
        runs = [run_seed(base, profile, s, bar) for s in range(seeds)]
        bar.close()
        keys = [orientation_attribute().name, *(a.name for a in base.attributes)]
        summary: dict[str, Any] = {"classifier_accuracy": mean_std([r["classifier_accuracy"] for r in runs])}
        for key in [*keys, "overall"]:
            b, a = [r["before"][key] for r in runs], [r["after"][key] for r in runs]
            summary[key] = {"before": mean_std(b), "after": mean_std(a), "after_vs_before": paired_test(a, b)}
            if key != "overall":
                summary[key]["ceiling"] = mean_std([r["ceiling"][key] for r in runs])
                summary[key]["ceiling_one_dim"] = mean_std([r["ceiling_one_dim"][key] for r in runs])
                summary[key]["chance"] = runs[0]["before"][f"{key}_chance"]
                summary[key]["on_designated_dim"] = sum(
                    r["after"][f"{key}_dim"] == r["designated_dims"][key] for r in runs
                )
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
            "attributes": keys,
            "summary": summary,
            "runs": runs,
            "notes": f"{base.notes}; rotated by U[−{ROTATION_DEG:g}°, {ROTATION_DEG:g}°), orientation in {N_BINS} bins",
            "wall_s": round(time.perf_counter() - t_name, 1),
        }
        print(format_table(name, summary, keys))
    payload = {
        **header("lens-on-classifier", profile, seeds, datasets, started),
        "settings": {
            "hidden_dim": HIDDEN_DIM,
            "clf_epochs": profile.clf_epochs,
            "clf_pool": profile.clf_pool,
            "labels": profile.clf_labels,
            "rotation_deg": ROTATION_DEG,
            "orientation_bins": N_BINS,
            "n_flows": profile.n_flows,
        },
        "results": results,
    }
    payload = save_outputs(out, "lens-on-classifier", payload, rows)
    plot(payload["results"], out / "lens-on-classifier.png", profile.name)
    return payload


def format_table(name: str, summary: dict[str, Any], keys: list[str]) -> str:
    """Metric on the hidden layer before and after the lens, per attribute, beside chance and the ceiling."""
    from ml.bench.common import table

    rows = [
        {
            "data": name,
            "attribute": k,
            "chance": f"{summary[k]['chance']:.1f}",
            "hidden layer": fmt_ms(*summary[k]["before"]),
            "after lens": fmt_ms(*summary[k]["after"]),
            "p": f"{summary[k]['after_vs_before']['p_ttest'] or float('nan'):.3g}",
            "ceiling (MLP, all dims)": fmt_ms(*summary[k]["ceiling"]),
        }
        for k in keys
    ]
    return table(rows, ["data", "attribute", "chance", "hidden layer", "after lens", "p", "ceiling (MLP, all dims)"])


def plot(results: dict[str, Any], path: Path, profile: str) -> Path:
    """Bars per attribute: the metric on the hidden layer, after the lens, and the MLP ceiling."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.0 * len(results), 3.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items(), strict=True):
        s, keys = res["summary"], res["attributes"]
        x = np.arange(len(keys))
        for j, (when, label) in enumerate(
            (("before", "hidden layer"), ("after", "after the lens"), ("ceiling", "ceiling: MLP on all of z"))
        ):
            ax.bar(
                x + (j - 1) * 0.27,
                [s[k][when][0] for k in keys],
                0.27,
                yerr=[s[k][when][1] for k in keys],
                capsize=2,
                label=label,
            )
        ax.set_xticks(x, keys)
        ax.set_ylabel("interpretability (one dimension)")
        ax.set_title(f"{name} (rotated ±{ROTATION_DEG:g}°), profile {profile}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
