"""What one dimension of z* can reach at most: the supervised ceiling read through a single dimension.

The ceiling of the label curve (``label_curve.reference_point``) is an MLP on all of z. The metric,
though, reads one dimension through a Platt-scaled linear SVM, and the geometric mean it reports is
ruled by its confidently wrong items: an item placed inside another level's interval gets a
probability near zero for its own. So even a dimension that carries the MLP's own predictions —
each item at the position of its predicted level, the levels in the best order — scores below the
MLP (on the 10-d VAE z of MNIST with 1,000 labels: 44.6 against 74.2, at the same 91.6% accuracy;
EXPERIMENTS.md, "The ceiling").
``one_dimension_code`` builds that dimension, so the ceiling can be stated for one dimension too.

The order of a categorical attribute's levels along the dimension is the shortest path through
their class means (levels alike in z are neighbours, so confusions fall between neighbours), solved
exactly for up to ``EXACT_ORDER_MAX`` levels (Held–Karp) and greedily beyond; an ordinal attribute
keeps its levels' order. Positions are the normal quantiles of the levels' shares, as under the
lens's prior N(0, 1).
"""

from __future__ import annotations

from itertools import combinations, pairwise

import numpy as np
from scipy.stats import norm

EXACT_ORDER_MAX = 12


def shortest_path_order(D: np.ndarray) -> list[int]:
    """An order of the n points visiting each once with the least total distance ``D`` (n × n)."""
    D = np.asarray(D, dtype=np.float64)
    n = len(D)
    if n <= 2:
        return list(range(n))
    if n > EXACT_ORDER_MAX:  # nearest neighbour from the best start
        best: list[int] = []
        for start in range(n):
            path, left = [start], set(range(n)) - {start}
            while left:
                nxt = min(left, key=lambda j: D[path[-1], j])
                path.append(nxt)
                left.remove(nxt)
            if not best or _length(D, path) < _length(D, best):
                best = path
        return best
    # Held–Karp: cost[(S, j)] = shortest path through the set S ending at j.
    cost = {(1 << j, j): (0.0, -1) for j in range(n)}
    for size in range(2, n + 1):
        for subset in combinations(range(n), size):
            mask = sum(1 << j for j in subset)
            for j in subset:
                prev = mask ^ (1 << j)
                cost[(mask, j)] = min((cost[(prev, i)][0] + D[i, j], i) for i in subset if i != j)
    full = (1 << n) - 1
    j = min(range(n), key=lambda j: cost[(full, j)][0])
    path, mask = [], full
    while j != -1:
        path.append(j)
        j, mask = cost[(mask, j)][1], mask ^ (1 << j)
    return path[::-1]


def _length(D: np.ndarray, path: list[int]) -> float:
    return float(sum(D[a, b] for a, b in pairwise(path)))


def level_positions(y: np.ndarray, n_levels: int, X: np.ndarray | None = None) -> np.ndarray:
    """Each level's position on the dimension: in the shortest-path order of its class means in ``X``
    (categorical), or in level order (``X`` None: ordinal); at the normal quantile of its share."""
    y = np.asarray(y, dtype=np.int64)
    share = np.bincount(y, minlength=n_levels) / len(y)
    if X is None:
        order = list(range(n_levels))
    else:
        means = np.stack([X[y == c].mean(0) if np.any(y == c) else X.mean(0) for c in range(n_levels)])
        order = shortest_path_order(np.linalg.norm(means[:, None] - means[None], axis=2))
    mid = np.cumsum(share[order]) - share[order] / 2
    pos = np.zeros(n_levels)
    pos[order] = norm.ppf(np.clip(mid, 1e-6, 1 - 1e-6))
    return pos


def one_dimension_code(predicted: np.ndarray, positions: np.ndarray, seed: int = 0) -> np.ndarray:
    """A one-column z*: each item at its predicted level's position (a tiny jitter breaks ties). [N, 1]"""
    jitter = 1e-3 * np.random.default_rng(seed).standard_normal(len(predicted))
    return (positions[np.asarray(predicted, dtype=np.int64)] + jitter)[:, None]
