"""The label curve: the lens's interpretability metric against the number of random labels, per configuration.

MNIST (digit and thickness, as Table 1): one base VAE (seed 0, cached) gives z on the whole pool;
for each label count n and seed, n random pool items are revealed and each lens configuration is
fitted on the pool with those labels; the metric (one dimension per attribute, the paper's; and k
dimensions when a configuration has ``dims_per_attribute`` = k > 1) is fitted on the held-out
``fit`` set and scored on ``test`` — items from MNIST's test split that no lens ever saw. Seeds vary
the labelled draw and the lens's initialisation, not the base VAE (it is the representation being
made interpretable, as in the app). The paper's 95.2 (ILVM, MNIST, Table 1) is drawn on the plot.

Runs accumulate: results of configurations or label counts not in this run are kept from earlier
runs of the same profile, so the curve can be filled in piece by piece.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ml.experiment.common import (
    Prepared,
    Profile,
    Progress,
    base_vae,
    fmt_ms,
    header,
    mean_std,
    metric,
    prepare,
    pyplot,
    random_labelled,
    reveal,
    write_csv,
    write_json,
)

PAPER_ILVM_MNIST = 95.2
STEM = "label-curve"

# Named lens configurations (``InterpretableLens`` keyword arguments). "paper" is the paper's lens
# with the supervision weight DESIGN.md found necessary; the others add what the unlabelled pool and
# model selection can contribute.
_LONG = {"flow": "planar", "n_flows": 32, "hidden": 128, "alpha": 300.0, "epochs": 40}
CONFIGS: dict[str, dict[str, Any]] = {
    # The reference: 16 planar flows, α = 1000, the default training length.
    "planar": {"flow": "planar", "n_flows": 16, "hidden": 128, "alpha": 1000.0},
    # Each regulariser against the same longer-trained planar lens ("planar-long").
    "planar-long": dict(_LONG),
    "planar-long+pseudo": {**_LONG, "pseudo_label_threshold": 0.9},
    "planar-long+consistency": {**_LONG, "consistency_weight": 1000.0},
    "planar-long+mixup": {**_LONG, "mixup_weight": 1000.0},
    "planar-long+propagation": {**_LONG, "propagation_weight": 3000.0},
    # The same lens trained by the earlier step (flow by flow, two passes): the fused step's comparison.
    "planar-long+propagation-eager": {**_LONG, "propagation_weight": 3000.0, "fused_step": False},
    # The two settings the auto lens trades off: α (its criterion prefers 1000, the metric 300) and
    # the training length (half of planar-long's 40 epochs).
    "planar-long-a1000+propagation": {**_LONG, "alpha": 1000.0, "propagation_weight": 3000.0},
    "planar-e20+propagation": {**_LONG, "epochs": 20, "propagation_weight": 3000.0},
    "coupling+propagation": {
        "flow": "coupling",
        "n_flows": 8,
        "hidden": 128,
        "alpha": 1000.0,
        "epochs": 40,
        "propagation_weight": 1000.0,
    },
    # Flow family and depth, α and the number of epochs chosen by 2-fold CV on the labelled items
    # (two folds rather than the default three for time on a 2-core CPU: 4 flow candidates, then
    # 3 values of α, then possibly the winner's length: 16 selection fits instead of 24).
    "auto+propagation": {
        "flow": "auto",
        "alpha": "auto",
        "n_flows": 32,
        "hidden": 128,
        "propagation_weight": 3000.0,
        "selection_folds": 2,
    },
    "auto+propagation-3folds": {
        "flow": "auto",
        "alpha": "auto",
        "n_flows": 32,
        "hidden": 128,
        "propagation_weight": 3000.0,
        "selection_folds": 3,
    },
    "auto+propagation+consistency": {
        "flow": "auto",
        "alpha": "auto",
        "n_flows": 32,
        "hidden": 128,
        "propagation_weight": 3000.0,
        "consistency_weight": 1000.0,
        "selection_folds": 2,
    },
    "auto+propagation-2dims": {
        "flow": "auto",
        "alpha": "auto",
        "n_flows": 32,
        "hidden": 128,
        "propagation_weight": 3000.0,
        "dims_per_attribute": 2,
        "selection_folds": 2,
    },
}
# Not a lens: a supervised classifier (MLP, 2×256) on all of z per attribute, trained on the same
# labels and scored on the test items like the metric (100·exp(mean log p(true level))). It bounds
# what any one-dimension lens can reach from this z with these labels.
REFERENCE = "mlp-all-dims"
_REFERENCE_SETTINGS = {"model": "MLPClassifier(256, 256), early stopping", "input": "all dimensions of z (not a lens)"}
DEFAULT_CONFIGS = ("planar", "planar-long+propagation", "auto+propagation")


def curve_data(profile: Profile, data_dir: str) -> tuple[Prepared, Profile]:
    """MNIST at the label curve's sizes (the whole training split at cpu/full) and the profile used for caching."""
    size = profile.label_curve_size
    prof = replace(profile, name=f"{profile.name}-labelcurve", sizes={"mnist": size})
    return prepare("mnist", prof, data_dir), prof


def _metric(lens: Any, Z_fit: np.ndarray, Z_test: np.ndarray, data: Prepared, seed: int) -> dict[str, Any]:
    """One-dimension score and accuracy per attribute, plus the k-dimension ones when k > 1."""
    from ml.metrics import interpretability_score

    zf, zt = lens.transform(Z_fit), lens.transform(Z_test)
    out: dict[str, Any] = {}
    ks = [1] + ([lens.dims_per_attribute] if lens.dims_per_attribute > 1 else [])
    for k in ks:
        r = interpretability_score(zf, data.S_fit, zt, data.S_test, data.attributes, dims=k, seed=seed)
        sfx = "" if k == 1 else f"_{k}d"
        out[f"overall{sfx}"] = r["overall"]
        for a, v in r["attributes"].items():
            out[f"{a}{sfx}"] = v["score"]
            out[f"{a}_accuracy{sfx}"] = v["accuracy"]
    return out


def run_point(
    data: Prepared,
    Z: np.ndarray,
    Z_fit: np.ndarray,
    Z_test: np.ndarray,
    config: str,
    n_labels: int,
    seed: int,
    bar: Progress,
) -> dict[str, Any]:
    """Fit one configuration on ``n_labels`` random labels (seed) and measure it: one CSV row."""
    from ml.lens import InterpretableLens

    idx = random_labelled(data.S_pool, n_labels, np.random.default_rng(seed))
    if config == REFERENCE:
        return reference_point(data, Z, Z_fit, Z_test, idx, seed)
    S = reveal(data.S_pool, idx)
    t0 = time.perf_counter()
    lens = InterpretableLens(data.attributes, device="cpu", seed=seed, **CONFIGS[config])
    lens.fit(Z, S, progress=bar.sub(f"{config} n={n_labels} s{seed}"))
    row: dict[str, Any] = {
        "config": config,
        "n_labels": int(idx.size),
        "seed": seed,
        "flow": lens.config_.flow,
        "n_flows": lens.config_.n_flows,
        "alpha": lens.alpha_,
        "weight_decay": lens.config_.weight_decay,
        "epochs": len(lens.history_),
        "fit_s": round(time.perf_counter() - t0, 1),
    }
    if lens.selection_:
        row["selection"] = json.dumps(
            {
                "chosen": lens.selection_["chosen"],
                "scores": [
                    [c["settings"], round(c["score"], 4), c["best_steps"]] for c in lens.selection_["candidates"]
                ],
                "length_steps": (lens.selection_.get("length") or {}).get("best_steps"),
                "final_steps": lens.selection_.get("final_steps"),
            }
        )
    # Fit accuracy on the lens's own labelled items: memorisation shows as a gap to the test accuracy.
    pred = lens.predict(Z[idx])
    for a in data.attributes:
        row[f"{a.name}_train_accuracy"] = float(np.mean(pred[a.name] == data.S_pool[a.name][idx]))
    row.update(_metric(lens, Z_fit, Z_test, data, seed))
    return row


def reference_point(
    data: Prepared, Z: np.ndarray, Z_fit: np.ndarray, Z_test: np.ndarray, idx: np.ndarray, seed: int
) -> dict[str, Any]:
    """The supervised reference: an MLP on all dimensions of z per attribute, trained on items ``idx``.

    Besides its own score (``<attribute>``), the score of one dimension carrying its predictions
    (``<attribute>_one_dim``, ``ml.experiment.ceiling``): what the metric gives a single dimension that
    knows what the MLP knows — the ceiling of a one-dimension lens.
    """
    import warnings

    from sklearn.neural_network import MLPClassifier

    from ml.experiment.ceiling import level_positions, one_dimension_code
    from ml.metrics import geo_mean_percent, interpretability_score

    t0 = time.perf_counter()
    mean, std = Z.mean(0), Z.std(0) + 1e-8
    X, Xf, Xt = (Z[idx] - mean) / std, (Z_fit - mean) / std, (Z_test - mean) / std
    row: dict[str, Any] = {"config": REFERENCE, "n_labels": int(idx.size), "seed": seed}
    scores = []
    for a in data.attributes:
        y, yt = data.S_pool[a.name][idx], data.S_test[a.name]
        # Early stopping holds out a stratified 10%: only when that leaves every class ≥ 1 item there.
        _, counts = np.unique(y, return_counts=True)
        stop = len(y) // 10 >= len(counts) and counts.min() >= 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings: early stopping ends the fit on purpose
            clf = MLPClassifier((256, 256), max_iter=500, early_stopping=stop, random_state=seed).fit(X, y)
        p = clf.predict_proba(Xt)
        col = np.searchsorted(clf.classes_, yt).clip(max=len(clf.classes_) - 1)
        p_true = np.where(clf.classes_[col] == yt, p[np.arange(len(yt)), col], 0.0)
        row[a.name] = geo_mean_percent(p_true)
        row[f"{a.name}_accuracy"] = float(np.mean(clf.classes_[p.argmax(1)] == yt))
        row[f"{a.name}_train_accuracy"] = float(np.mean(clf.predict(X) == y))
        pos = level_positions(y, a.n_levels, X if a.kind == "categorical" else None)
        one = interpretability_score(
            one_dimension_code(clf.predict(Xf), pos, seed),
            {a.name: data.S_fit[a.name]},
            one_dimension_code(clf.predict(Xt), pos, seed),
            {a.name: yt},
            [a],
            seed=seed,
        )["attributes"][a.name]
        row[f"{a.name}_one_dim"] = one["score"]
        row[f"{a.name}_one_dim_accuracy"] = one["accuracy"]
        scores.append(row[a.name])
    row["overall"] = float(np.mean(scores))
    row["fit_s"] = round(time.perf_counter() - t0, 1)
    return row


def summarise(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """{config: {n_labels: {key: [mean, std], "seeds": n}}} over the rows present."""
    out: dict[str, Any] = {}
    for config in dict.fromkeys(r["config"] for r in rows):
        out[config] = {}
        for n in sorted({int(r["n_labels"]) for r in rows if r["config"] == config}):
            sel = [r for r in rows if r["config"] == config and int(r["n_labels"]) == n]
            entry: dict[str, Any] = {"seeds": len(sel)}
            for k in keys:
                vals = [float(r[k]) for r in sel if r.get(k) not in (None, "")]
                if vals:
                    entry[k] = list(mean_std(vals))
            out[config][str(n)] = entry
    return out


def _merge_rows(path: Path, rows: list[dict[str, Any]], profile: str) -> list[dict[str, Any]]:
    """Earlier rows of the same profile, minus those this run replaces, plus this run's."""
    if not path.exists():
        return rows
    old = json.loads(path.read_text())
    if old.get("profile") != profile:
        return rows
    done = {(r["config"], int(r["n_labels"]), int(r["seed"])) for r in rows}
    kept = [r for r in old.get("rows", []) if (r["config"], int(r["n_labels"]), int(r["seed"])) not in done]
    return kept + rows


def run(
    profile: Profile,
    out: Path,
    seeds: int = 3,
    datasets: tuple[str, ...] = ("mnist",),
    data_dir: str = "../shared/data",
    configs: Sequence[str] | None = None,
    label_counts: Sequence[int] | None = None,
    first_seed: int = 0,
) -> dict[str, Any]:
    """The label curve; writes label-curve.{json,csv,png} under ``out`` and prints the table.

    Seeds ``first_seed`` … ``first_seed + seeds − 1``: separate runs (one per core, say) may fill in
    different seeds of the same curve; each point is merged into the files as it is measured.
    """
    if isinstance(first_seed, bool) or not isinstance(first_seed, int) or first_seed < 0:
        raise ValueError(f"first_seed must be a non-negative integer, got {first_seed!r}")
    if tuple(datasets) != ("mnist",):
        raise ValueError(f"label-curve runs on mnist only, got datasets {list(datasets)}")
    configs = tuple(configs or DEFAULT_CONFIGS)
    unknown = [c for c in configs if c not in CONFIGS and c != REFERENCE]
    if unknown:
        raise ValueError(f"unknown label-curve configuration(s) {unknown}; choose from {[*CONFIGS, REFERENCE]}")
    counts = tuple(int(n) for n in (label_counts or profile.label_counts))
    started = time.perf_counter()
    data, prof = curve_data(profile, data_dir)
    too_many = [n for n in counts if n > len(data.X_pool)]
    if too_many or any(n < 20 for n in counts):
        raise ValueError(f"label counts must be between 20 and the pool size {len(data.X_pool)}, got {list(counts)}")
    bar = Progress(1 + len(configs) * len(counts) * seeds, "label-curve mnist")
    vae = base_vae(data, prof, 0, out / "cache", bar)
    Z, Z_fit, Z_test = vae.encode(data.X_pool), vae.encode(data.X_fit), vae.encode(data.X_test)
    bar.step("VAE")
    rows: list[dict[str, Any]] = []
    raw = metric(Z_fit, Z_test, data)
    jpath = out / f"{STEM}.json"
    run_id = time.strftime("%Y-%m-%dT%H:%M:%S")
    payload: dict[str, Any] = {}
    for config in configs:
        for n in counts:
            for seed in range(first_seed, first_seed + seeds):
                rows.append(run_point(data, Z, Z_fit, Z_test, config, n, seed, bar))
                r = rows[-1]
                bar.step(f"{config} n={n} s{seed}: " + " ".join(f"{a.name} {r[a.name]:.1f}" for a in data.attributes))
                # Written after every point, so a long run that stops keeps what it measured.
                with _locked(out / f".{STEM}.lock"):  # several runs may fill in the same curve at once
                    payload = _write(out, jpath, rows, profile, prof, seeds, started, data, raw, run_id)
    bar.close()
    print(format_table(payload))
    return payload


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _settings_of(config: str, earlier: dict[str, Any]) -> dict[str, Any]:
    if config in CONFIGS:
        return CONFIGS[config]
    if config == REFERENCE:
        return _REFERENCE_SETTINGS
    return earlier.get("settings", {}).get("configs", {}).get(config, {})  # a configuration since renamed


def _write(
    out: Path,
    jpath: Path,
    rows: list[dict[str, Any]],
    profile: Profile,
    prof: Profile,
    seeds: int,
    started: float,
    data: Prepared,
    raw: dict[str, Any],
    run_id: str,
) -> dict[str, Any]:
    """Merge this run's rows with the earlier ones and write label-curve.{json,csv,png}."""
    earlier = json.loads(jpath.read_text()) if jpath.exists() else {}
    same = earlier.get("profile") == profile.name
    rows = _merge_rows(jpath, rows, profile.name)
    keys = ["overall"] + [
        k for a in data.attributes for k in (a.name, f"{a.name}_accuracy", f"{a.name}_train_accuracy")
    ]
    keys += sorted({k for r in rows for k in r if re.fullmatch(r".+_\d+d", k)})  # k-dimension scores
    keys += [k for a in data.attributes for k in (f"{a.name}_one_dim", f"{a.name}_one_dim_accuracy")]  # reference
    payload = {
        **header(STEM, prof, seeds, ["mnist"], started),
        "profile": profile.name,
        "settings": {
            "configs": {c: _settings_of(c, earlier) for c in dict.fromkeys(r["config"] for r in rows)},
            "label_counts": sorted({int(r["n_labels"]) for r in rows}),
            "base_vae_seed": 0,
            "paper_ilvm_mnist": PAPER_ILVM_MNIST,
        },
        "notes": data.notes,
        "raw_z": raw,
        "summary": summarise(rows, keys),
        "rows": rows,
    }
    # The wall time of every run that filled in this curve, each run known by its start time.
    walls = dict(earlier.get("run_walls", {})) if same else {}
    if same and not walls and "wall_s" in earlier:
        walls["earlier"] = float(earlier["wall_s"])
    walls[run_id] = float(payload["wall_s"])
    payload["run_walls"] = walls
    payload["wall_s"] = round(sum(walls.values()), 1)
    payload["seeds"] = len({int(r["seed"]) for r in rows})  # every seed the merged curve holds
    write_json(jpath, payload)
    write_csv(out / f"{STEM}.csv", rows)
    plot(payload, out / f"{STEM}.png")
    return payload


def format_table(payload: dict[str, Any]) -> str:
    """Rows = (configuration, labels); columns = each attribute's one-dimension score and accuracy."""
    from ml.bench.common import table

    attrs = ["digit", "thickness"]
    rows = [
        {
            "config": "raw z",
            "labels": "–",
            **{a: f"{payload['raw_z'][a]:.1f}" for a in attrs},
            **{f"{a} acc": f"{100 * payload['raw_z'][f'{a}_accuracy']:.1f}%" for a in attrs},
        }
    ]
    for config, per_n in payload["summary"].items():
        for n, e in per_n.items():
            row: dict[str, Any] = {"config": config, "labels": f"{n} ×{e['seeds']}"}
            for a in attrs:
                row[a] = fmt_ms(*e[a]) if a in e else "–"
                acc = e.get(f"{a}_accuracy")
                row[f"{a} acc"] = f"{100 * acc[0]:.1f}%" if acc else "–"
            rows.append(row)
    return table(rows, ["config", "labels", *attrs, *(f"{a} acc" for a in attrs)])


def plot(payload: dict[str, Any], path: Path) -> Path:
    """One panel per attribute: one-dimension score against labels (log axis), ± std, the paper's 95.2."""
    plt = pyplot()
    attrs = ["digit", "thickness"]
    fig, axes = plt.subplots(1, len(attrs), figsize=(5.2 * len(attrs), 3.6), sharey=True)
    for ax, a in zip(np.atleast_1d(axes), attrs, strict=True):
        for config, per_n in payload["summary"].items():
            ns = [int(n) for n in per_n if a in per_n[n]]
            if not ns:
                continue
            m = np.array([per_n[str(n)][a][0] for n in ns])
            s = np.array([per_n[str(n)][a][1] for n in ns])
            ref = config == REFERENCE  # not a lens: drawn dashed
            ax.errorbar(ns, m, yerr=s, marker="o", capsize=2, label=config, ls="--" if ref else "-")
        ax.axhline(payload["raw_z"][a], color="grey", ls=":", label="raw z")
        ax.axhline(PAPER_ILVM_MNIST, color="k", ls="--", label="paper ILVM (95.2)")
        ax.set_xscale("log")
        ax.set_xlabel("random labels")
        ax.set_title(f"{a}: one-dimension score", fontsize=9)
    np.atleast_1d(axes)[0].set_ylabel("interpretability")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
