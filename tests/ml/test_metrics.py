"""ml.metrics: the interpretability metric (section 4, appendix 12), MIG and SAP."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.attributes import Attribute
from ml.metrics import (
    histogram_discretize,
    interpretability_score,
    interpretability_score_cv,
    mig,
    mutual_info_histogram,
    sap,
)

DIGIT = Attribute("digit", "categorical", tuple("0123"))
THICK = Attribute("thickness", "ordinal", ("thin", "medium", "thick"))
ANGLE = Attribute("angle", "continuous", low=0.0, high=360.0)


def _coded(n: int, seed: int, *, dim: int = 3, d: int = 6, noise: float = 0.05, classes: int = 4):
    """z* ~ N(0, I) except z*_dim = class + small noise; labels balanced over ``classes``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    Z = rng.normal(size=(n, d))
    Z[:, dim] = y + noise * rng.normal(size=n)
    return Z, y


# --------------------------------------------------------------------------- building blocks


def test_histogram_mutual_information_matches_the_definition():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 3, 2000)
    z = s + 0.01 * rng.normal(size=2000)  # z determines s: I = H(s)
    p = np.bincount(s) / s.size
    h = -(p * np.log(p)).sum()
    assert mutual_info_histogram(z, s) == pytest.approx(h, abs=1e-9)
    assert mutual_info_histogram(rng.normal(size=2000), s) < 0.02  # independent: ≈ 0 (bias only)
    # Equal-width bins over the range, the maximum in the last bin, as disentanglement_lib.
    x = np.concatenate([[0.0], np.arange(20) + 0.5, [20.0]])
    assert histogram_discretize(x, bins=20).tolist() == [1, *range(1, 21), 20]
    # A continuous s is binned the same way, so I(z; z) is the entropy of the binned z.
    q = np.bincount(histogram_discretize(z)) / z.size
    h_binned = -(q[q > 0] * np.log(q[q > 0])).sum()
    assert h_binned > h + 0.1  # the noise spills over bin edges: not the entropy of s
    assert mutual_info_histogram(z, z, discrete_s=False) == pytest.approx(h_binned, abs=1e-9)
    with pytest.raises(ValueError, match="same length"):
        mutual_info_histogram(z[:5], s)


# --------------------------------------------------------------------------- the metric


def test_a_dimension_that_encodes_the_attribute_scores_above_90():
    Ztr, ytr = _coded(400, 1)
    Zte, yte = _coded(400, 2)
    r = interpretability_score(Ztr, {"digit": ytr}, Zte, {"digit": yte}, [DIGIT])
    a = r["attributes"]["digit"]
    assert a["dim"] == 3
    assert a["accuracy"] > 0.99
    assert a["score"] > 90
    assert a["mi"] == pytest.approx(math.log(4), abs=0.02)
    assert a["chance_score"] == pytest.approx(25, abs=1.5)
    assert (a["n_train"], a["n_test"], a["n_classes"]) == (400, 400, 4)
    assert r["overall"] == a["score"] and r["overall_accuracy"] == a["accuracy"]


def test_pure_noise_scores_close_to_chance():
    rng = np.random.default_rng(3)
    Ztr, Zte = rng.normal(size=(500, 6)), rng.normal(size=(500, 6))
    ytr, yte = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    a = interpretability_score(Ztr, {"digit": ytr}, Zte, {"digit": yte}, [DIGIT])["attributes"]["digit"]
    assert abs(a["score"] - a["chance_score"]) < 3
    assert a["score"] < 28
    assert abs(a["accuracy"] - 0.25) < 0.07


def test_score_is_the_geometric_mean_probability_of_the_true_level():
    # The same fitted model scored on each test item alone: the full score is their geometric mean.
    Ztr, ytr = _coded(300, 4, noise=0.6)
    Zte, yte = _coded(40, 5, noise=0.6)
    full = interpretability_score(Ztr, {"digit": ytr}, Zte, {"digit": yte}, [DIGIT])["attributes"]["digit"]
    singles = [
        interpretability_score(Ztr, {"digit": ytr}, Zte[i : i + 1], {"digit": yte[i : i + 1]}, [DIGIT])
        for i in range(40)
    ]
    p = np.array([s["attributes"]["digit"]["score"] / 100 for s in singles])
    assert 0 < p.min() < 0.9  # noisy enough that the probabilities differ
    assert full["score"] == pytest.approx(100 * np.exp(np.log(p).mean()), rel=1e-9)
    assert full["accuracy"] == pytest.approx(np.mean([s["attributes"]["digit"]["accuracy"] for s in singles]))


def test_middle_level_of_an_ordinal_attribute_on_one_axis_is_classified():
    # One-vs-one SVMs separate the middle level; a one-vs-rest linear model on one axis could not.
    Ztr, ytr = _coded(300, 6, dim=1, d=4, noise=0.15, classes=3)
    Zte, yte = _coded(600, 7, dim=1, d=4, noise=0.15, classes=3)
    mid = yte == 1
    a = interpretability_score(Ztr, {"thickness": ytr}, Zte[mid], {"thickness": yte[mid]}, [THICK])
    a = a["attributes"]["thickness"]
    assert a["dim"] == 1
    assert a["accuracy"] > 0.9
    assert a["score"] > 70


def test_continuous_attribute_is_scored_on_quantile_groups_from_the_train_part():
    rng = np.random.default_rng(8)
    angle = rng.uniform(0, 360, 800)
    Z = rng.normal(size=(800, 5))
    Z[:, 2] = angle / 90 + 0.02 * rng.normal(size=800)
    r = interpretability_score(Z[:400], {"angle": angle[:400]}, Z[400:], {"angle": angle[400:]}, [ANGLE])
    a = r["attributes"]["angle"]
    assert a["dim"] == 2 and a["n_classes"] == 5
    assert a["chance_score"] == pytest.approx(20, abs=2)  # five equal-frequency groups
    assert a["accuracy"] > 0.9 and a["score"] > 75
    r3 = interpretability_score(
        Z[:400], {"angle": angle[:400]}, Z[400:], {"angle": angle[400:]}, [ANGLE], continuous_bins=3
    )
    assert r3["attributes"]["angle"]["n_classes"] == 3
    assert r3["attributes"]["angle"]["chance_score"] == pytest.approx(100 / 3, abs=3)


def test_two_dimensions_help_an_attribute_encoded_in_two():
    rng = np.random.default_rng(9)
    Z = rng.normal(size=(1000, 5))
    y = (Z[:, 0] > 0).astype(int) + 2 * (Z[:, 4] > 0)  # quadrant of (z0, z4): four levels
    args = (Z[:500], {"digit": y[:500]}, Z[500:], {"digit": y[500:]}, [DIGIT])
    one = interpretability_score(*args, dims=1)["attributes"]["digit"]
    two = interpretability_score(*args, dims=2)["attributes"]["digit"]
    every = interpretability_score(*args, dims="all")["attributes"]["digit"]
    assert sorted(two["dim"]) == [0, 4] and len(two["mi"]) == 2
    assert every["dim"] == [0, 1, 2, 3, 4]
    assert one["accuracy"] < 0.6 < 0.9 < two["accuracy"]
    assert two["score"] > one["score"] + 20
    assert every["score"] > one["score"]


def test_only_observed_items_count_and_unseen_test_levels_get_their_add_one_frequency():
    Ztr, ytr = _coded(300, 10, classes=3)
    Zte, yte = _coded(60, 11, classes=4)
    ytr_missing = ytr.copy()
    ytr_missing[::3] = -1  # missing labels are ignored, not a class
    r = interpretability_score(Ztr, {"digit": ytr_missing}, Zte, {"digit": yte}, [DIGIT])["attributes"]["digit"]
    assert r["n_train"] == 200 and r["n_classes"] == 3
    # Level 3 never appears in the train part: those test items get its add-one frequency 1/(300 + 4),
    # and the classifier's probabilities of the three others share the remaining mass.
    seen = yte < 3
    r_seen = interpretability_score(Ztr, {"digit": ytr}, Zte[seen], {"digit": yte[seen]}, [DIGIT])["attributes"][
        "digit"
    ]
    frac = 1 - seen.mean()
    unseen_p = 1 / (300 + 4)
    want = 100 * math.exp((1 - frac) * math.log(r_seen["score"] / 100 * (1 - unseen_p)) + frac * math.log(unseen_p))
    r_all = interpretability_score(Ztr, {"digit": ytr}, Zte, {"digit": yte}, [DIGIT])["attributes"]["digit"]
    assert r_all["score"] == pytest.approx(want, rel=1e-6)
    assert r_all["accuracy"] == pytest.approx(r_seen["accuracy"] * seen.mean())


def test_a_level_seen_once_in_training_is_left_out_of_the_classifier():
    Ztr, ytr = _coded(200, 12, classes=3)
    ytr[0] = 3  # a single item of level 3 cannot be Platt-calibrated
    Zte, yte = _coded(100, 13, classes=3)
    a = interpretability_score(Ztr, {"digit": ytr}, Zte, {"digit": yte}, [DIGIT])["attributes"]["digit"]
    assert a["n_classes"] == 3 and a["accuracy"] > 0.95


def test_bad_input_raises_clear_errors():
    Z, y = _coded(100, 14)
    with pytest.raises(ValueError, match=r"'digit'.*single class"):
        interpretability_score(Z, {"digit": np.zeros(100, int)}, Z, {"digit": y}, [DIGIT])
    with pytest.raises(ValueError, match="unknown attribute"):
        interpretability_score(Z, {"digit": y, "colour": y}, Z, {"digit": y}, [DIGIT])
    with pytest.raises(ValueError, match="length 100"):
        interpretability_score(Z, {"digit": y[:50]}, Z, {"digit": y}, [DIGIT])
    with pytest.raises(ValueError, match="same number of dimensions"):
        interpretability_score(Z, {"digit": y}, Z[:, :3], {"digit": y}, [DIGIT])
    with pytest.raises(ValueError, match="Zs_train"):
        interpretability_score(Z[:, 0], {"digit": y}, Z, {"digit": y}, [DIGIT])
    with pytest.raises(ValueError, match="dims"):
        interpretability_score(Z, {"digit": y}, Z, {"digit": y}, [DIGIT], dims=7)
    with pytest.raises(ValueError, match=r"'digit'.*no observed labels in the test part"):
        interpretability_score(Z, {"digit": y}, Z, {"digit": np.full(100, -1)}, [DIGIT])
    r = interpretability_score(
        Z,
        {"digit": y, "thickness": np.zeros(100, int)},
        Z,
        {"digit": y, "thickness": y % 3},
        [DIGIT, THICK],
        skip_unscorable=True,
    )
    assert list(r["attributes"]) == ["digit"] and "single class" in r["skipped"]["thickness"]
    assert r["overall"] == r["attributes"]["digit"]["score"]


def test_cross_fitted_score_scores_both_halves_and_averages_them():
    Z, y = _coded(600, 15, noise=0.15)
    rng = np.random.default_rng(16)
    angle = np.where(rng.random(600) < 0.3, np.nan, rng.uniform(0, 360, 600))  # 30 % unlabelled
    S = {"digit": y, "angle": angle}
    r = interpretability_score_cv(Z, S, [DIGIT, ANGLE], seed=1)
    d = r["attributes"]["digit"]
    assert len(d["folds"]) == 2 and d["n_test"] == 600 and d["n_train"] == 300
    s0, s1 = (f["score"] for f in d["folds"])
    assert s0 > 85 and s1 > 85 and abs(s0 - s1) < 5  # symmetric: each half predicts the other
    assert d["score"] == pytest.approx((s0 + s1) / 2) and d["dim"] == 3
    ang = r["attributes"]["angle"]
    assert ang["n_test"] == int(np.isfinite(angle).sum())
    assert abs(ang["score"] - ang["chance_score"]) < 4  # angle is not encoded in Z
    assert r["overall"] == pytest.approx((d["score"] + ang["score"]) / 2)
    again = interpretability_score_cv(Z, S, [DIGIT, ANGLE], seed=1)
    assert again["overall"] == r["overall"]
    with pytest.raises(ValueError, match="observed labels"):
        interpretability_score_cv(Z, {"digit": np.where(np.arange(600) < 3, y, -1)}, [DIGIT])
    with pytest.raises(ValueError, match="unexpected keyword"):
        interpretability_score_cv(Z, S, [DIGIT, ANGLE], fold=3)


# --------------------------------------------------------------------------- MIG and SAP


def _factors(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    S = {"digit": rng.integers(0, 4, n), "thickness": rng.integers(0, 3, n)}
    return rng.normal(size=(n, 5)), S


def test_mig_is_high_for_a_disentangled_code_and_zero_for_a_copied_factor():
    Z, S = _factors(3000, 17)
    Z[:, 0] = S["digit"] + 0.05 * np.random.default_rng(0).normal(size=3000)
    Z[:, 2] = S["thickness"] + 0.05 * np.random.default_rng(1).normal(size=3000)
    disentangled = mig(Z, S, [DIGIT, THICK])
    assert disentangled > 0.9
    entangled = Z.copy()
    entangled[:, 1] = Z[:, 0]  # each factor copied into two dimensions
    entangled[:, 3] = Z[:, 2]
    assert mig(entangled, S, [DIGIT, THICK]) < 0.05
    # One factor, hand-computable: a one-to-one code gives (H − I(noise dims)) / H.
    assert mig(Z, {"digit": S["digit"]}, [DIGIT]) > 0.95
    # Missing labels are left out, not counted as a class.
    S_missing = {k: np.where(np.arange(3000) % 4 == 0, -1, v) for k, v in S.items()}
    assert mig(Z, S_missing, [DIGIT, THICK]) > 0.9
    assert math.isnan(mig(Z, {"digit": np.zeros(3000, int)}, [DIGIT]))


def test_sap_prefers_the_disentangled_code():
    Z, S = _factors(1500, 18)
    rng = np.random.default_rng(2)
    Z = np.concatenate([Z, rng.normal(size=(1500, 1))], axis=1)  # (1500, 6)
    Z[:, 0] = S["digit"] + 0.05 * rng.normal(size=1500)
    Z[:, 2] = S["thickness"] + 0.05 * rng.normal(size=1500)
    angle = rng.uniform(0, 360, 1500)
    Z[:, 4] = angle / 100
    S_all = {**S, "angle": angle}
    attrs = [DIGIT, THICK, ANGLE]
    disentangled = sap(Z, S_all, attrs)
    entangled = Z.copy()  # every factor copied into a second dimension
    entangled[:, 1], entangled[:, 3], entangled[:, 5] = Z[:, 0], Z[:, 2], Z[:, 4]
    assert sap(entangled, S_all, attrs) < 0.02
    assert disentangled > 0.3
    # The continuous attribute's predictability is the squared correlation: 1 vs ≈ 0.
    assert sap(Z, {"angle": angle}, [ANGLE]) > 0.98
    assert sap(Z, S_all, attrs, seed=3) == pytest.approx(disentangled, abs=0.05)


def test_a_perfect_code_scores_above_chance_even_when_levels_are_seen_once():
    # Few eval labels: in a fold, several levels appear once (left out of the classifier) or never.
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9] * 2)
    Z = np.c_[y + 0.01 * rng.normal(size=y.size), rng.normal(size=(y.size, 3))]
    ten = Attribute(name="digit", kind="categorical", levels=tuple(str(i) for i in range(10)))
    r = interpretability_score_cv(Z, {"digit": y}, [ten], folds=2)["attributes"]["digit"]
    # Measured 16.7 against chance 11.1. Before the add-one fallback such items got 1e-12, and the
    # score of this perfect code was below 0.1.
    assert r["score"] > r["chance_score"] + 2
