"""Acquisition: which unlabelled items experts should label next (paper section 3).

The lens gives, for every pool item, S Monte-Carlo samples z*_t ~ q(z*|z) and through them the
predictive distributions p_t = p_ψ(s|z*_t) of an attribute. From those:

* ``bald``         I(s; z*) = H[mean_t p_t] − mean_t H[p_t]          (eq. 9–10, Houlsby et al. 2011)
* ``max_entropy``  H[mean_t p_t], the predictive entropy              (eq. 14)
* ``random``       uniform scores, the baseline of section 6.2.2.

Continuous attributes (p_t Gaussian) use ``gaussian_bald`` / ``gaussian_entropy``, which
moment-match the mixture mean_t N(μ_t, σ²_t) by one Gaussian. Scores of several attributes are
summed. ``select_batch`` turns scores into a batch for several experts without near-duplicates
(greedy BatchBALD, Kirsch et al. 2019; stochastic power sampling, Kirsch et al. 2023; or the
informativeness-weighted k-means of Zhdanov 2019, which spreads a batch over the feature space; or
a coverage batch, one item per k-means region that no labelled item covers yet, chosen there by
informativeness × density: Hacohen et al. 2022, Settles & Craven 2008), and
``score_pool`` scores a pool chunk by chunk so that memory does not grow with the pool.

Array functions take NumPy arrays (computed in float64) or torch tensors (computed in the
tensor's dtype, on its device) and return the same kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
from scipy.special import xlogy

from ml.device import sizes_for
from ml.strategies import BATCH_METHODS, STRATEGIES, scored_strategy

__all__ = [
    "BATCH_METHODS",
    "STRATEGIES",
    "bald",
    "gaussian_bald",
    "gaussian_entropy",
    "lens_scores",
    "max_entropy",
    "score_pool",
    "scored_strategy",
    "select_batch",
]

ArrayT: TypeAlias = np.ndarray | torch.Tensor
# What ``prob_fn`` of ``score_pool`` may return for one attribute: probs [B, S, C] of a discrete
# attribute, or (means, variances), each [B, S], of a continuous one.
ChunkOutput: TypeAlias = ArrayT | tuple[ArrayT, ArrayT] | Mapping[str, Any]


# --------------------------------------------------------------------------- helpers


COLD_START_MAX_ITEMS = 100_000


def _as_probs(probs: Any, name: str = "probs") -> ArrayT:
    """probs as float64 NumPy or floating torch, checked to be [N, S, C] and non-negative."""
    if isinstance(probs, torch.Tensor):
        p = probs if probs.is_floating_point() else probs.double()
    else:
        p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(
            f"{name}: expected shape [N, S, C] (items, Monte-Carlo samples, classes), got {tuple(p.shape)}"
        )
    if p.shape[1] == 0 or p.shape[2] == 0:
        raise ValueError(f"{name}: need at least one sample and one class, got shape {tuple(p.shape)}")
    # `>= 0` is False for NaN too (and a NaN minimum is NaN), so one test catches both.
    if not bool(p.min() >= 0):
        raise ValueError(f"{name}: probabilities must be non-negative numbers (found a negative value or NaN)")
    return p


def _entropy(p: ArrayT) -> ArrayT:
    """Shannon entropy (nats) over the last axis, with 0·log 0 = 0."""
    if isinstance(p, torch.Tensor):
        return -torch.special.xlogy(p, p).sum(dim=-1)
    return -xlogy(p, p).sum(axis=-1)


def _clamp0(x: ArrayT) -> ArrayT:
    """Clamp rounding negatives of a quantity that is ≥ 0 in exact arithmetic."""
    if isinstance(x, torch.Tensor):
        return x.clamp_min(0.0)
    return np.maximum(x, 0.0)


def _to_numpy(x: ArrayT) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# --------------------------------------------------------------------------- discrete attributes


def bald(probs: ArrayT) -> ArrayT:
    """BALD score of each item: the mutual information between its label and z* (eq. 10).

    ``probs`` [N, S, C]: p_ψ(s = c | z*_t) for S samples z*_t ~ q(z*|z). Returns [N] scores in
    nats, in [0, log C]: high where the samples disagree while each one is confident.
    """
    p = _as_probs(probs)
    if isinstance(p, torch.Tensor):
        # Classes first: the lens's predictive samples are a (C, N, S) block seen as [N, S, C], so
        # this walks memory in order (entropies of a scored chunk 1.7× faster than over the last axis).
        pc = p.permute(2, 0, 1)
        mean_h = -(pc * torch.log(pc.clamp_min(1e-30))).sum(0).mean(1)  # 0·log 0 = 0
        h_mean = _entropy(pc.mean(2).T)
        return _clamp0(h_mean - mean_h)
    h_mean = _entropy(p.mean(1))  # (N,)  H[mean_t p_t], first term of eq. (10)
    mean_h = _entropy(p).mean(1)  # (N,)  mean_t H[p_t], second term of eq. (10)
    return _clamp0(h_mean - mean_h)


def max_entropy(probs: ArrayT) -> ArrayT:
    """Predictive-entropy score of each item, H[mean_t p_t] (eq. 14), the paper's baseline."""
    return _entropy(_as_probs(probs).mean(1))  # (N,)


# --------------------------------------------------------------------------- continuous attributes


def _as_gaussian(means: Any, variances: Any) -> tuple[ArrayT, ArrayT]:
    if isinstance(means, torch.Tensor) or isinstance(variances, torch.Tensor):
        ref = means if isinstance(means, torch.Tensor) else variances
        dtype = ref.dtype if ref.is_floating_point() else torch.float64
        m = torch.as_tensor(means, dtype=dtype, device=ref.device)
        v = torch.as_tensor(variances, dtype=dtype, device=ref.device)
    else:
        m = np.asarray(means, dtype=np.float64)
        v = np.asarray(variances, dtype=np.float64)
    if m.ndim != 2 or tuple(m.shape) != tuple(v.shape):
        raise ValueError(
            f"means and variances: expected equal shapes [N, S] (items, samples), got {tuple(m.shape)} and "
            f"{tuple(v.shape)}"
        )
    if m.shape[1] == 0:
        raise ValueError("means and variances: need at least one Monte-Carlo sample")
    if not bool((v > 0).all()):
        raise ValueError("variances must be positive (found a value ≤ 0 or NaN)")
    return m, v


def _mixture_variance(m: ArrayT, v: ArrayT) -> ArrayT:
    """Variance of the mixture mean_t N(m_t, v_t): mean_t v_t + var_t m_t (law of total variance)."""
    if isinstance(m, torch.Tensor):
        return v.mean(1) + m.var(1, correction=0)
    return v.mean(1) + m.var(1)


def gaussian_bald(means: ArrayT, variances: ArrayT) -> ArrayT:
    """BALD of a continuous attribute whose p_ψ(s|z*_t) are Gaussians N(means_t, variances_t).

    eq. (10) with the mixture moment-matched by one Gaussian: 0.5·log(total variance) −
    mean_t 0.5·log(variances_t). ``means``, ``variances`` [N, S] → [N] scores (nats), ≥ 0,
    and 0 when all samples agree.
    """
    m, v = _as_gaussian(means, variances)
    lib: Any = torch if isinstance(m, torch.Tensor) else np
    total = _mixture_variance(m, v)  # (N,)
    # The 2πe terms of the two Gaussian entropies cancel.
    return _clamp0(0.5 * lib.log(total) - 0.5 * lib.log(v).mean(1))


def gaussian_entropy(means: ArrayT, variances: ArrayT) -> ArrayT:
    """Predictive entropy (eq. 14) of a continuous attribute: 0.5·log(2πe·total variance), [N]."""
    m, v = _as_gaussian(means, variances)
    lib: Any = torch if isinstance(m, torch.Tensor) else np
    return 0.5 * lib.log(2 * math.pi * math.e * _mixture_variance(m, v))


# --------------------------------------------------------------------------- pool scoring


def _score_one(out: Any, strategy: str, n: int, where: str) -> np.ndarray:
    if isinstance(out, tuple | list):
        if len(out) != 2:
            raise ValueError(
                f"{where}: a continuous attribute's output must be (means, variances), got {len(out)} items"
            )
        fn = gaussian_bald if strategy == "bald" else gaussian_entropy
        score = _to_numpy(fn(out[0], out[1]))
    else:
        fn = bald if strategy == "bald" else max_entropy
        score = _to_numpy(fn(out))
    if score.shape != (n,):
        raise ValueError(f"{where}: expected {n} items for this chunk, got {score.shape[0]}")
    return score


def score_pool(
    prob_fn: Callable[[int, int], ChunkOutput],
    n: int,
    chunk: int = 8192,
    strategy: str = "bald",
    *,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Acquisition scores of a pool of ``n`` items, computed chunk by chunk in bounded memory.

    ``prob_fn(start, stop)`` returns the predictive samples of items ``start:stop``: an array
    [B, S, C] of probabilities, a pair (means, variances) [B, S] for a continuous attribute, or a
    dict attribute name → either of those. Each chunk is reduced to [B] scores at once, so memory
    is that of one chunk. Several attributes: sum of their scores. ``strategy="random"`` does not
    call ``prob_fn`` and returns uniform scores drawn with ``seed``. Returns float64 [n].
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    if strategy == "random":
        return _rng(seed).random(int(n))
    scores = np.empty(int(n), dtype=np.float64)
    for start in range(0, int(n), int(chunk)):
        stop = min(int(n), start + int(chunk))
        out = prob_fn(start, stop)
        if isinstance(out, Mapping):
            if not out:
                raise ValueError(f"prob_fn({start}, {stop}) returned an empty dict")
            total = np.zeros(stop - start)
            for name, value in out.items():
                total += _score_one(value, strategy, stop - start, f"prob_fn({start}, {stop})[{name!r}]")
            scores[start:stop] = total
        else:
            scores[start:stop] = _score_one(out, strategy, stop - start, f"prob_fn({start}, {stop})")
    return scores


def lens_scores(
    lens: Any,
    Z: Any,
    strategy: str = "bald",
    n_samples: int = 32,
    attribute: str | None = None,
    chunk: int | None = None,
    seed: int | None = 0,
    draws: str = "qmc",
) -> np.ndarray:
    """Acquisition score of every row of Z under a fitted lens (section 3): BALD (eq. 10), max-entropy
    or random, float64 [N], streamed through ``score_pool`` in chunks of ``chunk`` items (None: the
    size measured best for the lens's device, ``ml.device.sizes_for``). ``draws``:
    the Monte-Carlo noise of the predictive samples (``LensModule.predictive_columns``).

    ``lens`` is anything with ``attributes_`` and ``predictive_samples(Z, n_samples)`` (the fitted
    ``ml.lens.InterpretableLens``): acquisition reads the lens's predictive distribution, and the
    lens knows nothing of acquisition. Several attributes: the sum of their scores, or one
    ``attribute`` only. ``seed`` seeds the Monte-Carlo draws, the same for every chunk (and the random
    strategy); None leaves torch's generator as it is.
    """
    names = [a.name for a in lens.attributes_] if hasattr(lens, "attributes_") else []
    if not names:
        raise ValueError("this lens is not fitted yet: call fit(Z, S) first")
    if attribute is not None and attribute not in names:
        raise ValueError(f"unknown attribute {attribute!r}; known: {names}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    Z = np.asarray(Z)

    def prob_fn(start: int, stop: int) -> Mapping[str, Any]:
        if strategy != "random" and seed is not None:
            # Every chunk draws the same noise (common random numbers): items are compared on one
            # set of draws, so the ranking does not depend on how the pool was cut into chunks.
            torch.manual_seed(seed)
        out = lens.predictive_samples(Z[start:stop], n_samples, draws)
        return {k: v for k, v in out.items() if attribute is None or k == attribute}

    if chunk is None:
        chunk = sizes_for(torch.device(getattr(lens, "device_", "cpu"))).score_chunk
    return score_pool(prob_fn, len(Z), chunk=chunk, strategy=strategy, seed=seed)


# --------------------------------------------------------------------------- batches


def _allowed_mask(exclude: Any, n: int) -> np.ndarray:
    allowed = np.ones(n, dtype=bool)
    if exclude is None:
        return allowed
    ex = np.asarray(exclude)
    if ex.dtype == bool:
        if ex.shape != (n,):
            raise ValueError(f"exclude: a boolean mask must have shape ({n},), got {ex.shape}")
        return ~ex
    if ex.size == 0:
        return allowed
    if ex.ndim != 1 or ex.dtype.kind not in "iu":
        raise ValueError(
            f"exclude: expected a boolean mask or a 1-d array of indices, got dtype {ex.dtype}, shape {ex.shape}"
        )
    if ex.min() < 0 or ex.max() >= n:
        raise ValueError(f"exclude: indices must lie in 0..{n - 1}")
    allowed[ex] = False
    return allowed


def _as_scores(scores: Any) -> np.ndarray:
    s = _to_numpy(scores)
    if s.ndim != 1:
        raise ValueError(f"scores: expected a 1-d array [N], got shape {s.shape} (batchbald takes probs [N, S, C])")
    if np.isnan(s).any():
        raise ValueError("scores: NaN found")
    return s


def _require_weights(s: np.ndarray, method: str) -> None:
    """Scores used as sampling or clustering weights must be finite and non-negative."""
    if (s < 0).any() or np.isinf(s).any():
        raise ValueError(f"scores: the {method} batch weights items by score and needs finite non-negative scores")


def _topk(scores: np.ndarray, k: int, allowed: np.ndarray) -> np.ndarray:
    idx = np.flatnonzero(allowed)
    # Stable sort: equal scores keep pool order, so the result is reproducible.
    return idx[np.argsort(-scores[idx], kind="stable")[:k]]


def _power(scores: np.ndarray, k: int, allowed: np.ndarray, beta: float, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(allowed)
    s = scores[idx]
    _require_weights(s, "power")
    gumbel = rng.gumbel(size=s.size)
    if beta == 0:
        keys = gumbel
    else:
        with np.errstate(divide="ignore"):
            # Gumbel-top-k on β·log s samples without replacement with probability ∝ s^β
            # (Kirsch et al. 2023, "power" acquisition).
            keys = beta * np.log(s) + gumbel
    # Items of score 0 have key −inf; a random tie-break fills the batch from them only when
    # fewer than k items have a positive score.
    order = np.lexsort((rng.random(s.size), -keys))
    return idx[order[:k]]


def _diverse(
    scores: np.ndarray,
    k: int,
    allowed: np.ndarray,
    features: np.ndarray,
    prefilter: int,
    rng: np.random.Generator,
) -> np.ndarray:
    from sklearn.cluster import KMeans

    idx = np.flatnonzero(allowed)
    # The prefilter keeps the informative items; k-means weighted by the score then places one
    # centre per batch slot among them, so the batch covers k regions instead of piling into the
    # single most ambiguous one (Zhdanov 2019, "Diverse mini-batch active learning").
    cand = idx[np.argsort(-scores[idx], kind="stable")[: max(k, prefilter * k)]]
    X = _standardised(features[cand])
    w = scores[cand] + 1e-12
    km = KMeans(n_clusters=k, n_init=3, random_state=int(rng.integers(2**31 - 1))).fit(X, sample_weight=w)
    chosen: list[int] = []
    taken = np.zeros(cand.size, bool)
    dist = km.transform(X)  # [candidates, k] distances to the centres
    for c in range(k):
        # The candidate nearest each centre (an empty or already-claimed centre takes the next nearest).
        for j in np.argsort(dist[:, c], kind="stable"):
            if not taken[j]:
                taken[j] = True
                chosen.append(j)
                break
    out = cand[np.asarray(chosen, dtype=np.int64)]
    return out[np.argsort(-scores[out], kind="stable")]


def _standardised(X: np.ndarray) -> np.ndarray:
    X = X.astype(np.float64)
    return (X - X.mean(0)) / np.where(X.std(0) > 1e-12, X.std(0), 1.0)


def _density(X: np.ndarray, neighbours: int) -> np.ndarray:
    """1 / mean distance to the nearest ``neighbours`` rows of X (TypiClust's typicality); 1 when alone."""
    from sklearn.neighbors import NearestNeighbors

    m = min(neighbours, len(X) - 1)
    if m < 1:
        return np.ones(len(X))
    dist, _ = NearestNeighbors(n_neighbors=m + 1).fit(X).kneighbors(X)
    # The floor keeps exact duplicates (distance 0) finite: dense, not infinitely so.
    return 1.0 / np.maximum(dist[:, 1:].mean(1), 1e-6)


def _cover(
    scores: np.ndarray,
    k: int,
    allowed: np.ndarray,
    features: np.ndarray,
    neighbours: int,
    rng: np.random.Generator,
) -> np.ndarray:
    from sklearn.cluster import KMeans

    idx = np.flatnonzero(allowed)
    X = _standardised(features)
    # One region per item already covered plus one per batch slot (TypiClust, Hacohen et al. 2022):
    # with few labels, a batch that reaches regions no label speaks for yet teaches the lens more
    # than one that piles onto ambiguous items next to labelled ones.
    # (No more regions than distinct points: duplicates cannot be split.)
    n_regions = min(len(np.unique(X, axis=0)), int((~allowed).sum()) + k)
    km = KMeans(n_clusters=n_regions, n_init=1, random_state=int(rng.integers(2**31 - 1))).fit(X)
    region = km.labels_
    size = np.bincount(region, minlength=n_regions)
    covered = np.bincount(region[~allowed], minlength=n_regions)
    # Uncovered regions first, then the least covered per item; larger regions first among equals.
    order = np.lexsort((-size, covered / np.maximum(size, 1)))
    chosen: list[int] = []
    for r in order:
        members = idx[region[idx] == r]
        if members.size == 0:
            continue
        # Informativeness × density (Settles & Craven 2008): an informative item that is also
        # typical of its region, not an outlier the score happens to rate highly.
        density = _density(X[members], neighbours)
        # Highest score × density; among equals (e.g. all scores 0) the densest item.
        chosen.append(int(members[np.lexsort((density, scores[members] * density))[-1]]))
        if len(chosen) == k:
            break
    if len(chosen) < k:  # the free items sit in fewer than k regions: the best-scored others fill up
        rest = np.setdiff1d(idx, chosen)
        chosen += rest[np.argsort(-scores[rest], kind="stable")[: k - len(chosen)]].tolist()
    out = np.asarray(chosen, dtype=np.int64)
    return out[np.argsort(-scores[out], kind="stable")]


def _batchbald(
    probs: np.ndarray,
    k: int,
    allowed: np.ndarray,
    rng: np.random.Generator,
    candidate_pool: int,
    num_configs: int,
) -> np.ndarray:
    """Greedy BatchBALD (Kirsch et al. 2019) on probs [N, S, C] of one attribute.

    Adding item c to the selected set A gains I(y_c; ω | y_A) = H(y_c | y_A) − E_ω H(y_c | ω) (the
    H(y_A) term of the joint entropy is the same for every candidate). H(y_c | y_A) is averaged
    over configurations ŷ_A of the selected labels, each carried as its posterior over the S
    samples, P(ω_t | ŷ_A): enumerated exactly with weights p(ŷ_A) while there are at most
    ``num_configs`` of them, afterwards ``num_configs`` configurations drawn from p(y_A) (weights
    1/M), extended by ancestral sampling. Memory: S·num_configs + a chunk of candidates.
    """
    _, n_samples, n_classes = probs.shape
    cond_ent = _entropy(probs).mean(1)  # (N,)  E_ω H(y|ω)
    idx = np.flatnonzero(allowed)
    # Only items with a high BALD score can win a step, so the greedy loop runs on the top ones.
    first = bald(probs[idx])
    cand = idx[np.argsort(-first, kind="stable")[: max(candidate_pool, k)]]
    cand_p = probs[cand]  # (P, S, C)
    cand_ce = cond_ent[cand]  # (P,)

    post = np.full((n_samples, 1), 1.0 / n_samples)  # (S, K)  P(ω_t | config)
    weight = np.ones(1)  # (K,)  p(config) (exact) or 1/M (sampled)
    sampled = False
    available = np.ones(cand.size, dtype=bool)
    chosen: list[int] = []
    for _ in range(min(k, cand.size)):
        gains = np.full(cand.size, -np.inf)
        open_idx = np.flatnonzero(available)
        block = max(1, (1 << 22) // (post.shape[1] * n_classes))
        for b in range(0, open_idx.size, block):
            j = open_idx[b : b + block]
            q = np.matmul(post.T[None], cand_p[j])  # (B, K, C)  p(y_c | config)
            gains[j] = _entropy(q) @ weight - cand_ce[j]
        best = int(np.argmax(gains))
        chosen.append(best)
        available[best] = False
        pj = cand_p[best]  # (S, C)
        if not sampled and weight.size * n_classes > num_configs:
            # Too many joint configurations to enumerate: draw M of them from p(y_A).
            pick = rng.choice(weight.size, size=num_configs, p=weight / weight.sum())
            post = post[:, pick]
            weight = np.full(num_configs, 1.0 / num_configs)
            sampled = True
        if not sampled:
            joint = post[:, :, None] * pj[:, None, :]  # (S, K, C)
            q = joint.sum(0)  # (K, C)  p(y_best | config)
            w = (weight[:, None] * q).reshape(-1)
            keep = w > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                post = (joint / q[None]).reshape(n_samples, -1)[:, keep]
            weight = w[keep]
        else:
            q = post.T @ pj  # (M, C)
            q /= q.sum(1, keepdims=True)
            y = (q.cumsum(1) < rng.random((q.shape[0], 1))).sum(1).clip(max=n_classes - 1)
            post = post * pj[:, y]  # (S, M)
            post /= post.sum(0, keepdims=True)
    return cand[np.asarray(chosen, dtype=np.int64)]


def select_batch(
    scores_or_probs: ArrayT | Sequence[float],
    k: int,
    method: str = "topk",
    *,
    seed: int | np.random.Generator | None = None,
    beta: float = 1.0,
    exclude: np.ndarray | Sequence[int] | None = None,
    candidate_pool: int = 256,
    num_configs: int = 2048,
    features: Any = None,
    prefilter: int = 10,
    neighbours: int = 20,
) -> np.ndarray:
    """Indices of a batch of ``k`` items to hand to several experts, without near-duplicates.

    * ``"topk"``: the k highest scores [N] (ties: lower index first).
    * ``"power"``: k distinct items sampled with probability ∝ score^β (stochastic batch
      acquisition, Kirsch et al. 2023); β = 0 is uniform, large β approaches top-k.
    * ``"batchbald"``: greedy BatchBALD on probs [N, S, C] of one attribute; an item that
      repeats the information of items already in the batch gains little and is passed over.
      The greedy runs on the ``candidate_pool`` items of highest BALD; joint configurations are
      enumerated exactly up to ``num_configs``, then sampled (``seed``).
    * ``"diverse"``: the ``prefilter``·k highest scores, clustered into k groups by k-means on
      ``features`` [N, D] (each item weighted by its score); the item nearest each centre
      (Zhdanov 2019). Use the representation the lens sees (z) as ``features``.
    * ``"cover"``: k-means on ``features`` [N, D] into (excluded items + k) regions; one item from
      each of the k least covered regions (no excluded item first, larger first), the one of
      highest score × density, density = 1 / mean distance to its ``neighbours`` nearest
      unexcluded items of the region (TypiClust, Hacohen et al. 2022; information density,
      Settles & Craven 2008). Excluded items count as covering their region, so pass the
      labelled (and leased) items as ``exclude``. k-means costs O(N · regions) per iteration.

    ``exclude``: a boolean mask [N] or indices of items never to pick (e.g. leased or labelled).
    Returns int64 indices, best first, of length min(k, number of items not excluded).
    """
    if method not in BATCH_METHODS:
        raise ValueError(f"method must be one of {BATCH_METHODS}, got {method!r}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if not (isinstance(beta, int | float) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number ≥ 0, got {beta!r}")
    if candidate_pool < 1 or num_configs < 1:
        raise ValueError("candidate_pool and num_configs must be positive")
    k = int(k)
    rng = _rng(seed)
    if method == "batchbald":
        p = _as_probs(scores_or_probs)
        probs = p.detach().to("cpu", torch.float64).numpy() if isinstance(p, torch.Tensor) else p
        allowed = _allowed_mask(exclude, probs.shape[0])
        if k == 0 or not allowed.any():
            return np.empty(0, dtype=np.int64)
        return _batchbald(probs, k, allowed, rng, int(candidate_pool), int(num_configs))
    scores = _as_scores(scores_or_probs)
    allowed = _allowed_mask(exclude, scores.shape[0])
    if method in ("diverse", "cover"):
        if features is None:
            raise ValueError(f"method {method!r} needs features [N, D] (e.g. the pool's z)")
        feats = _to_numpy(features)
        if feats.ndim != 2 or feats.shape[0] != scores.shape[0]:
            raise ValueError(f"features: expected shape [{scores.shape[0]}, D], got {tuple(feats.shape)}")
        if not np.isfinite(feats).all():
            raise ValueError("features: NaN or infinite values found")
        if isinstance(prefilter, bool) or not isinstance(prefilter, int | np.integer) or prefilter < 1:
            raise ValueError(f"prefilter must be a positive integer, got {prefilter!r}")
        if isinstance(neighbours, bool) or not isinstance(neighbours, int | np.integer) or neighbours < 1:
            raise ValueError(f"neighbours must be a positive integer, got {neighbours!r}")
        _require_weights(scores, method)
        if k == 0:
            return np.empty(0, dtype=np.int64)
        if allowed.sum() <= k:  # nothing to choose: every free item, best first
            return _topk(scores, k, allowed).astype(np.int64)
        if method == "cover":
            return _cover(scores, k, allowed, feats, int(neighbours), rng)
        return _diverse(scores, k, allowed, feats, int(prefilter), rng).astype(np.int64)
    out = _topk(scores, k, allowed) if method == "topk" else _power(scores, k, allowed, float(beta), rng)
    return out.astype(np.int64)


def cold_start_order(Z: np.ndarray, k: int, *, seed: int = 0, max_items: int = COLD_START_MAX_ITEMS) -> np.ndarray:
    """The first ``k`` items to label before any lens exists: one typical item per k-means region of z.

    TypiClust (Hacohen et al. 2022) on the base representation: ``select_batch``'s ``"cover"`` rule
    with equal scores, so the densest item of each of k regions, larger regions first. With few labels
    this covers the data where a random draw leaves regions out (measured in the queue's tests). Pools
    larger than ``max_items`` are ranked within a seeded random subsample of that size (k-means and the
    per-region densities cost O(N) each). Returns int64 row indices of Z, best first.
    """
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or not np.isfinite(Z).all():
        raise ValueError(f"Z must be a finite [N, d] array, got shape {Z.shape}")
    rng = np.random.default_rng(seed)
    rows = np.arange(len(Z)) if len(Z) <= max_items else np.sort(rng.choice(len(Z), max_items, replace=False))
    picked = select_batch(np.ones(len(rows)), min(int(k), len(rows)), "cover", features=Z[rows], seed=rng)
    return rows[picked].astype(np.int64)


# Bounds of a served round's ranking (k-means costs O(items · regions) per iteration, regions = covered
# items + k): measured on one thread, 100,000 items with 5,000 covered took 50 s unbounded; within these
# bounds a round takes about a second whatever the pool.
QUEUE_BATCH_MAX = 1000  # items per round
QUEUE_MAX_ITEMS = 20_000  # items the round is ranked within (a random sample beyond)
QUEUE_MAX_COVERED = 1000  # covered items that mark their regions (a random sample beyond)


def queue_batch(
    rule: str,
    scores: np.ndarray,
    Z: np.ndarray,
    k: int,
    *,
    covered: np.ndarray | None = None,
    seed: int = 0,
    max_items: int = QUEUE_MAX_ITEMS,
    max_covered: int = QUEUE_MAX_COVERED,
) -> np.ndarray:
    """The next labelling round of a queue that follows a batch rule: ``k`` row indices, best first.

    ``rule`` is one of ``ml.strategies.QUEUE_BATCH_RULES``: ``cover``, ``power`` and ``diverse`` are
    ``select_batch``'s rules on the per-item ``scores`` (BALD) with z as the features; ``typiclust`` is
    ``cover`` with equal scores (typical items of uncovered regions of z, informativeness ignored).
    ``covered`` [N] marks items already labelled or handed out: never picked, and for ``cover`` and
    ``typiclust`` they count as covering their region. A round holds at most ``QUEUE_BATCH_MAX`` items
    and is ranked within at most ``max_items`` items, of which at most ``max_covered`` covered ones
    (seeded random samples beyond): k-means costs O(items · regions) per iteration.
    """
    from ml.strategies import QUEUE_BATCH_RULES

    if rule not in QUEUE_BATCH_RULES:
        raise ValueError(f"rule must be one of {QUEUE_BATCH_RULES}, got {rule!r}")
    scores = _as_scores(scores)
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] != scores.shape[0] or not np.isfinite(Z).all():
        raise ValueError(f"Z must be a finite [{scores.shape[0]}, d] array, got shape {Z.shape}")
    cov = np.zeros(len(Z), bool) if covered is None else np.asarray(covered, bool)
    if cov.shape != (len(Z),):
        raise ValueError(f"covered must be a boolean mask of {len(Z)} items, got shape {cov.shape}")
    rng = np.random.default_rng(seed)
    free, taken = np.flatnonzero(~cov), np.flatnonzero(cov)
    if len(taken) > max_covered:
        taken = rng.choice(taken, max_covered, replace=False)
    if len(free) > max_items - len(taken):
        free = rng.choice(free, max(1, max_items - len(taken)), replace=False)
    rows = np.sort(np.concatenate([taken, free]))
    k = min(int(k), QUEUE_BATCH_MAX)
    method = "cover" if rule == "typiclust" else rule
    s = np.ones(len(rows)) if rule == "typiclust" else scores[rows]
    picked = select_batch(
        s, min(int(k), int((~cov[rows]).sum())), method, features=Z[rows], exclude=cov[rows], seed=rng
    )
    return rows[picked].astype(np.int64)
