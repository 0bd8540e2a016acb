"""Several experts per item: their agreement (Krippendorff's α) and what the lens trains on (consensus).

Labels come as triples (item row, expert row, value): value a level index for a discrete attribute,
a number for a continuous one. Each expert counts once per item (their own latest label).

- ``agreement``: Krippendorff's α (Krippendorff 2004; the maintained ``krippendorff`` package) at the
  attribute's level of measurement — nominal for categorical, ordinal for ordinal, interval for
  continuous — with a bootstrap interval over items, and per expert the α between their labels and
  the leave-one-out consensus of the others on the items they share.
- ``consensus``: the target per item. ``dawid_skene`` (Dawid & Skene 1979) estimates each expert's
  confusion matrix and the level prior by EM and gives each item the posterior over its true level:
  an expert who often disagrees with the rest counts for less, and an item their label alone
  contradicts keeps most mass where the others put it. ``vote`` is the share of each level among the
  item's labels; ``last`` is the latest label (what one expert per item gives). Continuous
  attributes take the mean of the labels under every method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.attributes import Attribute

CONSENSUS_METHODS = ("dawid_skene", "vote", "last")
LEVEL_OF_MEASUREMENT = {"categorical": "nominal", "ordinal": "ordinal", "continuous": "interval"}
DS_ITERATIONS = 50
# The prior on each row of an expert's confusion matrix: as if they had already given DS_PRIOR_LABELS
# labels of that level, DS_PRIOR_RIGHT of them right. With few labels an expert counts as mostly
# right (a vote weighted accordingly); their own record takes over as their labels accumulate.
DS_PRIOR_LABELS = 5.0
DS_PRIOR_RIGHT = 0.8


@dataclass
class Labels:
    """One attribute's labels: parallel arrays of item row, expert row and value, in time order."""

    item: np.ndarray
    expert: np.ndarray
    value: np.ndarray

    @classmethod
    def of(cls, item: Sequence[int], expert: Sequence[int], value: Sequence[float]) -> Labels:
        return cls(np.asarray(item, np.int64), np.asarray(expert, np.int64), np.asarray(value, np.float64))

    def latest_per_expert(self) -> Labels:
        """Each expert's last label per item (an expert's own correction replaces their earlier label)."""
        if not len(self.item):
            return self
        key = self.item * (int(self.expert.max()) + 1) + self.expert
        # The last occurrence of each (item, expert): unique on the reversed order.
        _, first_rev = np.unique(key[::-1], return_index=True)
        keep = np.sort(len(key) - 1 - first_rev)
        return Labels(self.item[keep], self.expert[keep], self.value[keep])


def reliability_matrix(labels: Labels, n_items: int, n_experts: int) -> np.ndarray:
    """Experts × items, NaN where an expert gave no value (the ``krippendorff`` package's layout)."""
    m = np.full((n_experts, n_items), np.nan)
    lab = labels.latest_per_expert()
    m[lab.expert, lab.item] = lab.value
    return m


def _level_counts(items: np.ndarray, levels: np.ndarray, n_items: int, n_levels: int) -> np.ndarray:
    """How many labels give each level to each item: [n_items, n_levels]."""
    counts = np.zeros((n_items, n_levels))
    np.add.at(counts, (items, levels.astype(np.int64)), 1.0)
    return counts


def _package_alpha(**data: Any) -> float:
    """The ``krippendorff`` package's α; NaN where it is undefined (e.g. one value in all the data)."""
    import krippendorff

    try:
        return float(krippendorff.alpha(**data))
    except (ValueError, ZeroDivisionError):
        return float("nan")


def _alpha(matrix: np.ndarray, level: str, domain: np.ndarray | None) -> float:
    pairable = (~np.isnan(matrix)).sum(0) >= 2
    if pairable.sum() < 1:
        return float("nan")
    sub = matrix[:, pairable]
    values = np.unique(sub[~np.isnan(sub)])
    if len(values) < 2 and (domain is None or len(domain) < 2):
        return float("nan")
    return _package_alpha(
        reliability_data=sub, level_of_measurement=level, value_domain=list(domain) if domain is not None else None
    )


def _bootstrap(
    m: np.ndarray, level: str, domain: np.ndarray | None, n_boot: int, rng: np.random.Generator
) -> list[float]:
    """α of ``n_boot`` resamples of the items (columns). Discrete data go to the package as value counts
    per item (items × levels), which it takes directly: resampling rows of that table is ~10× cheaper
    than rebuilding the experts × items matrix each time."""
    n = m.shape[1]
    if domain is None:
        return [_alpha(m[:, rng.integers(0, n, n)], level, domain) for _ in range(n_boot)]
    e, j = np.nonzero(~np.isnan(m))
    counts = _level_counts(j, m[e, j], n, len(domain))
    return [
        _package_alpha(
            value_counts=counts[rng.integers(0, n, n)], value_domain=list(domain), level_of_measurement=level
        )
        for _ in range(n_boot)
    ]


def _loo_consensus(matrix: np.ndarray, e: int, level: str) -> np.ndarray:
    """Per item the others' consensus (mode, median or mean by level), NaN where no other expert labelled."""
    others = np.delete(matrix, e, axis=0)
    out = np.full(matrix.shape[1], np.nan)
    has = (~np.isnan(others)).any(0)
    if level == "interval":
        out[has] = np.nanmean(others[:, has], axis=0)
    elif level == "ordinal":
        out[has] = np.floor(np.nanmedian(others[:, has], axis=0))
    else:
        # The mode (the smallest level among ties), from per-item counts of the others' levels.
        vals = np.unique(others[~np.isnan(others)])
        counts = np.stack([(others == v).sum(0) for v in vals], axis=1)
        out[has] = vals[np.argmax(counts[has], axis=1)]
    return out


def agreement(
    labels: Labels,
    attribute: Attribute,
    n_items: int,
    n_experts: int,
    *,
    n_boot: int = 300,
    seed: int = 0,
) -> dict[str, Any]:
    """Krippendorff's α of one attribute with a 95% bootstrap interval (items resampled), and per expert
    ``alpha`` against the others' leave-one-out consensus, ``agree`` (share of shared items on which
    they match it exactly; within 10% of the range for continuous) and ``n_items`` shared."""
    level = LEVEL_OF_MEASUREMENT[attribute.kind]
    domain = np.arange(attribute.n_levels, dtype=np.float64) if attribute.is_discrete else None
    m = reliability_matrix(labels, n_items, n_experts)
    pairable = (~np.isnan(m)).sum(0) >= 2
    m = m[:, pairable]
    out: dict[str, Any] = {
        "level": level,
        "n_items": int(pairable.sum()),
        "n_labels": int((~np.isnan(m)).sum()),
        "alpha": _alpha(m, level, domain),
        "low": None,
        "high": None,
        "experts": {},
    }
    if out["n_items"] >= 2 and n_boot > 0 and np.isfinite(out["alpha"]):
        rng = np.random.default_rng(seed)
        draws = np.asarray([d for d in _bootstrap(m, level, domain, n_boot, rng) if np.isfinite(d)])
        if len(draws):
            out["low"], out["high"] = (float(x) for x in np.percentile(draws, [2.5, 97.5]))
    spread = float(np.nanmax(m) - np.nanmin(m)) if m.size and np.isfinite(m).any() else 0.0
    for e in range(n_experts):
        mine = ~np.isnan(m[e])
        if not mine.any():
            continue
        rest = _loo_consensus(m, e, level)
        shared = mine & ~np.isnan(rest)
        if not shared.any():
            continue
        pair = np.vstack([m[e, shared], rest[shared]])
        same = np.abs(pair[0] - pair[1]) <= (0.1 * spread if level == "interval" else 0.0)
        out["experts"][e] = {
            "alpha": _alpha(pair, level, domain),
            "agree": float(same.mean()),
            "n_items": int(shared.sum()),
        }
    return out


def dawid_skene(
    labels: Labels, n_items: int, n_levels: int, *, iterations: int = DS_ITERATIONS
) -> tuple[np.ndarray, np.ndarray]:
    """Dawid & Skene's EM: (posterior over each item's true level [n_items, C], zeros for an item without
    labels; each expert's confusion matrix [E, C, C], row = true level, column = level said)."""
    lab = labels.latest_per_expert()
    said = lab.value.astype(np.int64)
    n_experts = int(lab.expert.max()) + 1 if len(lab.expert) else 0
    post = _vote(lab, n_items, n_levels)  # the start: the labels' shares
    has = post.sum(1) > 0
    conf = np.full((n_experts, n_levels, n_levels), 1.0 / n_levels)
    off = (1.0 - DS_PRIOR_RIGHT) / max(n_levels - 1, 1)
    prior_counts = DS_PRIOR_LABELS * np.where(np.eye(n_levels, dtype=bool), DS_PRIOR_RIGHT, off)
    for _ in range(iterations):
        # M-step: level prior and confusion matrices from the current posteriors.
        prior = (post[has].sum(0) + 1.0) / (has.sum() + n_levels)
        tally = np.tile(prior_counts, (n_experts, 1, 1))
        np.add.at(tally, (lab.expert, slice(None), said), post[lab.item])  # tally[e, c, l] += post[i, c]
        conf = tally / tally.sum(2, keepdims=True)
        # E-step: posterior ∝ prior × Π over the item's labels of conf[e, c, said].
        log_post = np.zeros((n_items, n_levels)) + np.log(prior)
        np.add.at(log_post, lab.item, np.log(conf[lab.expert, :, said]))
        log_post -= log_post.max(1, keepdims=True)
        new = np.exp(log_post)
        new = np.where(has[:, None], new / new.sum(1, keepdims=True), 0.0)
        if np.abs(new - post).max() < 1e-6:
            post = new
            break
        post = new
    return post, conf


def consensus(labels: Labels, attribute: Attribute, n_items: int, method: str = "dawid_skene") -> np.ndarray:
    """The lens's target per item: soft targets [n_items, C] for a discrete attribute (zeros where
    unlabelled) under ``dawid_skene`` or ``vote``, the latest level index (−1 missing) under ``last``;
    the mean of the labels (NaN missing) for a continuous attribute."""
    if method not in CONSENSUS_METHODS:
        raise ValueError(f"consensus must be one of {CONSENSUS_METHODS}, got {method!r}")
    if method == "last":
        # In time order, so the latest label of each item is the one that stays.
        out = np.full(n_items, np.nan) if not attribute.is_discrete else np.full(n_items, -1, np.int64)
        out[labels.item] = labels.value if not attribute.is_discrete else labels.value.astype(np.int64)
        return out
    lab = labels.latest_per_expert()
    if not attribute.is_discrete:
        total, count = np.zeros(n_items), np.zeros(n_items)
        np.add.at(total, lab.item, lab.value)
        np.add.at(count, lab.item, 1.0)
        return np.where(count > 0, total / np.maximum(count, 1.0), np.nan)
    if method == "vote":
        return _vote(lab, n_items, attribute.n_levels)
    return dawid_skene(lab, n_items, attribute.n_levels)[0]


def _vote(lab: Labels, n_items: int, n_levels: int) -> np.ndarray:
    """Each item's share of labels per level [n_items, n_levels]; zeros for an item without labels."""
    counts = _level_counts(lab.item, lab.value, n_items, n_levels)
    mass = counts.sum(1, keepdims=True)
    return np.where(mass > 0, counts / np.maximum(mass, 1.0), 0.0)


Row = tuple  # (item id, expert, {attribute: level name or number}[, adjudicated])


def collect(
    rows: Sequence[Row], attribute: Attribute, item_pos: dict[int, int], experts: dict[Any, int]
) -> tuple[Labels, dict[int, float]]:
    """One attribute's expert labels from stored rows (adjudications left out), with new experts numbered
    in ``experts``; and the latest adjudicated value per item row."""
    it, ex, va = [], [], []
    settled: dict[int, float] = {}
    for row in rows:
        iid, who, values = row[0], row[1], row[2]
        v = values.get(attribute.name)
        k = item_pos.get(int(iid))
        if v is None or k is None:
            continue
        value = attribute.level_index(v) if attribute.is_discrete else float(v)
        if len(row) > 3 and row[3]:
            settled[k] = value
            continue
        it.append(k)
        ex.append(experts.setdefault(who, len(experts)))
        va.append(value)
    return Labels.of(it, ex, va), settled


def targets(
    item_ids: Sequence[int],
    rows: Sequence[Row],
    attributes: Sequence[Attribute],
    method: str = "dawid_skene",
    *,
    hard: bool = False,
) -> dict[str, np.ndarray]:
    """Label arrays for the lens from stored labels: ``rows`` are (item id, expert, {attribute: level name
    or number}, adjudicated) in the order they were given; the result is aligned with ``item_ids``.

    An attribute whose items each have one expert's labels gets the latest label (as ``last``): there is
    nothing to weigh. Otherwise ``method``'s consensus. An adjudicated value (an admin's resolution)
    replaces the consensus of its item. ``hard`` (e.g. for the metric's eval labels) turns soft targets
    into their most likely level.
    """
    from ml.attributes import hard_levels

    pos = {int(iid): k for k, iid in enumerate(item_ids)}
    experts: dict[Any, int] = {}
    out: dict[str, np.ndarray] = {}
    for a in attributes:
        lab, settled = collect(rows, a, pos, experts)
        latest = lab.latest_per_expert()
        several = len(latest.item) > len(np.unique(latest.item))
        t = consensus(lab, a, len(pos), method if several else "last")
        if settled:
            k = np.fromiter(settled, np.int64)
            v = np.fromiter(settled.values(), np.float64)
            if t.ndim == 2:
                t[k] = 0.0
                t[k, v.astype(np.int64)] = 1.0
            else:
                t[k] = v
        out[a.name] = hard_levels(t, a) if hard and a.is_discrete else t
    return out
