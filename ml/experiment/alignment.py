"""The lens's alignment (``LensConfig.align``) measured: the served lens with and without it, paired.

On MNIST (Table 1's split and base VAE, 1,000 random labels of digit and thickness) and on the
demo's upright sprites (2,400 in the pool, 100 random labels of shape, size and position, the
attributes an expert reads at a glance; metric sets of 300 + 300 more sprites), every seed fits the
product's default lens aligned and unaligned on the same z and labels, and the demo's eight-flow
aligned lens. Besides the one-dimension metric, the sprites' traversals are scored: along the
size (position) dimension, from the 5th to the 95th percentile of z*, does the decoded sprite's ink
area (centre of mass) grow step by step? The Spearman correlation of step and measure, averaged
over 12 items, is 1 for a traversal in which the attribute changes and nothing else does.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ml.attributes import Attribute
from ml.experiment.common import (
    DataSize,
    Prepared,
    Profile,
    Progress,
    base_vae,
    header,
    mean_std,
    metric,
    paired_test,
    prepare,
    random_labelled,
    reveal,
    save_outputs,
)

STEM = "alignment"
# name → InterpretableLens settings on top of the product's defaults (LensConfig).
CONFIGS: dict[str, dict[str, Any]] = {"aligned": {}, "unaligned": {"align": False}, "aligned-8-flows": {"n_flows": 8}}
# The demo's sizes (a profile may give its own as sizes["sprites"], e.g. a test's tiny one).
SPRITES = DataSize(pool=2400, eval_fit=300, eval_test=300, vae_epochs=30, n_labels=100)
TRAVERSAL_ITEMS, TRAVERSAL_STEPS = 12, 7


def sprite_data(size: DataSize = SPRITES) -> Prepared:
    """The demo's sprites (``lenslab demo``): upright, shape / size / position as an expert reads them."""
    from ml.data import BY_EYE_ATTRIBUTES, by_eye_levels, make_shapes

    n = size.pool + size.eval_fit + size.eval_test
    ds = make_shapes(n, seed=0, size=32, rotation_range=0.0)
    attrs = [Attribute(str(a["name"]), str(a["kind"]), tuple(a["levels"])) for a in BY_EYE_ATTRIBUTES]  # type: ignore[arg-type]
    names = by_eye_levels(ds.factors)
    S = {a.name: np.array([a.levels.index(v) for v in names[a.name]], dtype=np.int64) for a in attrs}
    pool, fit, test = np.split(np.arange(n), [size.pool, size.pool + size.eval_fit])
    return Prepared(
        "sprites",
        attrs,
        ds.images[pool],
        {k: v[pool] for k, v in S.items()},
        ds.images[fit],
        {k: v[fit] for k, v in S.items()},
        ds.images[test],
        {k: v[test] for k, v in S.items()},
        # The product's VAE for 32×32 images (``ml.steps.fit_representation``: VAE defaults, d = 10).
        vae_kwargs={"image_shape": (1, 32, 32), "latent_dim": 10},
        notes="the demo's upright sprites (make_shapes, rotation_range 0); scale, x and y drawn uniformly",
    )


def traversal_monotonicity(lens: Any, vae: Any, Z: np.ndarray, Z_ref: np.ndarray) -> dict[str, float]:
    """Per attribute (size: ink area, position: centre of mass), mean Spearman of step and measure."""
    from scipy.stats import spearmanr

    from ml.traversal import attribute_traversal, attribute_values

    ref = lens.transform(Z_ref)
    Zs = lens.transform(Z[:TRAVERSAL_ITEMS])
    cols = np.arange(32) + 0.5
    out = {}
    for name in ("size", "position"):
        dim = int(np.ravel(lens.attribute_dims_[name])[0])
        values = attribute_values(ref, dim, TRAVERSAL_STEPS)
        imgs = attribute_traversal(vae.decode, Zs, dim, values, inverse=lens.inverse_transform)[:, :, 0]
        ink = imgs.sum(axis=(2, 3)) + 1e-9  # (items, steps)
        measure = ink if name == "size" else (imgs * cols[None, None, None, :]).sum(axis=(2, 3)) / ink
        rho = [spearmanr(np.arange(TRAVERSAL_STEPS), m).statistic for m in measure]
        out[name] = float(np.nanmean(rho))
    return out


def run_seed(
    data: Prepared,
    profile: Profile,
    seed: int,
    n_labels: int,
    configs: dict[str, dict[str, Any]],
    cache: Path,
    bar: Progress,
    lens_epochs: int | None = None,
) -> dict[str, Any]:
    """One seed: the base VAE, the random labels, then every configuration on the same z and labels."""
    from ml.lens import InterpretableLens

    vae = base_vae(data, profile, seed, cache, bar)
    Z, Z_fit, Z_test = (vae.encode(x) for x in (data.X_pool, data.X_fit, data.X_test))
    idx = random_labelled(data.S_pool, n_labels, np.random.default_rng(seed))
    labels = reveal(data.S_pool, idx)
    row: dict[str, Any] = {"seed": seed, "n_labels": int(idx.size), "raw z": metric(Z_fit, Z_test, data, seed)}
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        settings = {**cfg, **({"epochs": lens_epochs} if lens_epochs is not None else {})}
        lens = InterpretableLens(data.attributes, device="cpu", seed=seed, **settings).fit(Z, labels)
        m = metric(lens.transform(Z_fit), lens.transform(Z_test), data, seed)
        m["seconds"] = round(time.perf_counter() - t0, 1)
        m["designated"] = {a: int(np.ravel(d)[0]) for a, d in lens.attribute_dims_.items()}
        if data.name == "sprites":
            m["traversal"] = traversal_monotonicity(lens, vae, Z, Z[:: max(1, len(Z) // 2000)])
        row[name] = m
        bar.step(f"{data.name} s{seed} {name}: " + ", ".join(f"{a.name} {m[a.name]:.1f}" for a in data.attributes))
    return row


def run(
    profile: Profile,
    out: Path,
    seeds: int = 3,
    datasets: tuple[str, ...] = ("mnist", "shapes"),
    data_dir: str = "../shared/data",
    lens_epochs: int | None = None,
) -> dict[str, Any]:
    """Aligned against unaligned per data set ("shapes" runs the demo's sprites); writes alignment.{json,csv}.

    ``lens_epochs``: every lens's training length (None: the product's default, about 1,500 steps).
    """
    if "digits" in datasets:
        raise ValueError("the alignment experiment runs on mnist and shapes (the demo's sprites)")
    started = time.perf_counter()
    # The sprites' sizes sit with the others (base_vae reads the VAE's length there).
    profile = replace(profile, sizes={**profile.sizes, "sprites": profile.sizes.get("sprites", SPRITES)})
    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name in datasets:
        t_name = time.perf_counter()
        if name == "mnist":
            data, n_labels = prepare("mnist", profile, data_dir), profile.sizes["mnist"].n_labels
        else:
            size = profile.sizes["sprites"]
            data, n_labels = sprite_data(size), size.n_labels
        bar = Progress(seeds * len(CONFIGS), f"alignment {data.name}")
        runs = [run_seed(data, profile, s, n_labels, CONFIGS, out / "cache", bar, lens_epochs) for s in range(seeds)]
        bar.close()
        summary: dict[str, Any] = {"n_labels": n_labels}
        for a in [*(x.name for x in data.attributes), "overall"]:
            summary[a] = {c: mean_std([r[c][a] for r in runs]) for c in ["raw z", *CONFIGS]}
            summary[a]["aligned_vs_unaligned"] = paired_test(
                [r["aligned"][a] for r in runs], [r["unaligned"][a] for r in runs]
            )
        if data.name == "sprites":
            summary["traversal"] = {
                c: {k: mean_std([r[c]["traversal"][k] for r in runs]) for k in ("size", "position")} for c in CONFIGS
            }
        results[data.name] = {
            "summary": summary,
            "runs": runs,
            "notes": data.notes,
            "wall_s": round(time.perf_counter() - t_name, 1),
        }
        for r in runs:
            for c in ["raw z", *CONFIGS]:
                rows.append(
                    {
                        "dataset": data.name,
                        "seed": r["seed"],
                        "config": c,
                        **{a.name: round(r[c][a.name], 2) for a in data.attributes},
                        "overall": round(r[c]["overall"], 2),
                    }
                )
    payload = {
        **header(STEM, profile, seeds, list(results), started),
        "configs": CONFIGS,
        "results": results,
    }
    return save_outputs(out, STEM, payload, rows)
