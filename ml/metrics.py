"""The interpretability metric (paper section 4, appendix 12) and the MIG and SAP baselines.

Interpretability of a representation z* with respect to attribute s_j (section 4):

1. pick i = argmax_i I(s_j; z*_i), MI estimated from a 20-bin equal-width histogram of z*_i
   (disentanglement_lib's ``_histogram_discretize``);
2. fit a linear SVM with Platt scaling (appendix 12) from z*_i alone to s_j and report, on other
   items, score_j = 100·exp(mean log p(s_j | z*_i)): the geometric-mean probability of the true
   level, in percent. The project score is the mean over attributes.

Both steps are fitted on a *train* part and scored on a disjoint *test* part; neither may contain
items whose labels trained the lens (DESIGN.md: calibration learnt on memorised items is
over-confident on new ones). Continuous attributes are cut into quantile groups whose edges come
from the train part. Every function uses, per attribute, only the items whose label is observed.

Labels follow ``ml.attributes``: a dict name → array, level index (−1 missing) or float (NaN
missing). MI and entropies are in nats.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import mutual_info_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from ml.attributes import Attribute, coerce_attributes, observed_mask, validate_labels

__all__ = [
    "PROB_FLOOR",
    "geo_mean_percent",
    "histogram_discretize",
    "interpretability_score",
    "interpretability_score_cv",
    "mig",
    "mutual_info_histogram",
    "sap",
]

# Probability given to a true level the classifier rates 0 or never saw: log(1e-12) ≈ −27.6 nats.
PROB_FLOOR = 1e-12
# Platt scaling's internal cross-validation: at most this many folds (fewer for rare classes).
_CALIBRATION_FOLDS = 5

Dims = int | str
_F = TypeVar("_F", bound=Callable[..., Any])


def _one_blas_thread(fn: _F) -> _F:
    """Run ``fn`` with one BLAS thread, which suits the metric's tiny fits (1–k features).

    BLAS threads woken for every small L-BFGS step of Platt scaling made a fit ~15× slower
    (0.8 s vs 0.05 s for 300 items on a 2-core machine).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- building blocks


def histogram_discretize(x: np.ndarray | Sequence[float], bins: int = 20) -> np.ndarray:
    """Equal-width bin index (1..bins) of each value, as disentanglement_lib's ``_histogram_discretize``."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if x.size == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.histogram(x, bins)[1]
    return np.digitize(x, edges[:-1]).astype(np.int64)


def mutual_info_histogram(
    z_col: np.ndarray | Sequence[float],
    s: np.ndarray | Sequence[Any],
    bins: int = 20,
    discrete_s: bool = True,
) -> float:
    """I(s; z_i) in nats between one latent dimension (binned) and an attribute.

    ``z_col`` is cut into ``bins`` equal-width bins over its range; ``s`` is used as class labels
    when ``discrete_s``, otherwise binned the same way. Both must hold observed items only.
    """
    z = np.asarray(z_col, dtype=np.float64).ravel()
    s_arr = np.asarray(s).ravel()
    if z.shape != s_arr.shape:
        raise ValueError(f"z_col and s must have the same length, got {z.size} and {s_arr.size}")
    if not np.isfinite(z).all():
        raise ValueError("z_col: values must be finite")
    if not discrete_s:
        s_arr = histogram_discretize(s_arr, bins)
    if z.size == 0:
        return 0.0
    return float(mutual_info_score(s_arr, histogram_discretize(z, bins)))


def _as_latents(Z: Any, name: str) -> np.ndarray:
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[1] == 0:
        raise ValueError(f"{name}: expected a 2-d array [N, d] with d ≥ 1, got shape {Z.shape}")
    if not np.isfinite(Z).all():
        raise ValueError(f"{name}: values must be finite (found NaN or inf)")
    return Z


def _quantile_edges(values: np.ndarray, groups: int) -> np.ndarray:
    """Inner edges of ``groups`` quantile groups (ties merged, so there may be fewer groups)."""
    if isinstance(groups, bool) or not isinstance(groups, int | np.integer) or groups < 2:
        raise ValueError(f"continuous_bins must be an integer ≥ 2, got {groups!r}")
    return np.unique(np.quantile(values, np.linspace(0, 1, groups + 1)[1:-1]))


def _classes(a: Attribute, y: np.ndarray, edges: np.ndarray | None) -> np.ndarray:
    """Class labels of observed values: the level index, or the quantile group of a continuous value."""
    if a.is_discrete:
        return y.astype(np.int64)
    assert edges is not None
    return np.digitize(y, edges).astype(np.int64)


def _select_dims(Z: np.ndarray, y: np.ndarray, dims: Dims, bins: int) -> tuple[list[int], np.ndarray]:
    """The latent dimensions most informative about y (step (i) of section 4) and all the MIs."""
    mi = np.array([mutual_info_histogram(Z[:, i], y, bins) for i in range(Z.shape[1])])
    if dims == "all":
        return list(range(Z.shape[1])), mi
    order = np.argsort(-mi, kind="stable")
    return [int(i) for i in order[: int(dims)]], mi


def _platt_svm(X: np.ndarray, y: np.ndarray, seed: int) -> Pipeline:
    """Linear SVM with Platt scaling (appendix 12); multi-class is SVC's one-vs-one.

    Platt's sigmoid is fitted on out-of-fold decision values (``ensemble=False``); the folds are
    stratified, so every class must have at least 2 items (the caller drops rarer ones).
    """
    n_splits = int(min(_CALIBRATION_FOLDS, np.unique(y, return_counts=True)[1].min()))
    calibrated = CalibratedClassifierCV(
        SVC(kernel="linear"),
        method="sigmoid",
        ensemble=False,
        cv=StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed),
    )
    # A linear SVM is not scale-invariant: standardise z*_i first.
    return make_pipeline(StandardScaler(), calibrated).fit(X, y)


def geo_mean_percent(p: np.ndarray) -> float:
    """100·exp(mean log p): the geometric-mean probability of the true level, in percent."""
    return float(100.0 * np.exp(np.mean(np.log(np.clip(p, PROB_FLOOR, 1.0)))))


def _check_dims(dims: Any, d: int) -> Dims:
    if dims == "all":
        return "all"
    if isinstance(dims, bool) or not isinstance(dims, int | np.integer) or not 1 <= dims <= d:
        raise ValueError(f"dims must be an integer in 1..{d} (the latent size) or 'all', got {dims!r}")
    return int(dims)


def _score_attribute(
    a: Attribute,
    Z_tr: np.ndarray,
    y_tr: np.ndarray,
    Z_te: np.ndarray,
    y_te: np.ndarray,
    dims: Dims,
    bins: int,
    continuous_bins: int,
    seed: int,
) -> dict[str, Any]:
    """Metric of one attribute from its observed train and test items."""
    if y_tr.size == 0:
        raise ValueError(f"attribute {a.name!r}: no observed labels in the train part")
    if y_te.size == 0:
        raise ValueError(f"attribute {a.name!r}: no observed labels in the test part")
    edges = None if a.is_discrete else _quantile_edges(y_tr, continuous_bins)
    c_tr, c_te = _classes(a, y_tr, edges), _classes(a, y_te, edges)
    classes, counts = np.unique(c_tr, return_counts=True)
    if classes.size < 2:
        raise ValueError(
            f"attribute {a.name!r}: the train part has a single class ({int(classes[0])}); "
            "the metric needs at least two"
        )
    # Platt scaling cross-validates inside the train part: a class seen once cannot be calibrated, so
    # it is left out of the classifier, like levels absent from the train part; see _true_class_probs.
    fit_classes = classes[counts >= 2]
    if fit_classes.size < 2:
        raise ValueError(
            f"attribute {a.name!r}: fewer than two classes have 2 or more train items "
            f"(train counts {dict(zip(classes.tolist(), counts.tolist(), strict=True))})"
        )

    chosen, mi = _select_dims(Z_tr, c_tr, dims, bins)  # step (i), on the train part only
    fit = np.isin(c_tr, fit_classes)
    clf = _platt_svm(Z_tr[fit][:, chosen], c_tr[fit], seed)  # step (ii)

    proba = clf.predict_proba(Z_te[:, chosen])  # (n_test, K)
    known = clf.classes_
    accuracy = float(np.mean(known[proba.argmax(1)] == c_te))
    p_true, p_chance = _true_class_probs(proba, known, c_tr, c_te)
    score = geo_mean_percent(p_true)
    log_p = np.log(np.clip(p_true, PROB_FLOOR, 1.0))
    return {
        "score": score,
        # Its standard error over test items (delta method on the geometric mean): the measured spread
        # a comparison of two scores on the same items must exceed to mean something.
        "score_se": float(score * log_p.std(ddof=1) / np.sqrt(log_p.size)) if log_p.size > 1 else float("nan"),
        "accuracy": accuracy,
        "dim": chosen[0] if dims == 1 else chosen,
        "mi": float(mi[chosen[0]]) if dims == 1 else [float(mi[i]) for i in chosen],
        "n_train": int(c_tr.size),
        "n_test": int(c_te.size),
        "chance_score": geo_mean_percent(p_chance),
        "n_classes": int(known.size),
    }


def _true_class_probs(
    proba: np.ndarray, known: np.ndarray, c_tr: np.ndarray, c_te: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """p(true class) per test item under the classifier, and under chance (the train frequencies).

    Both use the add-one (Laplace) train frequencies over every class seen in either part, so a class
    the classifier could not be fitted on (seen once in the train part, or never) keeps its smoothed
    frequency instead of a probability of 0; the classifier's probabilities share the rest of the
    mass. With few eval labels (folds in which a level appears once) an unsmoothed 0 made the score
    collapse below chance whatever z* held; when every class has 2 or more train items the
    classifier's probabilities are used as they are.
    """
    every = np.union1d(np.unique(c_tr), np.unique(c_te))
    prior = (np.array([(c_tr == c).sum() for c in every]) + 1.0) / (c_tr.size + every.size)
    prior_of = dict(zip(every.tolist(), prior.tolist(), strict=True))
    left_out = [c for c in every.tolist() if c not in set(known.tolist())]
    rest = 1.0 - sum(prior_of[c] for c in left_out)
    col = np.searchsorted(known, c_te).clip(max=known.size - 1)
    seen = known[col] == c_te
    p_fallback = np.array([prior_of[c] for c in c_te.tolist()])
    p_true = np.where(seen, rest * proba[np.arange(c_te.size), col], p_fallback)
    return p_true, p_fallback


def _summary(per_attr: dict[str, dict[str, Any]], skipped: dict[str, str]) -> dict[str, Any]:
    scores = [r["score"] for r in per_attr.values()]
    accs = [r["accuracy"] for r in per_attr.values()]
    out: dict[str, Any] = {
        "attributes": per_attr,
        "overall": float(np.mean(scores)) if scores else float("nan"),
        "overall_accuracy": float(np.mean(accs)) if accs else float("nan"),
    }
    if skipped:
        out["skipped"] = skipped
    return out


# --------------------------------------------------------------------------- the metric


@_one_blas_thread
def interpretability_score(
    Zs_train: np.ndarray,
    S_train: Mapping[str, Any],
    Zs_test: np.ndarray,
    S_test: Mapping[str, Any],
    attributes: Sequence[Attribute | Mapping[str, Any]],
    dims: Dims = 1,
    bins: int = 20,
    continuous_bins: int = 5,
    seed: int = 0,
    *,
    skip_unscorable: bool = False,
) -> dict[str, Any]:
    """How simply z* explains each attribute: the interpretability metric of section 4.

    Per attribute j, on items with s_j observed: the dimension(s) of ``Zs_train`` [N, d] most
    informative about s_j (``dims``: 1, k, or "all") and a Platt-scaled linear SVM from them to
    s_j are fitted on the train part; on the test part score_j = 100·exp(mean log p(s_j|z*_i))
    (a class the classifier could not be fitted on gets its add-one train frequency; probabilities
    floored at 1e-12) and the accuracy are reported, with ``chance_score``, the same score of the
    add-one train class frequencies. Continuous attributes are cut into
    ``continuous_bins`` quantile groups with edges from the train part.

    Returns ``{"attributes": {name: {"score", "score_se", "accuracy", "dim", "mi", "n_train",
    "n_test", "chance_score", "n_classes"}}, "overall", "overall_accuracy"}`` (``score_se``: the
    score's standard error over the test items, by the delta method) ("dim" and "mi" are lists
    when dims ≠ 1). Raises ValueError on bad shapes, unknown attribute names, an attribute with
    no observed item in a part or a single class in the train part; with ``skip_unscorable``
    such attributes are listed under "skipped" (name → reason) and left out of "overall".
    """
    attrs = coerce_attributes(attributes)
    Z_tr = _as_latents(Zs_train, "Zs_train")
    Z_te = _as_latents(Zs_test, "Zs_test")
    if Z_tr.shape[1] != Z_te.shape[1]:
        raise ValueError(
            f"Zs_train and Zs_test must have the same number of dimensions, got {Z_tr.shape[1]} and {Z_te.shape[1]}"
        )
    dims = _check_dims(dims, Z_tr.shape[1])
    L_tr = validate_labels(S_train, attrs, Z_tr.shape[0])
    L_te = validate_labels(S_test, attrs, Z_te.shape[0])

    per_attr: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for a in attrs:
        m_tr, m_te = observed_mask(L_tr[a.name], a), observed_mask(L_te[a.name], a)
        try:
            per_attr[a.name] = _score_attribute(
                a,
                Z_tr[m_tr],
                L_tr[a.name][m_tr],
                Z_te[m_te],
                L_te[a.name][m_te],
                dims,
                bins,
                continuous_bins,
                seed,
            )
        except ValueError as exc:
            if not skip_unscorable:
                raise
            skipped[a.name] = str(exc)
    return _summary(per_attr, skipped)


def _fold_splitter(strata: np.ndarray, folds: int, seed: int) -> StratifiedKFold | KFold:
    _, counts = np.unique(strata, return_counts=True)
    if counts.min() >= folds:
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)


def interpretability_score_cv(
    Zs: np.ndarray,
    S: Mapping[str, Any],
    attributes: Sequence[Attribute | Mapping[str, Any]],
    folds: int = 2,
    *,
    seed: int = 0,
    skip_unscorable: bool = False,
    **kw: Any,
) -> dict[str, Any]:
    """The metric on one set of held-out labelled items, by cross-fitting (the app's evaluation).

    Per attribute, its observed items are split into ``folds`` parts (stratified by level, or by
    quantile group for continuous attributes, when every stratum has ``folds`` items; seeded);
    each part is scored by ``interpretability_score`` fitted on the others, and the parts' results
    are averaged. ``kw``: ``dims``, ``bins``, ``continuous_bins``. Same return shape as
    ``interpretability_score``; per attribute "score", "accuracy", "chance_score" and "mi" are
    means over folds, "dim" the most frequent choice, "n_test" the items scored (all observed
    ones), "n_train" the mean train size, and "folds" the per-fold results.
    """
    unknown = set(kw) - {"dims", "bins", "continuous_bins"}
    if unknown:
        raise ValueError(f"unexpected keyword argument(s) {sorted(unknown)}")
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise ValueError(f"folds must be an integer ≥ 2, got {folds!r}")
    attrs = coerce_attributes(attributes)
    Z = _as_latents(Zs, "Zs")
    labels = validate_labels(S, attrs, Z.shape[0])

    per_attr: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for a in attrs:
        y = labels[a.name]
        idx = np.flatnonzero(observed_mask(y, a))
        try:
            if idx.size < 2 * folds:
                raise ValueError(
                    f"attribute {a.name!r}: {idx.size} observed labels, need at least {2 * folds} for {folds} folds"
                )
            strata = (
                y[idx] if a.is_discrete else np.digitize(y[idx], _quantile_edges(y[idx], kw.get("continuous_bins", 5)))
            )
            results = []
            for tr, te in _fold_splitter(strata, int(folds), seed).split(idx, strata):
                r = interpretability_score(
                    Z[idx[tr]], {a.name: y[idx[tr]]}, Z[idx[te]], {a.name: y[idx[te]]}, [a], seed=seed, **kw
                )
                results.append(r["attributes"][a.name])
        except ValueError as exc:
            if not skip_unscorable:
                raise
            skipped[a.name] = str(exc)
            continue
        per_attr[a.name] = _average_folds(results)
    return _summary(per_attr, skipped)


def _average_folds(results: list[dict[str, Any]]) -> dict[str, Any]:
    def key(d: Any) -> tuple[int, ...]:
        return tuple(d) if isinstance(d, list) else (d,)

    dim_key, _ = Counter(key(r["dim"]) for r in results).most_common(1)[0]
    agree = [r for r in results if key(r["dim"]) == dim_key]
    dim = agree[0]["dim"]
    mi = agree[0]["mi"]
    mi = (
        [float(np.mean([r["mi"][i] for r in agree])) for i in range(len(mi))]
        if isinstance(mi, list)
        else float(np.mean([r["mi"] for r in agree]))
    )
    return {
        "score": float(np.mean([r["score"] for r in results])),
        "score_se": float(np.sqrt(np.sum([r["score_se"] ** 2 for r in results])) / len(results)),
        "accuracy": float(np.mean([r["accuracy"] for r in results])),
        "dim": dim,
        "mi": mi,
        "n_train": round(float(np.mean([r["n_train"] for r in results]))),
        "n_test": int(sum(r["n_test"] for r in results)),
        "chance_score": float(np.mean([r["chance_score"] for r in results])),
        "folds": results,
    }


# --------------------------------------------------------------------------- MIG and SAP


def _observed_classes(
    Z: np.ndarray, labels: dict[str, np.ndarray], a: Attribute, continuous_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    m = observed_mask(labels[a.name], a)
    y = labels[a.name][m]
    if not a.is_discrete and y.size:
        y = _classes(a, y, _quantile_edges(y, continuous_bins))
    return Z[m], y.astype(np.int64)


def mig(
    Zs: np.ndarray,
    S: Mapping[str, Any],
    attributes: Sequence[Attribute | Mapping[str, Any]],
    bins: int = 20,
    *,
    continuous_bins: int = 5,
) -> float:
    """Mutual Information Gap (Chen et al. 2018), as disentanglement_lib's ``discrete_mig``.

    Per attribute (observed items only): (largest − second largest I(s_j; z_i) over dimensions i)
    / H(s_j), with z binned into ``bins`` equal-width bins; averaged over attributes. Continuous
    attributes are cut into ``continuous_bins`` quantile groups first. With one latent dimension
    the second MI is 0. Attributes with H(s_j) = 0 (one level observed, or none) are left out;
    NaN when none is left. In [0, 1] up to estimation error.
    """
    attrs = coerce_attributes(attributes)
    Z = _as_latents(Zs, "Zs")
    labels = validate_labels(S, attrs, Z.shape[0])
    gaps = []
    for a in attrs:
        Za, y = _observed_classes(Z, labels, a, continuous_bins)
        h = float(mutual_info_score(y, y)) if y.size else 0.0  # H(s_j) = I(s_j; s_j)
        if h <= 0:
            continue
        mi = np.sort([mutual_info_histogram(Za[:, i], y, bins) for i in range(Z.shape[1])])[::-1]
        second = mi[1] if mi.size > 1 else 0.0
        gaps.append((mi[0] - second) / h)
    return float(np.mean(gaps)) if gaps else float("nan")


@_one_blas_thread
def sap(
    Zs: np.ndarray,
    S: Mapping[str, Any],
    attributes: Sequence[Attribute | Mapping[str, Any]],
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> float:
    """Separated Attribute Predictability (Kumar et al. 2018), as disentanglement_lib computes it.

    Per attribute and latent dimension i a predictability score: for categorical and ordinal
    attributes the test accuracy of ``LinearSVC(C=0.01, class_weight="balanced")`` trained on z_i
    alone (observed items split train/test by ``test_fraction``, stratified where possible,
    seeded; z not standardised, as in disentanglement_lib); for continuous attributes the squared
    correlation of z_i and s_j on all observed items. SAP is the mean over attributes of the gap
    between the two best dimensions (the best one alone when d = 1). Attributes with fewer than two
    levels in the train part are left out; NaN when none is left.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    attrs = coerce_attributes(attributes)
    Z = _as_latents(Zs, "Zs")
    labels = validate_labels(S, attrs, Z.shape[0])
    gaps = []
    for a in attrs:
        m = observed_mask(labels[a.name], a)
        Za, y = Z[m], labels[a.name][m]
        if y.size < 2:
            continue
        if a.is_discrete:
            scores = _sap_discrete(Za, y, test_fraction, seed)
            if scores is None:
                continue
        else:
            scores = _squared_correlations(Za, y)
        top = np.sort(scores)[::-1]
        gaps.append(top[0] - (top[1] if top.size > 1 else 0.0))
    return float(np.mean(gaps)) if gaps else float("nan")


def _squared_correlations(Z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """cov(z_i, y)² / (var z_i · var y) per dimension; 0 for a constant z_i or y."""
    zc, yc = Z - Z.mean(0), y - y.mean()
    var_z, var_y = (zc**2).mean(0), float((yc**2).mean())
    cov = (zc * yc[:, None]).mean(0)
    ok = (var_z > 1e-12) & (var_y > 1e-12)
    return np.where(ok, cov**2 / np.where(ok, var_z * var_y, 1.0), 0.0)


def _sap_discrete(Z: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> np.ndarray | None:
    rng = np.random.default_rng(seed)
    n_test = max(1, round(test_fraction * y.size))
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() >= 2:
        # Stratified: take about test_fraction of every class, at least one.
        test = np.zeros(y.size, dtype=bool)
        for c in classes:
            members = rng.permutation(np.flatnonzero(y == c))
            test[members[: max(1, round(test_fraction * members.size))]] = True
    else:
        test = np.zeros(y.size, dtype=bool)
        test[rng.permutation(y.size)[:n_test]] = True
    if np.unique(y[~test]).size < 2 or test.all():
        return None
    scores = np.empty(Z.shape[1])
    for i in range(Z.shape[1]):
        clf = LinearSVC(C=0.01, class_weight="balanced").fit(Z[~test, i : i + 1], y[~test])
        scores[i] = np.mean(clf.predict(Z[test, i : i + 1]) == y[test])
    return scores
