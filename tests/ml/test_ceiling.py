"""The one-dimension ceiling (``ml.experiment.ceiling``): level orders and the code the metric reads."""

from __future__ import annotations

import itertools

import numpy as np

from ml.attributes import Attribute
from ml.experiment.ceiling import level_positions, one_dimension_code, shortest_path_order
from ml.metrics import interpretability_score


def _length(D: np.ndarray, path) -> float:
    return float(sum(D[a, b] for a, b in itertools.pairwise(path)))


def test_the_level_order_is_the_shortest_path_through_the_class_means() -> None:
    rng = np.random.default_rng(0)
    for n in (3, 6, 8):
        P = rng.normal(size=(n, 3))
        D = np.linalg.norm(P[:, None] - P[None], axis=2)
        order = shortest_path_order(D)
        assert sorted(order) == list(range(n))
        brute = min(_length(D, p) for p in itertools.permutations(range(n)))
        assert abs(_length(D, order) - brute) < 1e-9
    # Beyond the exact limit a greedy path: still every level once, and no worse than the identity order.
    P = rng.normal(size=(15, 2))
    D = np.linalg.norm(P[:, None] - P[None], axis=2)
    order = shortest_path_order(D)
    assert sorted(order) == list(range(15)) and _length(D, order) <= _length(D, range(15))


def test_levels_on_a_line_keep_their_order_and_get_prior_quantiles() -> None:
    # Class means on a line in the order 2, 0, 1: the path finds it (or its mirror image).
    X = np.concatenate([np.full((50, 2), 5.0), np.full((30, 2), 9.0), np.full((20, 2), 0.0)])
    y = np.repeat([0, 1, 2], [50, 30, 20])
    pos = level_positions(y, 3, X)
    # Shares 0.5, 0.3, 0.2: in the order 2, 0, 1 the mid-points of the cumulative shares are 0.1, 0.45
    # and 0.85, whose normal quantiles are the positions (the mirror order gives their negatives).
    from scipy.stats import norm

    expected = norm.ppf([0.45, 0.85, 0.1])
    assert np.allclose(pos, expected, atol=1e-6) or np.allclose(pos, -expected, atol=1e-6)
    ordinal = level_positions(y, 3)
    assert list(np.argsort(ordinal)) == [0, 1, 2]


def test_a_dimension_holding_the_right_levels_scores_near_100_and_one_wrong_level_costs_much() -> None:
    rng = np.random.default_rng(1)
    a = Attribute("k", "categorical", tuple("abcd"))
    y_fit, y_test = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    pos = level_positions(y_fit, 4)
    right = interpretability_score(
        one_dimension_code(y_fit, pos), {"k": y_fit}, one_dimension_code(y_test, pos), {"k": y_test}, [a]
    )["attributes"]["k"]
    assert right["accuracy"] == 1.0 and right["score"] > 90
    # 5% of the test items on a wrong level: the accuracy drops 5 points, the geometric mean far more.
    wrong = y_test.copy()
    wrong[:20] = (wrong[:20] + 2) % 4
    hurt = interpretability_score(
        one_dimension_code(y_fit, pos), {"k": y_fit}, one_dimension_code(wrong, pos), {"k": y_test}, [a]
    )["attributes"]["k"]
    assert 0.94 <= hurt["accuracy"] <= 0.96 and hurt["score"] < right["score"] - 20
