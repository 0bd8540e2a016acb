"""Shared pieces of the paper-reproduction experiments: profiles, data sets, cached base VAEs, metric, stats, output.

Every experiment works on a ``Prepared`` data set: a *pool* (the images the models train on and
whose labels an oracle may reveal) and two disjoint held-out labelled sets, ``fit`` and ``test``,
on which the interpretability metric is fitted and scored (DESIGN.md: the metric never sees the
items whose labels trained a model). Ground truth of the pool is known to the experiment (a
simulated oracle) but only the labels an experiment reveals are passed to a model.

Profiles size everything: ``quick`` (tiny, for CI: every experiment in well under a minute),
``cpu`` (what fits a 2-core CPU in tens of minutes: MNIST on a subset) and ``full`` (the paper's
scale, for a machine with a GPU or hours of CPU).
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.attributes import Attribute
from ml.bench.common import machine

PROFILES = ("quick", "cpu", "full")
DATASETS = ("digits", "mnist", "shapes")
DEFAULT_DATA_DIR = "../shared/data"


# ----------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class DataSize:
    """How much of a data set a profile uses, and how long its base VAE trains."""

    pool: int  # images the models train on (and the oracle labels from)
    eval_fit: int  # held-out labelled items the metric is fitted on
    eval_test: int  # held-out labelled items the metric is scored on
    vae_epochs: int
    n_labels: int  # labels revealed for table 1 (ILVM, JLVM)
    # Table 1's lens epochs on this data set (None: the profile's lens_epochs_first). An epoch is
    # one pass over the pool, so a small pool needs more of them for the same optimiser steps.
    lens_epochs: int | None = None


@dataclass(frozen=True)
class Profile:
    """Every size and training length of one profile."""

    name: str
    sizes: Mapping[str, DataSize]
    lens_epochs_first: int  # lens epochs on the first fit of an AL run / table 1
    lens_epochs_warm: int  # lens epochs per warm-started AL round
    n_flows: int
    lens_hidden: int
    al_rounds: int
    lens_alpha: float | None = None  # None: ml.heads.default_alpha from the labelled fraction
    # The lens's semi-supervised regulariser(s) (``InterpretableLens`` keyword arguments).
    lens_extra: Mapping[str, Any] = field(default_factory=lambda: {"pseudo_label_threshold": 0.9})
    al_pool: int | None = None  # AL pool: the first al_pool pool items (None: the whole pool)
    al_epochs_first: int | None = None  # lens epochs of an AL run's first fit (None: lens_epochs_first)
    al_init: int = 20
    # True: the AL runs of MNIST share the label curve's base VAE (seed 0, the whole training split)
    # and draw their pool from its first ``al_pool`` images; seeds then vary labels and lens only.
    al_shared_vae: bool = False
    al_batch: int = 50
    # The acquisition strategies an al-curve run compares (``ml.experiment.al_curve``).
    al_strategies: tuple[str, ...] = ("ilvm-bald", "max-entropy", "random")
    al_power_beta: float = 1.0  # "ilvm-bald-power": the batch is drawn ∝ BALD^β
    al_prefilter: int = 10  # "ilvm-bald-diverse": k-means over the al_prefilter × al_batch best-scored items
    n_samples: int = 32  # Monte-Carlo samples of z* for BALD (eq. 10)
    jlvm_betas: tuple[float, ...] = (1.0,)
    beta_vae_beta: float = 4.0
    iwae_k: int = 100
    clf_epochs: int = 5
    clf_pool: int = 2000
    clf_labels: int = 500
    # The label curve (``ml.experiment.label_curve``): its MNIST sizes and the label counts it visits.
    label_curve_size: DataSize = DataSize(pool=800, eval_fit=200, eval_test=200, vae_epochs=2, n_labels=100)
    label_counts: tuple[int, ...] = (50, 200)
    # The contrastive base's settings (``ml.contrastive.ContrastiveBase``; empty: the product's defaults).
    contrastive: Mapping[str, Any] = field(default_factory=lambda: {"steps": 30, "batch_size": 64, "decoder_steps": 10})


PROFILE_SPECS: dict[str, Profile] = {
    "quick": Profile(
        "quick",
        sizes={
            "digits": DataSize(pool=1000, eval_fit=350, eval_test=400, vae_epochs=8, n_labels=200),
            "mnist": DataSize(pool=600, eval_fit=200, eval_test=200, vae_epochs=2, n_labels=200),
            "shapes": DataSize(pool=500, eval_fit=200, eval_test=200, vae_epochs=2, n_labels=200),
        },
        lens_epochs_first=30,
        lens_epochs_warm=10,
        n_flows=4,
        lens_hidden=64,
        al_rounds=2,
        jlvm_betas=(1.0,),
        iwae_k=10,
        clf_epochs=3,
        clf_pool=600,
        clf_labels=200,
        n_samples=16,
    ),
    "cpu": Profile(
        "cpu",
        sizes={
            # Table 1's lens takes about 4,000 optimiser steps on every data set: a lens epoch is
            # ceil(pool / 256) steps, i.e. 4 on digits, 20 on MNIST's 5,000 images, 12 on shapes.
            "digits": DataSize(pool=1000, eval_fit=350, eval_test=400, vae_epochs=30, n_labels=300, lens_epochs=1000),
            "mnist": DataSize(pool=5000, eval_fit=1000, eval_test=1000, vae_epochs=30, n_labels=1000, lens_epochs=200),
            "shapes": DataSize(pool=3000, eval_fit=1000, eval_test=1000, vae_epochs=8, n_labels=1000, lens_epochs=334),
        },
        lens_epochs_first=40,
        lens_epochs_warm=12,
        n_flows=32,
        lens_hidden=128,
        al_rounds=6,
        lens_alpha=300.0,
        lens_extra={"propagation_weight": 3000.0},
        al_pool=3000,
        al_epochs_first=40,
        al_shared_vae=True,
        al_strategies=("ilvm-bald", "ilvm-bald-power", "ilvm-bald-diverse", "ilvm-bald-cover", "max-entropy", "random"),
        jlvm_betas=(1.0, 10.0),
        iwae_k=100,
        clf_epochs=4,
        clf_pool=60000,
        clf_labels=1000,
        label_curve_size=DataSize(pool=60000, eval_fit=2000, eval_test=8000, vae_epochs=20, n_labels=1000),
        label_counts=(100, 300, 1000, 3000, 10000),
        contrastive={},
    ),
    "full": Profile(
        "full",
        sizes={
            "digits": DataSize(pool=1000, eval_fit=350, eval_test=400, vae_epochs=100, n_labels=300, lens_epochs=1000),
            "mnist": DataSize(pool=60000, eval_fit=2000, eval_test=8000, vae_epochs=30, n_labels=1000),
            "shapes": DataSize(pool=20000, eval_fit=2000, eval_test=4000, vae_epochs=30, n_labels=1000),
        },
        lens_epochs_first=40,
        lens_epochs_warm=5,
        n_flows=32,
        lens_hidden=128,
        al_rounds=20,
        lens_alpha=300.0,
        lens_extra={"propagation_weight": 3000.0},
        al_strategies=("ilvm-bald", "ilvm-bald-cover", "max-entropy", "random"),
        jlvm_betas=(0.1, 1.0, 10.0),
        iwae_k=1000,
        clf_epochs=10,
        clf_pool=60000,
        clf_labels=1000,
        label_curve_size=DataSize(pool=60000, eval_fit=2000, eval_test=8000, vae_epochs=30, n_labels=1000),
        label_counts=(100, 300, 1000, 3000, 10000),
        contrastive={},
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; ValueError naming the choices otherwise."""
    if name not in PROFILE_SPECS:
        raise ValueError(f"unknown profile {name!r}; choose one of {PROFILES}")
    return PROFILE_SPECS[name]


# ----------------------------------------------------------------------------- data


@dataclass
class Prepared:
    """A data set split for an experiment: pool + metric fit/test sets, with every attribute's truth."""

    name: str
    attributes: list[Attribute]
    X_pool: np.ndarray
    S_pool: dict[str, np.ndarray]
    X_fit: np.ndarray
    S_fit: dict[str, np.ndarray]
    X_test: np.ndarray
    S_test: dict[str, np.ndarray]
    vae_kwargs: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.X_pool.shape[1:])  # type: ignore[return-value]


def check_data_dir(data_dir: str | os.PathLike[str]) -> Path:
    """The MNIST directory under ``data_dir``; ValueError naming the path when it is missing."""
    root = Path(data_dir)
    mnist = root / "mnist"
    if not root.is_dir():
        raise ValueError(
            f"data directory {str(root)!r} does not exist (pass --data-dir pointing at the folder holding mnist/)"
        )
    if not mnist.is_dir():
        raise ValueError(f"data directory {str(root)!r} has no mnist/ folder (expected {str(mnist)!r})")
    return mnist


def _levels(name: str, n: int) -> tuple[str, ...]:
    return tuple(f"{name}{i}" for i in range(n))


def prepare(name: str, profile: Profile, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR) -> Prepared:
    """Load and split data set ``name`` at ``profile``'s sizes (deterministic: seed-independent splits)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    size = profile.sizes[name]
    if name == "digits":
        from ml.data import load_digits

        ds = load_digits()
        order = np.random.default_rng(1234).permutation(len(ds))
        need = size.pool + size.eval_fit + size.eval_test
        if need > len(ds):
            raise ValueError(f"digits has {len(ds)} images, the profile needs {need}")
        parts = np.split(order[:need], [size.pool, size.pool + size.eval_fit])
        attrs = [Attribute("digit", "categorical", _levels("", 10))]
        truth = {"digit": ds.factors["digit"]}
        X = ds.images
        return Prepared(
            name,
            attrs,
            X[parts[0]],
            {k: v[parts[0]] for k, v in truth.items()},
            X[parts[1]],
            {k: v[parts[1]] for k, v in truth.items()},
            X[parts[2]],
            {k: v[parts[2]] for k, v in truth.items()},
            vae_kwargs={"image_shape": (1, 8, 8), "channels": (64, 128), "hidden": 256, "latent_dim": 10},
            notes="scikit-learn digits (8×8), one shuffled split",
        )
    if name == "mnist":
        from ml.data import load_mnist, stroke_thickness, thickness_levels

        mnist_dir = check_data_dir(data_dir)
        train, test = load_mnist(mnist_dir, "train"), load_mnist(mnist_dir, "test")
        rng = np.random.default_rng(1234)
        pool_idx = np.sort(rng.permutation(len(train))[: size.pool])
        te = rng.permutation(len(test))[: size.eval_fit + size.eval_test]
        fit_idx, test_idx = te[: size.eval_fit], te[size.eval_fit :]
        X_pool, X_fit, X_test = train.images[pool_idx], test.images[fit_idx], test.images[test_idx]
        # Thickness (Morpho-MNIST) → 5 quantile levels, edges from the training pool (DESIGN.md).
        thick_pool = stroke_thickness(X_pool)
        lev_pool, edges = thickness_levels(thick_pool, 5)
        lev_fit, _ = thickness_levels(stroke_thickness(X_fit), edges=edges)
        lev_test, _ = thickness_levels(stroke_thickness(X_test), edges=edges)
        attrs = [Attribute("digit", "categorical", _levels("", 10)), Attribute("thickness", "ordinal", _levels("t", 5))]
        return Prepared(
            name,
            attrs,
            X_pool,
            {"digit": train.factors["label"][pool_idx], "thickness": lev_pool},
            X_fit,
            {"digit": test.factors["label"][fit_idx], "thickness": lev_fit},
            X_test,
            {"digit": test.factors["label"][test_idx], "thickness": lev_test},
            vae_kwargs={"image_shape": (1, 28, 28), "channels": (64, 128), "hidden": 1024, "latent_dim": 10},
            notes=f"MNIST: pool = {size.pool} of the 60,000 training images; metric sets from the test split; "
            f"thickness edges {np.round(edges, 2).tolist()} px",
        )
    from ml.data import make_shapes

    n = size.pool + size.eval_fit + size.eval_test
    ds = make_shapes(n, seed=1234, size=32, position_range=0.5)
    parts = np.split(np.arange(n), [size.pool, size.pool + size.eval_fit])
    truth = {"shape": ds.factors["shape"], "scale": ds.factors["scale"]}
    attrs = [
        Attribute("shape", "categorical", ("square", "ellipse", "heart")),
        Attribute("scale", "ordinal", _levels("s", 6)),
    ]
    return Prepared(
        name,
        attrs,
        ds.images[parts[0]],
        {k: v[parts[0]] for k, v in truth.items()},
        ds.images[parts[1]],
        {k: v[parts[1]] for k, v in truth.items()},
        ds.images[parts[2]],
        {k: v[parts[2]] for k, v in truth.items()},
        vae_kwargs={"image_shape": (1, 32, 32), "channels": (64, 128), "hidden": 1024, "latent_dim": 10},
        notes="dSprites-like shapes (32×32, position_range 0.5, rotation and position as nuisances)",
    )


def reveal(S: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Labels of the items ``idx`` only (the oracle's answers); every other item missing (−1)."""
    out = {}
    for k, v in S.items():
        m = np.full(len(v), -1, dtype=np.int64)
        m[idx] = v[idx]
        out[k] = m
    return out


def random_labelled(S: Mapping[str, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random pool indices whose labels cover ≥ 2 levels of every attribute (the lens needs that)."""
    size = len(next(iter(S.values())))
    for _ in range(100):
        idx = rng.choice(size, size=min(n, size), replace=False)
        if all(len(np.unique(v[idx])) >= 2 for v in S.values()):
            return np.sort(idx)
    raise ValueError(f"could not draw {n} labelled items covering two levels of every attribute")


# ----------------------------------------------------------------------------- models


COLLAPSE_KL_NATS = 1.0  # a base model whose mean KL(q(z|x) ‖ N(0, I)) is below this encodes nothing
COLLAPSE_RETRY_OFFSET = 1000  # a collapsed model is retrained once with seed + this


def mean_kl(model: Any, X: np.ndarray) -> float:
    """Mean KL(q(z|x) ‖ N(0, I)) over images X, nats: ≈ 0 when the posterior has collapsed onto the prior."""
    vae = getattr(model, "vae_", model)
    mu, lv = vae.encode_stats(X)
    return float(np.mean(0.5 * (mu**2 + np.exp(lv) - 1.0 - lv).sum(1)))


def fit_healthy(
    make: Callable[[int], Any], X: np.ndarray, seed: int, label: str, progress: Progress | None = None
) -> tuple[Any, dict[str, Any]]:
    """Fit ``make(seed)`` on X; if its posterior collapsed (mean KL < 1 nat), refit once with seed + 1000.

    Measured: the cpu-profile MNIST VAE of seed 2 stuck at the KL = 0 solution (208 nats per image
    from epoch 2 on; z constant, every metric at chance). The rule is applied to every seed and
    model alike and recorded in the results (``health``), never silently.
    """
    model = make(seed).fit(X, progress=progress.sub(f"{label} seed {seed}") if progress else None)
    kl = mean_kl(model, X[:2000])
    health = {"requested_seed": seed, "used_seed": seed, "mean_kl": kl, "collapsed": []}
    if kl < COLLAPSE_KL_NATS:
        health["collapsed"].append({"seed": seed, "mean_kl": kl})
        retry = seed + COLLAPSE_RETRY_OFFSET
        model = make(retry).fit(X, progress=progress.sub(f"{label} seed {retry} (retry)") if progress else None)
        health.update(used_seed=retry, mean_kl=mean_kl(model, X[:2000]))
    return model, health


def _health_path(model_path: Path) -> Path:
    return model_path.with_suffix(".health.json")


def load_health(model_path: Path) -> dict[str, Any]:
    """The collapse-check record written beside a cached model (empty when there is none)."""
    p = _health_path(model_path)
    return json.loads(p.read_text()) if p.exists() else {}


def save_health(model_path: Path, health: dict[str, Any]) -> None:
    """Write the collapse-check record beside a cached model."""
    _health_path(model_path).write_text(json.dumps(health))


def cached_healthy(
    path: Path,
    loader: Callable[[Path], Any],
    factory: Callable[[int], Any],
    data: Prepared,
    seed: int,
    label: str,
    progress: Progress | None = None,
) -> Any:
    """A model trained once with the collapse check (``fit_healthy``) and cached at ``path``.

    A cached model without a health record (written before the check existed) is checked now.
    """
    if path.exists() and load_health(path):
        return loader(path)
    if path.exists():
        model = loader(path)
        kl = mean_kl(model, data.X_pool[:2000])
        if kl >= COLLAPSE_KL_NATS:
            save_health(path, {"requested_seed": seed, "used_seed": seed, "mean_kl": kl, "collapsed": []})
            return model
    model, health = fit_healthy(factory, data.X_pool, seed, label, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    save_health(path, health)
    return model


# The modules whose code defines each cached model: a change to any of them trains the model anew.
MODEL_CODE = {
    "vae": ("ml.vae", "ml.device"),
    "contrastive": ("ml.contrastive", "ml.vae", "ml.device"),
    "jlvm": ("ml.jlvm", "ml.vae", "ml.heads", "ml.attributes", "ml.device"),
}


def model_key(kind: str, data: Prepared, **settings: Any) -> str:
    """A short hash of the code, settings and pool images that produce a cached model of ``kind``.

    Cached models are reused across runs; naming them by data set, profile and seed alone would let a
    rerun after a change to the model's code (or to its settings) silently load the old model.
    """
    h = hashlib.sha256()
    for name in MODEL_CODE[kind]:
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    h.update(json.dumps({"settings": settings, "vae_kwargs": data.vae_kwargs}, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(data.X_pool).tobytes())  # the images it is trained on
    return h.hexdigest()[:10]


def base_vae_key(data: Prepared, profile: Profile) -> str:
    """The cache key (``model_key``) of the base VAE of ``data`` under ``profile``."""
    return model_key("vae", data, epochs=profile.sizes[data.name].vae_epochs)


def base_vae(data: Prepared, profile: Profile, seed: int, cache_dir: Path, progress: Progress | None = None) -> Any:
    """The base VAE of (dataset, seed, profile), trained once (with the collapse check) and cached."""
    from ml.vae import VAE

    epochs = profile.sizes[data.name].vae_epochs
    # The training length is in the name for a reader; the key changes with the code and settings.
    return cached_healthy(
        cache_dir / f"vae-{data.name}-{profile.name}-e{epochs}-seed{seed}-{base_vae_key(data, profile)}.pt",
        lambda p: VAE.load(p, device="cpu"),
        lambda s: VAE(**data.vae_kwargs, epochs=epochs, seed=s, device="cpu"),
        data,
        seed,
        f"VAE {data.name}",
        progress,
    )


def health_report(cache_dir: Path, pattern: str, keys: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Every collapse recorded for cached models matching ``pattern`` (for the results JSON).

    ``keys``: only models whose names carry one of these ``model_key`` hashes, i.e. this run's: the
    cache keeps the models of older code too, and their collapses are not this run's.
    """
    out = []
    for p in sorted(cache_dir.glob(pattern)):
        if keys is not None and not any(f"-{k}." in p.name for k in keys):
            continue
        h = json.loads(p.read_text())
        if h.get("collapsed"):
            out.append({"model": p.name.replace(".health.json", ""), **h})
    return out


def make_lens(data: Prepared, profile: Profile, seed: int, epochs: int) -> Any:
    """The lens with the profile's settings: flows, width, α and its regulariser(s) (``lens_extra``).

    The cpu/full profiles use what the label curve measured best on MNIST with 1,000 random labels
    among 60,000: 32 planar flows, α = 300 and label propagation with weight 3000 (digit 46.2 vs
    25.0 for the plain lens, seed 0); the quick profile keeps pseudo-labels at 0.9.
    """
    from ml.lens import InterpretableLens

    return InterpretableLens(
        data.attributes,
        n_flows=profile.n_flows,
        hidden=profile.lens_hidden,
        epochs=epochs,
        alpha=profile.lens_alpha,
        device="cpu",
        seed=seed,
        **dict(profile.lens_extra),
    )


def metric(Z_fit: np.ndarray, Z_test: np.ndarray, data: Prepared, seed: int = 0) -> dict[str, Any]:
    """Interpretability metric (section 4): fitted on the held-out ``fit`` set, scored on ``test``."""
    from ml.metrics import interpretability_score

    r = interpretability_score(Z_fit, data.S_fit, Z_test, data.S_test, data.attributes, seed=seed)
    out = {"overall": r["overall"]}
    out.update({a: v["score"] for a, v in r["attributes"].items()})
    out.update({f"{a}_accuracy": v["accuracy"] for a, v in r["attributes"].items()})
    out.update({f"{a}_chance": v["chance_score"] for a, v in r["attributes"].items()})
    out.update({f"{a}_dim": int(v["dim"]) for a, v in r["attributes"].items()})  # the metric's chosen dimension
    return out


# ----------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired comparison of a vs b over seeds: mean difference, t-test and Wilcoxon p-values (two-sided)."""
    from scipy import stats

    x, y = np.asarray(a, float), np.asarray(b, float)
    out: dict[str, Any] = {
        "n": int(x.size),
        "mean_diff": float(np.mean(x - y)) if x.size else float("nan"),
        "t": None,
        "p_ttest": None,
        "p_wilcoxon": None,
    }
    if x.size >= 2 and np.any(x != y):
        t = stats.ttest_rel(x, y)
        out["t"], out["p_ttest"] = float(t.statistic), float(t.pvalue)
        out["p_wilcoxon"] = float(stats.wilcoxon(x, y).pvalue)
    return out


# ----------------------------------------------------------------------------- output


class Progress:
    """A plain stderr progress bar over ``total`` steps; ``sub(label)`` gives a fit's progress callback."""

    def __init__(self, total: int, label: str, stream: Any = None, width: int = 30) -> None:
        self.total, self.done, self.label = max(int(total), 1), 0, label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self.detail = ""

    def _draw(self, frac: float) -> None:
        filled = int(self.width * min(frac, 1.0))
        elapsed = time.perf_counter() - self.start
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"{self.done}/{self.total} {elapsed:6.0f}s {self.detail[:50]:<50}"
        )
        self.stream.flush()

    def step(self, detail: str = "") -> None:
        """One unit of work finished."""
        self.done += 1
        self.detail = detail
        self._draw(self.done / self.total)

    def sub(self, detail: str) -> Callable[[float, dict[str, Any]], None]:
        """A ``progress(fraction, info)`` callback for one fit inside the current step."""

        def cb(fraction: float, info: dict[str, Any]) -> None:
            self.detail = f"{detail} {100 * fraction:3.0f}%"
            self._draw((self.done + fraction) / self.total)

        return cb

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Rows (dicts) as CSV, columns in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """JSON with NaN written as null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=2) + "\n")
    os.replace(tmp, path)  # readers (the report) never see a half-written file
    return path


def save_outputs(out: Path, stem: str, payload: dict[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Write ``stem``.json and ``stem``.csv, merging with an earlier run of the same profile.

    Results of data sets not in this run are kept (so ``--datasets mnist`` then ``--datasets digits``
    accumulate); a data set run again replaces its old results and rows. The merged wall time is this
    run's plus each kept data set's own (``results[name]["wall_s"]``); results saved without one
    fall back to the earlier run's total. Returns the merged payload.
    """
    jpath, cpath = out / f"{stem}.json", out / f"{stem}.csv"
    merged, all_rows = dict(payload), list(rows)
    if jpath.exists() and cpath.exists():
        old = json.loads(jpath.read_text())
        if old.get("profile") == payload["profile"] and old.get("seeds") == payload["seeds"]:
            kept = {k: v for k, v in old.get("results", {}).items() if k not in payload["results"]}
            merged["results"] = {**kept, **payload["results"]}
            merged["datasets"] = list(merged["results"])
            if kept:  # the kept results' time stays in the total; a full rerun reports its own
                walls = [v.get("wall_s") if isinstance(v, Mapping) else None for v in kept.values()]
                if all(isinstance(w, int | float) for w in walls):
                    earlier = float(sum(walls))  # exactly the kept data sets' time
                else:  # saved before per-data-set times: the whole earlier run, replaced sets included
                    earlier = float(old.get("wall_s", 0.0))
                merged["wall_s"] = round(earlier + float(payload["wall_s"]), 1)
            with open(cpath, newline="") as f:
                all_rows = [r for r in csv.DictReader(f) if r.get("dataset") in kept] + all_rows
    write_csv(cpath, all_rows)
    write_json(jpath, merged)
    return merged


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def header(experiment: str, profile: Profile, seeds: int, datasets: Sequence[str], started: float) -> dict[str, Any]:
    """The common part of every result JSON: what ran, where, how long."""
    return {
        "experiment": experiment,
        "profile": profile.name,
        "seeds": seeds,
        "datasets": list(datasets),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "sizes": {d: vars(profile.sizes[d]) for d in datasets},
    }


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fmt_ms(m: float | None, s: float | None, digits: int = 1) -> str:
    """'m ± s' for tables ('–' when missing)."""
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    return f"{m:.{digits}f} ± {s or 0.0:.{digits}f}"
