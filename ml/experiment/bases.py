"""Two base representations side by side: Table 1's VAE and the contrastive base (``ml.contrastive``).

Per seed, on Table 1's MNIST split and labels (the same ``n_labels`` random pool items): each base is
trained on the pool's images without labels (cached), and for each one the metric is measured on raw
z, on the lens's z* (Table 1's ILVM settings), and for the supervised ceiling — an MLP on all of z
with the same labels, and the metric on one dimension carrying that MLP's predictions
(``label_curve.reference_point``). The lens's chosen dimension is compared with its designated one.
"""

from __future__ import annotations

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
    model_key,
    paired_test,
    prepare,
    random_labelled,
    reveal,
    save_outputs,
)
from ml.experiment.label_curve import reference_point
from ml.experiment.table1 import lens_epochs

BASES = ("vae", "contrastive")
BASE_NAMES = {"vae": "VAE (10-d, Table 1)", "contrastive": "contrastive (16-d)"}
PAPER_ILVM = {"digit": 95.2}  # Table 1, MNIST, ILVM (the paper reports no thickness score there)


def base_contrastive(
    data: Prepared, profile: Profile, seed: int, cache_dir: Path, progress: Progress | None = None
) -> Any:
    """The contrastive base of (data set, seed, profile), trained once on the pool's images and cached."""
    from ml.contrastive import ContrastiveBase

    settings = dict(profile.contrastive)  # the product's defaults at cpu and full; fewer steps when quick
    key = model_key("contrastive", data, **settings)
    path = cache_dir / f"contrastive-{data.name}-{profile.name}-seed{seed}-{key}.pt"
    if path.exists():
        return ContrastiveBase.load(path, device="cpu")
    # No collapse check: the contrastive loss cannot be met by a constant code, as the ELBO can.
    model = ContrastiveBase(image_shape=data.image_shape, seed=seed, device="cpu", **settings)
    model.fit(data.X_pool, progress=progress.sub(f"contrastive seed {seed}") if progress else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def run_seed(data: Prepared, profile: Profile, seed: int, cache: Path, bar: Progress) -> list[dict[str, Any]]:
    """Rows {base, method, seed, <attribute>…} for one seed: raw z, the lens, the ceiling, per base."""
    size = profile.sizes[data.name]
    idx = random_labelled(data.S_pool, size.n_labels, np.random.default_rng(seed))
    S = reveal(data.S_pool, idx)
    rows: list[dict[str, Any]] = []
    for base in BASES:
        t0 = time.perf_counter()
        model = (base_vae if base == "vae" else base_contrastive)(data, profile, seed, cache, bar)
        pretrain_s = time.perf_counter() - t0
        Z, Z_fit, Z_test = model.encode(data.X_pool), model.encode(data.X_fit), model.encode(data.X_test)
        bar.step(f"{base} s{seed}")
        common = {"base": base, "seed": seed, "dim": int(Z.shape[1]), "n_labels": int(idx.size)}
        rows.append({**common, "method": "raw z", "base_s": round(pretrain_s, 1), **metric(Z_fit, Z_test, data, seed)})
        lens = make_lens(data, profile, seed, lens_epochs(profile, data.name))
        t1 = time.perf_counter()
        lens.fit(Z, S, progress=bar.sub(f"lens on {base} s{seed}"))
        row = {**common, "method": "ILVM", "fit_s": round(time.perf_counter() - t1, 1)}
        row.update(metric(lens.transform(Z_fit), lens.transform(Z_test), data, seed))
        row.update({f"{a}_designated": int(d[0]) for a, d in lens.attribute_dims_.items()})
        rows.append(row)
        bar.step(f"lens on {base} s{seed}: digit {row.get('digit', float('nan')):.1f}")
        ref = reference_point(data, Z, Z_fit, Z_test, idx, seed)
        rows.append({**common, "method": "ceiling", **{k: v for k, v in ref.items() if k not in ("config", "seed")}})
        bar.step(f"ceiling on {base} s{seed}")
    return rows


def summarise(rows: list[dict[str, Any]], attributes: list[str]) -> dict[str, Any]:
    """Per base and attribute: raw z, lens, ceiling and its one-dimension reading (mean ± std), the ratios,
    the lens against raw z and across bases (paired t over seeds), and where the lens's dimension fell."""
    seeds = sorted({r["seed"] for r in rows})

    def vals(base: str, method: str, key: str) -> list[float]:
        return [float(r[key]) for s in seeds for r in rows if (r["base"], r["method"], r["seed"]) == (base, method, s)]

    out: dict[str, Any] = {"seeds": seeds}
    for base in BASES:
        entry: dict[str, Any] = {}
        for a in [*attributes, "overall"]:
            lens, raw = vals(base, "ILVM", a), vals(base, "raw z", a)
            e: dict[str, Any] = {"raw": mean_std(raw), "lens": mean_std(lens), "lens_vs_raw": paired_test(lens, raw)}
            if a != "overall":
                ceil, one = vals(base, "ceiling", a), vals(base, "ceiling", f"{a}_one_dim")
                e.update(
                    ceiling=mean_std(ceil),
                    ceiling_one_dim=mean_std(one),
                    ceiling_accuracy=mean_std(vals(base, "ceiling", f"{a}_accuracy")),
                    lens_accuracy=mean_std(vals(base, "ILVM", f"{a}_accuracy")),
                    ratio=float(np.mean(lens) / np.mean(ceil)) if np.mean(ceil) > 0 else None,
                    ratio_one_dim=float(np.mean(lens) / np.mean(one)) if np.mean(one) > 0 else None,
                    on_designated_dim=sum(
                        int(r[f"{a}_dim"] == r[f"{a}_designated"])
                        for r in rows
                        if (r["base"], r["method"]) == (base, "ILVM")
                    ),
                )
            entry[a] = e
        base_s = vals(base, "raw z", "base_s")
        entry["base_s"] = mean_std(base_s)
        out[base] = entry
    out["contrastive_vs_vae"] = {
        a: paired_test(vals("contrastive", "ILVM", a), vals("vae", "ILVM", a)) for a in [*attributes, "overall"]
    }
    return out


def run(
    profile: Profile,
    out: Path,
    seeds: int = 3,
    datasets: tuple[str, ...] = ("mnist",),
    data_dir: str = "../shared/data",
) -> dict[str, Any]:
    """Run the comparison on MNIST (``datasets`` must be ("mnist",)) and write bases.{json,csv}."""
    if tuple(datasets) != ("mnist",):
        raise ValueError(f"the bases experiment runs on mnist only, got datasets {list(datasets)}")
    started = time.perf_counter()
    data = prepare("mnist", profile, data_dir)
    cache = out / "cache"
    bar = Progress(seeds * len(BASES) * 3, "bases")
    rows: list[dict[str, Any]] = []
    for seed in range(seeds):
        rows += run_seed(data, profile, seed, cache, bar)
    bar.close()
    names = [a.name for a in data.attributes]
    for r in rows:
        r["dataset"] = "mnist"
    payload = {
        **header("bases", profile, seeds, ["mnist"], started),
        "settings": {
            "n_labels": profile.sizes["mnist"].n_labels,
            "pool": profile.sizes["mnist"].pool,
            "lens_epochs": lens_epochs(profile, "mnist"),
            "contrastive": dict(profile.contrastive),
            "paper_ilvm": PAPER_ILVM,
        },
        "results": {
            "mnist": {
                "summary": summarise(rows, names),
                "rows": rows,
                "notes": data.notes,
                "wall_s": round(time.perf_counter() - started, 1),
            }
        },
    }
    payload = save_outputs(out, "bases", payload, rows)
    s = payload["results"]["mnist"]["summary"]
    print(f"\nMNIST, {payload['settings']['n_labels']} labels, {seeds} seed(s): one-dimension metric (mean)")
    print(f"{'base':22} {'attribute':10} {'raw z':>7} {'lens':>7} {'ceiling':>8} {'1-dim':>7} {'ratio':>6}")
    for base in BASES:
        for a in names:
            e = s[base][a]
            print(
                f"{BASE_NAMES[base]:22} {a:10} {e['raw'][0]:7.1f} {e['lens'][0]:7.1f} {e['ceiling'][0]:8.1f} "
                f"{e['ceiling_one_dim'][0]:7.1f} {e['ratio'] or 0:6.2f}"
            )
    return payload
