"""Semi-supervised regularisers of the lens: what the unlabelled pool can teach p_ψ(s | z*).

With a few hundred labels the lens fits its labelled items and little else (a coupling lens reaches
94–100% on 1,000 labelled MNIST items and about 50% on unseen ones), so these terms let the pool
shape the decision boundaries. Each is an extra loss added to the negative ELBO during
``InterpretableLens.fit``, switched on by its weight (0 = off). Propagation trains the unlabelled
attributes of a minibatch's items; consistency and mixup need no labels and act on every item:

- ``propagation``: label propagation on a k-nearest-neighbour graph of the standardised z (label
  spreading, Zhou et al. 2004), whose soft labels weighted by their certainty 1 − H(p)/log C train
  the heads like observed labels (Iscen et al. 2019, "Label propagation for deep semi-supervised
  learning"). Computed once per fit from the labels that fit sees.
- ``consistency``: p(s | f(z + ε)) must agree with p(s | f(z)) for small ε — the Π-model /
  virtual-adversarial idea (Laine & Aila 2017; Miyato et al. 2018) with Gaussian noise.
- ``mixup``: interpolation consistency (Verma et al. 2019, ICT): at z_λ = λ z_i + (1 − λ) z_j the
  prediction must match λ p_i + (1 − λ) p_j.
- confidence-thresholded pseudo-labels (FixMatch) live in ``LensModule.pseudo_label_terms``.

Targets are always computed without gradient (teacher = the current deterministic map), so a term
moves the prediction towards the target and never the target towards the prediction.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import sparse

from ml.attributes import Attribute, hard_levels, observed_mask

if TYPE_CHECKING:  # pragma: no cover
    from ml.lens.model import LensModule

# Neighbours of the propagation graph and the spreading's clamping factor: label spreading keeps
# (1 − α) of the initial labels each iteration; 0.8 was the most accurate of 0.2/0.8/0.99 on
# MNIST (PCA-10 features, 1,000 labels: 86% of the 60,000 pool right, 98% above 0.9 confidence).
PROPAGATION_NEIGHBOURS = 10
PROPAGATION_ALPHA = 0.8
PROPAGATION_ITERS = 300
# The graph is built on at most this many items (all labelled ones kept); kNN search and the sparse
# graph grow with the pool, and more items add little once the classes are densely sampled.
PROPAGATION_MAX_ITEMS = 100_000


def propagate_labels(
    Z_std: np.ndarray,
    labels: Mapping[str, np.ndarray],
    attributes: Sequence[Attribute],
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Soft labels and certainty weights from label spreading on a kNN graph of ``Z_std``.

    Returns {attribute name: (targets [N, C] float32, weights [N] float32)} for every discrete
    attribute with at least two labelled levels; observed items get weight 0 (the supervised term
    trains them already); items outside the graph's subsample get
    weight 0. Continuous attributes are left out (spreading is a classifier).
    """
    from sklearn.semi_supervised import LabelSpreading

    n = len(Z_std)
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    graph: tuple[np.ndarray, sparse.csr_matrix] | None = None
    for a in attributes:
        if not a.is_discrete:
            continue
        y = hard_levels(labels[a.name], a)  # spreading seeds: a soft target's most likely level
        known = observed_mask(y, a)
        if len(np.unique(y[known])) < 2:
            continue
        if n > PROPAGATION_MAX_ITEMS:
            # Every labelled item (up to the cap) plus a random sample of the others.
            lab_i, rest = np.flatnonzero(known), np.flatnonzero(~known)
            if len(lab_i) > PROPAGATION_MAX_ITEMS // 2:
                lab_i = rng.choice(lab_i, PROPAGATION_MAX_ITEMS // 2, replace=False)
            extra = rng.choice(rest, min(len(rest), PROPAGATION_MAX_ITEMS - len(lab_i)), replace=False)
            keep = np.sort(np.concatenate([lab_i, extra]))
        else:
            keep = np.arange(n)
        k = int(min(PROPAGATION_NEIGHBOURS, len(keep) - 1))
        if graph is None or not np.array_equal(graph[0], keep):
            graph = (keep, _knn_graph(Z_std[keep], k))
        # The graph LabelSpreading's "knn" kernel builds, built once for every attribute on the same
        # items and on all cores: the neighbour search is most of the propagation's time.
        model = LabelSpreading(
            kernel=lambda x, y, knn=graph[1]: knn, n_neighbors=k, alpha=PROPAGATION_ALPHA, max_iter=PROPAGATION_ITERS
        )
        with warnings.catch_warnings():
            # Not converging within the iteration cap only means the soft labels are a little less smooth.
            warnings.simplefilter("ignore")
            model.fit(Z_std[keep], np.where(known[keep], y[keep], -1))
        dist = np.nan_to_num(model.label_distributions_, nan=0.0)
        targets = np.zeros((n, a.n_levels), np.float32)
        targets[keep[:, None], model.classes_[None, :]] = dist
        mass = targets.sum(1, keepdims=True)
        targets = np.where(mass > 0, targets / np.maximum(mass, 1e-12), 1.0 / a.n_levels)
        ent = -(targets * np.log(np.clip(targets, 1e-12, 1.0))).sum(1)
        weights = np.clip(1.0 - ent / math.log(a.n_levels), 0.0, 1.0).astype(np.float32)
        weights[~np.isin(np.arange(n), keep)] = 0.0
        weights[known] = 0.0
        out[a.name] = (targets.astype(np.float32), weights)
    return out


def _knn_graph(X: np.ndarray, k: int) -> sparse.csr_matrix:
    """The k-nearest-neighbour connectivity graph of ``X`` (each item counts as its own neighbour),
    exactly as scikit-learn's ``LabelSpreading(kernel="knn")`` builds it, searched on every core."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, n_jobs=-1).fit(X)
    return nn.kneighbors_graph(nn._fit_X, k, mode="connectivity")


def soft_label_terms(
    mod: LensModule,
    zs: torch.Tensor,
    targets: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Σ_j w_j Σ_c p̂_jc log p_ψ(s_j = c | z*) per item, z* a sample of q(z*|z) (B, d) → (B,)."""
    total = torch.zeros(zs.shape[0], device=zs.device)
    for name, (p_hat, w) in targets.items():
        logp = mod.heads[name].log_probs(zs)
        total = total + w * (p_hat * logp).sum(1)
    return total


def _predictions(mod: LensModule, zs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per attribute: class probabilities (discrete) or the scaled mean (continuous)."""
    out = {}
    for a in mod.attributes:
        head = mod.heads[a.name]
        out[a.name] = head.probs(zs) if a.is_discrete else head.mean_var(zs)[0]
    return out


def _divergence(a: Attribute, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ pred) for class probabilities, squared error for a continuous mean. (B,)"""
    if a.is_discrete:
        t = target.clamp_min(1e-12)
        return (t * (torch.log(t) - torch.log(pred.clamp_min(1e-12)))).sum(1)
    return (target - pred) ** 2


def consistency_terms(mod: LensModule, z: torch.Tensor, noise: float) -> torch.Tensor:
    """Σ_j D(p(s_j | f(z)) ‖ p(s_j | f(z + ε))), ε ~ N(0, noise² I) on standardised z. (B,)"""
    with torch.no_grad():
        target = _predictions(mod, mod.flows.transform(z))
    pred = _predictions(mod, mod.flows.transform(z + noise * torch.randn_like(z)))
    total = torch.zeros(z.shape[0], device=z.device)
    for a in mod.attributes:
        total = total + _divergence(a, target[a.name], pred[a.name])
    return total


def mixup_terms(mod: LensModule, z: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Σ_j D(λ p_i + (1 − λ) p_π(i) ‖ p(s_j | f(λ z_i + (1 − λ) z_π(i)))), λ ~ Beta(β, β). (B,)

    π is a random permutation of the batch (ICT pairs each item with another unlabelled one).
    """
    n = z.shape[0]
    lam = torch.distributions.Beta(beta, beta).sample((n, 1)).to(z.device)
    perm = torch.randperm(n, device=z.device)
    with torch.no_grad():
        p = _predictions(mod, mod.flows.transform(z))
    pred = _predictions(mod, mod.flows.transform(lam * z + (1 - lam) * z[perm]))
    total = torch.zeros(n, device=z.device)
    for a in mod.attributes:
        t = p[a.name]
        lam_a = lam if t.dim() == 2 else lam[:, 0]
        target = lam_a * t + (1 - lam_a) * t[perm]
        total = total + _divergence(a, target, pred[a.name])
    return total
