"""ml.acquisition: BALD (eq. 10), predictive entropy (eq. 14), batches and pool scoring."""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest
import torch

from ml.acquisition import (
    BATCH_METHODS,
    STRATEGIES,
    bald,
    gaussian_bald,
    gaussian_entropy,
    max_entropy,
    score_pool,
    select_batch,
)


def _dirichlet_probs(n: int = 50, s: int = 16, c: int = 7, seed: int = 0, alpha: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(c, alpha), size=(n, s))


def _naive_scores(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BALD and predictive entropy by explicit loops over items, samples and classes."""
    n, s, c = probs.shape
    bald_out, ent_out = np.zeros(n), np.zeros(n)
    for i in range(n):
        mean = [sum(probs[i, t, k] for t in range(s)) / s for k in range(c)]
        h_mean = -sum(m * math.log(m) for m in mean if m > 0)
        mean_h = 0.0
        for t in range(s):
            mean_h += -sum(p * math.log(p) for p in probs[i, t] if p > 0) / s
        bald_out[i], ent_out[i] = h_mean - mean_h, h_mean
    return bald_out, ent_out


def _two_camp_item(split: np.ndarray, conf: float, c: int = 3) -> np.ndarray:
    """[S, C] probabilities: samples in ``split`` say class 0 with ``conf``, the others class 1."""
    p = np.full((split.size, c), (1 - conf) / (c - 1))
    p[split, 0] = conf
    p[~split, 1] = conf
    return p


# --------------------------------------------------------------------------- bald / max_entropy


def test_bald_and_max_entropy_equal_a_direct_evaluation_of_eq_10_and_14():
    probs = _dirichlet_probs()
    want_bald, want_ent = _naive_scores(probs)
    got_bald, got_ent = bald(probs), max_entropy(probs)
    assert got_bald.dtype == np.float64 and got_bald.shape == (50,)
    np.testing.assert_allclose(got_bald, want_bald, atol=1e-6)
    np.testing.assert_allclose(got_ent, want_ent, atol=1e-6)
    assert want_bald.std() > 0.01  # the comparison is not between constants


def test_torch_input_gives_torch_output_equal_to_numpy():
    probs = _dirichlet_probs(seed=1)
    t = torch.from_numpy(probs)
    b, e = bald(t), max_entropy(t)
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float64 and b.shape == (50,)
    np.testing.assert_allclose(b.numpy(), bald(probs), atol=1e-12)
    np.testing.assert_allclose(e.numpy(), max_entropy(probs), atol=1e-12)
    b32 = bald(t.float())
    assert b32.dtype == torch.float32
    np.testing.assert_allclose(b32.numpy(), bald(probs), atol=1e-5)


def test_bald_is_bounded_by_zero_max_entropy_and_log_c():
    for seed, alpha in [(2, 0.05), (3, 0.5), (4, 5.0)]:
        probs = _dirichlet_probs(n=200, seed=seed, alpha=alpha)
        b, e = bald(probs), max_entropy(probs)
        assert (b >= 0).all()
        assert (b <= e + 1e-12).all()
        assert (b <= math.log(7) + 1e-12).all()
        assert (e <= math.log(7) + 1e-12).all()


def test_bald_is_zero_when_all_samples_agree_even_with_hard_zeros():
    one = _dirichlet_probs(n=30, s=1, seed=5)
    agree = np.repeat(one, 16, axis=1)  # every z*_t gives the same p_t
    onehot = np.zeros((4, 16, 7))
    onehot[:, :, 2] = 1.0  # 0·log 0 must count as 0, not NaN
    np.testing.assert_allclose(bald(agree), 0.0, atol=1e-12)
    np.testing.assert_allclose(bald(onehot), 0.0, atol=1e-12)
    np.testing.assert_allclose(max_entropy(onehot), 0.0, atol=1e-12)
    np.testing.assert_allclose(bald(torch.from_numpy(agree)).numpy(), 0.0, atol=1e-12)


def test_bald_of_confident_disagreement_is_log_2():
    # Half the samples say class 0 for sure, half class 1: I(s; z*) = log 2 exactly.
    p = np.zeros((1, 10, 3))
    p[0, :5, 0] = 1.0
    p[0, 5:, 1] = 1.0
    np.testing.assert_allclose(bald(p), [math.log(2)], atol=1e-12)
    np.testing.assert_allclose(max_entropy(p), [math.log(2)], atol=1e-12)


def test_bald_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[N, S, C\]"):
        bald(np.ones((4, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        bald(-np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        max_entropy(np.full((2, 3, 4), np.nan))


# --------------------------------------------------------------------------- continuous attributes


def test_gaussian_bald_equals_a_hand_computation():
    means = np.array([[0.0, 2.0], [1.0, 1.0]])
    variances = np.array([[1.0, 3.0], [0.5, 2.0]])
    # Item 0: total = mean(1, 3) + var(0, 2) = 2 + 1 = 3; mean log var = (0 + log 3)/2.
    # Item 1: total = 1.25 + 0; mean log var = (log 0.5 + log 2)/2 = 0.
    want = np.array([0.5 * math.log(3) - 0.25 * math.log(3), 0.5 * math.log(1.25)])
    np.testing.assert_allclose(gaussian_bald(means, variances), want, atol=1e-12)
    want_h = 0.5 * np.log(2 * math.pi * math.e * np.array([3.0, 1.25]))
    np.testing.assert_allclose(gaussian_entropy(means, variances), want_h, atol=1e-12)
    t = gaussian_bald(torch.from_numpy(means), torch.from_numpy(variances))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), want, atol=1e-12)


def test_gaussian_bald_is_zero_when_samples_agree_and_grows_with_disagreement():
    rng = np.random.default_rng(6)
    var = np.full((5, 8), 0.3)
    same = np.repeat(rng.normal(size=(5, 1)), 8, axis=1)
    np.testing.assert_allclose(gaussian_bald(same, var), 0.0, atol=1e-12)
    spread = [gaussian_bald(rng.normal(scale=s, size=(1, 8)), var[:1])[0] for s in (0.1, 1.0, 10.0)]
    assert spread[0] < spread[1] < spread[2]
    with pytest.raises(ValueError, match="positive"):
        gaussian_bald(same, np.zeros((5, 8)))
    with pytest.raises(ValueError, match="equal shapes"):
        gaussian_bald(same, var[:, :3])


# --------------------------------------------------------------------------- select_batch


def test_topk_is_the_argsort_and_respects_exclude():
    scores = np.random.default_rng(7).random(100)
    got = select_batch(scores, 10)
    np.testing.assert_array_equal(got, np.argsort(-scores)[:10])
    assert got.dtype == np.int64
    best = got[:3]
    mask = np.zeros(100, bool)
    mask[best] = True
    np.testing.assert_array_equal(select_batch(scores, 7, exclude=mask), got[3:10])
    np.testing.assert_array_equal(select_batch(scores, 7, exclude=best), got[3:10])
    assert select_batch(scores, 500).size == 100
    assert select_batch(scores, 5, exclude=np.arange(98)).size == 2


@pytest.mark.parametrize("method", ["power", "batchbald"])
def test_stochastic_methods_are_deterministic_with_a_seed(method):
    probs = _dirichlet_probs(n=120, s=12, c=4, seed=8)
    arg = bald(probs) if method == "power" else probs
    # num_configs=16 forces BatchBALD into its sampled-configuration regime after two picks.
    kw = {"num_configs": 16} if method == "batchbald" else {}
    a = select_batch(arg, 8, method, seed=3, **kw)
    b = select_batch(arg, 8, method, seed=3, **kw)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 8


def test_power_sampling_returns_distinct_items_and_follows_score_to_the_beta():
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    firsts = np.array([select_batch(scores, 1, "power", seed=s)[0] for s in range(4000)])
    freq = np.bincount(firsts, minlength=4) / firsts.size
    # The first pick of Gumbel-top-k is a draw ∝ score^β (β = 1).
    np.testing.assert_allclose(freq, scores / scores.sum(), atol=0.03)
    firsts2 = np.array([select_batch(scores, 1, "power", seed=s, beta=2.0)[0] for s in range(4000)])
    freq2 = np.bincount(firsts2, minlength=4) / firsts2.size
    np.testing.assert_allclose(freq2, scores**2 / (scores**2).sum(), atol=0.03)

    pool = np.linspace(0.01, 1.0, 200)
    picked = [select_batch(pool, 20, "power", seed=s) for s in range(100)]
    assert all(len(set(p.tolist())) == 20 for p in picked)
    mean_picked = np.mean([pool[p].mean() for p in picked])
    assert mean_picked > pool.mean() + 0.1  # prefers high scores...
    assert len(set(np.concatenate(picked).tolist())) > 100  # ...but does not always pick the same


def test_power_sampling_never_picks_excluded_and_fills_with_zero_scores_last():
    scores = np.array([0.0, 0.0, 5.0, 1.0, 0.0])
    for s in range(50):
        got = select_batch(scores, 3, "power", seed=s, exclude=[3])
        assert 3 not in got
        assert got[0] == 2 and set(got[1:]) <= {0, 1, 4}


def test_diverse_batch_takes_one_item_per_region_where_topk_piles_into_one():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 3)) * 10
    feats = np.concatenate([c + rng.normal(size=(40, 3)) for c in centres])  # 5 regions of 40 items
    # Region 0 is the most informative: top-k takes all five from it.
    scores = np.where(np.arange(200) < 40, 1.0, 0.5) + rng.random(200) * 0.01
    assert set(select_batch(scores, 5, "topk") // 40) == {0}
    got = select_batch(scores, 5, "diverse", features=feats, prefilter=40, seed=0)
    assert sorted((got // 40).tolist()) == [0, 1, 2, 3, 4]
    # The same seed gives the same batch; k = 0 gives none.
    np.testing.assert_array_equal(got, select_batch(scores, 5, "diverse", features=feats, prefilter=40, seed=0))
    assert select_batch(scores, 0, "diverse", features=feats).size == 0
    # Best first, distinct, never excluded.
    assert np.all(np.diff(scores[got]) <= 0) and len(set(got.tolist())) == 5
    excl = select_batch(scores, 5, "diverse", features=feats, prefilter=40, seed=0, exclude=np.arange(40))
    assert excl.min() >= 40 and len(set(excl.tolist())) == 5


@pytest.mark.parametrize("method", ["diverse", "cover"])
def test_feature_batches_reject_missing_or_misshapen_features_and_negative_scores(method: str):
    scores = np.ones(10)
    with pytest.raises(ValueError, match=f"'{method}' needs features"):
        select_batch(scores, 2, method)
    with pytest.raises(ValueError, match=r"features: expected shape \[10, D\]"):
        select_batch(scores, 2, method, features=np.ones((9, 2)))
    with pytest.raises(
        ValueError, match=f"the {method} batch weights items by score and needs finite non-negative scores"
    ):
        select_batch(-scores, 2, method, features=np.ones((10, 2)))
    assert select_batch(scores, 20, method, features=np.eye(10)).size == 10


def test_diverse_batch_rejects_a_bad_prefilter():
    with pytest.raises(ValueError, match="prefilter"):
        select_batch(np.ones(10), 2, "diverse", features=np.ones((10, 2)), prefilter=0)


def test_cover_batch_reaches_regions_no_label_covers_where_topk_stays_by_the_labels():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 3)) * 10
    feats = np.concatenate([c + rng.normal(size=(50, 3)) for c in centres])  # 4 regions of 50 items
    # Labels cover region 0 only, and the scores are highest there: top-k stays in region 0.
    labelled = np.arange(200) < 10
    scores = np.where(np.arange(200) < 50, 1.0, 0.3) + rng.random(200) * 0.01
    assert set(select_batch(scores, 3, "topk", exclude=labelled) // 50) == {0}
    got = select_batch(scores, 3, "cover", features=feats, exclude=labelled, seed=0)
    # Items from the uncovered blobs, spread over more than one; none next to the labels.
    blobs = set((got // 50).tolist())
    assert 0 not in blobs and len(blobs) >= 2 and len(set(got.tolist())) == 3
    np.testing.assert_array_equal(got, select_batch(scores, 3, "cover", features=feats, exclude=labelled, seed=0))
    assert np.all(np.diff(scores[got]) <= 0)
    # Within a region, informativeness × density: of equally scored items a typical one wins over
    # the outlier (listed first, where a bare argmax of the scores would land), and a much higher
    # score wins over density.
    one = np.concatenate([[[6.0, 6.0]], rng.normal(size=(30, 2))])
    flat = np.ones(31)
    pick = select_batch(flat, 1, "cover", features=one, seed=0)[0]
    radius = np.linalg.norm(one[1:] - one[1:].mean(0), axis=1)
    assert pick != 0 and np.linalg.norm(one[pick] - one[1:].mean(0)) < np.median(radius)
    peak = flat.copy()
    peak[5] = 50.0
    assert select_batch(peak, 1, "cover", features=one, seed=0)[0] == 5
    # All scores 0: the densest item, not the first.
    assert select_batch(np.zeros(31), 1, "cover", features=one, seed=0)[0] != 0
    # More slots than free items: every free item, best first; k = 0: none.
    assert sorted(select_batch(scores, 300, "cover", features=feats, exclude=labelled).tolist()) == list(range(10, 200))
    assert select_batch(scores, 0, "cover", features=feats).size == 0


def test_cover_batch_takes_the_larger_uncovered_region_first():
    # Three points of the space, each repeated: one region each. C is labelled; A (40 items) and
    # B (10 items, higher scores) are not: a one-item batch comes from A.
    feats = np.concatenate([np.zeros((40, 2)), np.full((10, 2), 5.0), np.full((10, 2), -5.0)])
    scores = np.concatenate([np.full(40, 0.1), np.full(10, 1.0), np.full(10, 0.5)])
    assert select_batch(scores, 1, "cover", features=feats, exclude=np.arange(50, 60), seed=0)[0] < 40


def test_cover_batch_fills_up_when_the_free_items_sit_in_few_regions():
    # Two points of the space: P (items 0–7, half labelled) and Q (items 8–9, none labelled).
    feats = np.concatenate([np.zeros((8, 2)), np.full((2, 2), 5.0)])
    scores = np.array([0, 0, 0, 0, 0.9, 0.8, 0.7, 0.6, 0.1, 0.2])
    assert set(select_batch(scores, 4, "topk", exclude=[0, 1, 2, 3]).tolist()) == {4, 5, 6, 7}
    got = select_batch(scores, 4, "cover", features=feats, exclude=[0, 1, 2, 3], seed=0)
    # Q's best (uncovered first), P's best, then the best-scored of the rest.
    assert got.tolist() == [4, 5, 6, 9]


def test_cover_batch_rejects_a_bad_neighbour_count():
    with pytest.raises(ValueError, match="neighbours must be a positive integer, got 0"):
        select_batch(np.ones(10), 2, "cover", features=np.ones((10, 2)), neighbours=0)


def _naive_batchbald(probs: np.ndarray, k: int) -> list[int]:
    """Greedy BatchBALD with the joint entropy H(y_1..y_n) by enumerating all configurations."""
    n, s, c = probs.shape
    cond = [-(probs[i] * np.log(probs[i])).sum(1).mean() for i in range(n)]
    chosen: list[int] = []
    for _ in range(k):
        best, best_val = -1, -np.inf
        for cand in range(n):
            if cand in chosen:
                continue
            items = [*chosen, cand]
            h = 0.0
            for config in itertools.product(range(c), repeat=len(items)):
                p = np.mean([np.prod([probs[i, t, y] for i, y in zip(items, config, strict=True)]) for t in range(s)])
                h -= p * math.log(p)
            val = h - sum(cond[i] for i in items)
            if val > best_val:
                best, best_val = cand, val
        chosen.append(best)
    return chosen


def test_batchbald_matches_brute_force_joint_entropy():
    differs_from_topk = 0
    for seed in (9, 10, 11):
        probs = _dirichlet_probs(n=12, s=6, c=3, seed=seed, alpha=0.7)
        got = select_batch(probs, 4, "batchbald")
        np.testing.assert_array_equal(got, _naive_batchbald(probs, 4))
        differs_from_topk += not np.array_equal(got, select_batch(bald(probs), 4))
    assert differs_from_topk >= 2  # the check tells BatchBALD from top-k BALD


def test_batchbald_skips_duplicates_that_topk_takes():
    rng = np.random.default_rng(10)
    s = 20
    camp = np.arange(s) < s // 2
    dupes = [_two_camp_item(camp, 0.99) for _ in range(10)]  # the top item, ten times
    others = [_two_camp_item(rng.random(s) < 0.5, 0.9) for _ in range(40)]
    probs = np.stack(dupes + others)  # (50, 20, 3)
    top = select_batch(bald(probs), 5)
    assert set(top.tolist()) <= set(range(10))  # top-k: five copies of one item
    for seed in range(3):
        batch = select_batch(probs, 5, "batchbald", seed=seed, exclude=[49])
        assert sum(int(i) < 10 for i in batch) == 1
        assert 49 not in batch
    # The sampled-configuration estimator reaches the same decision.
    batch = select_batch(probs, 5, "batchbald", seed=0, num_configs=8)
    assert sum(int(i) < 10 for i in batch) == 1


def test_select_batch_rejects_bad_arguments():
    scores = np.ones(5)
    with pytest.raises(ValueError, match="method"):
        select_batch(scores, 2, "greedy")
    with pytest.raises(ValueError, match="k must"):
        select_batch(scores, -1)
    with pytest.raises(ValueError, match=r"\[N, S, C\]"):
        select_batch(scores, 2, "batchbald")
    with pytest.raises(ValueError, match="1-d"):
        select_batch(np.ones((5, 2, 2)), 2, "topk")
    with pytest.raises(ValueError, match="exclude"):
        select_batch(scores, 2, exclude=np.ones(4, bool))
    with pytest.raises(ValueError, match="exclude"):
        select_batch(scores, 2, exclude=[7])
    with pytest.raises(ValueError, match="non-negative"):
        select_batch(np.array([1.0, -1.0]), 1, "power")
    assert set(BATCH_METHODS) == {"topk", "batchbald", "power", "diverse", "cover"}


# --------------------------------------------------------------------------- score_pool


def test_score_pool_equals_the_unchunked_computation():
    rng = np.random.default_rng(11)
    digit = rng.dirichlet(np.ones(10), size=(1000, 8))
    means, variances = rng.normal(size=(1000, 8)), rng.uniform(0.1, 1.0, size=(1000, 8))
    calls = []

    def prob_fn(start, stop):
        calls.append((start, stop))
        return {
            "digit": torch.from_numpy(digit[start:stop]),
            "angle": (means[start:stop], variances[start:stop]),
        }

    got = score_pool(prob_fn, 1000, chunk=300)
    np.testing.assert_allclose(got, bald(digit) + gaussian_bald(means, variances), atol=1e-12)
    assert calls == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    ent = score_pool(lambda a, b: digit[a:b], 1000, chunk=64, strategy="max_entropy")
    np.testing.assert_allclose(ent, max_entropy(digit), atol=1e-12)
    rand = score_pool(prob_fn, 1000, strategy="random", seed=1)
    assert rand.shape == (1000,) and len(calls) == 4  # random needs no predictions
    np.testing.assert_array_equal(rand, score_pool(prob_fn, 1000, strategy="random", seed=1))
    assert set(STRATEGIES) == {"bald", "max_entropy", "random"}


def test_score_pool_memory_does_not_grow_with_the_pool():
    n, s, c = 200_000, 8, 5  # all probabilities at once: 200k·8·5·8 B = 64 MB

    def prob_fn(start, stop):
        p = np.random.default_rng(start).random((stop - start, s, c))
        return p / p.sum(-1, keepdims=True)

    tracemalloc.start()
    try:
        scores = score_pool(prob_fn, n, chunk=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scores.shape == (n,) and (scores >= 0).all()
    assert peak < 16e6, f"peak {peak / 1e6:.1f} MB"


def test_score_pool_rejects_bad_chunks():
    with pytest.raises(ValueError, match="strategy"):
        score_pool(lambda a, b: None, 10, strategy="entropy")
    with pytest.raises(ValueError, match="expected 10 items"):
        score_pool(lambda a, b: np.full((3, 2, 2), 0.5), 10)
    with pytest.raises(ValueError, match="empty dict"):
        score_pool(lambda a, b: {}, 10)
    with pytest.raises(ValueError, match="chunk"):
        score_pool(lambda a, b: None, 10, chunk=0)


def test_queue_batch_never_picks_covered_items_and_typiclust_ignores_scores():
    from ml.acquisition import queue_batch

    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(c, 0.3, size=(200, 2)) for c in ((0, 0), (5, 0), (0, 5), (5, 5))])
    scores = np.zeros(len(Z))
    scores[:200] = 1.0  # all the informative items sit in one cluster
    covered = np.zeros(len(Z), bool)
    covered[200:210] = True
    for rule in ("cover", "typiclust", "power", "diverse"):
        picked = queue_batch(rule, scores + 1e-3, Z, 8, covered=covered, seed=0)
        assert len(picked) == len(set(picked)) == 8 and not covered[picked].any(), rule
    # typiclust spreads over the four clusters whatever the scores say (top scores alone would stay in
    # the first); with items of the second cluster labelled already, it looks elsewhere first.
    assert len(set(queue_batch("typiclust", scores, Z, 8, seed=0) // 200)) == 4
    typi = queue_batch("typiclust", scores, Z, 8, covered=covered, seed=0)
    assert set(typi // 200) >= {0, 2, 3} and (typi // 200 == 1).sum() <= 1
    # A pool above max_items is ranked within a sample that keeps every covered item.
    big = queue_batch("cover", scores + 1e-3, Z, 8, covered=covered, seed=0, max_items=100)
    assert len(big) == 8 and not covered[big].any()
    with pytest.raises(ValueError, match="rule must be one of"):
        queue_batch("topk", scores, Z, 8)
    with pytest.raises(ValueError, match="covered must be"):
        queue_batch("cover", scores, Z, 8, covered=np.zeros(3, bool))
