"""p_ψ(s|z*): the linear, i.e. interpretable, link between z* and each attribute (paper section 2).

Each head reads only its attribute's designated z* dimensions D (``dims_per_attribute`` of them)
and depends on them through ψ_Dᵀ z*_D + ψ_0 alone, as the paper requires:

- categorical: softmax over levels of W z*_D + c (a linear multinomial logit);
- ordinal: cumulative link (ordered logit), P(s ≤ l) = σ(θ_l − ψᵀ z*_D), θ increasing;
- continuous: Gaussian with mean ψᵀ z*_D + ψ_0 (values scaled to [0, 1] by low/high) and a
  learnt variance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ml.attributes import Attribute


class AttributeHead(nn.Module):
    """Base class: one attribute's p(s | z*_D)."""

    def __init__(self, attribute: Attribute, dims: list[int]) -> None:
        super().__init__()
        self.attribute = attribute
        self.register_buffer("dims", torch.tensor(dims, dtype=torch.long), persistent=False)

    def select(self, zs: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., k)
        return zs.index_select(-1, self.dims)


class CategoricalHead(AttributeHead):
    def __init__(self, attribute: Attribute, dims: list[int]) -> None:
        super().__init__(attribute, dims)
        self.linear = nn.Linear(len(dims), attribute.n_levels)

    def logits(self, zs: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., C)
        return self.linear(self.select(zs))

    def log_probs(self, zs: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.logits(zs), dim=-1)

    def probs(self, zs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(zs), dim=-1)

    def probs_columns(self, zd: torch.Tensor) -> torch.Tensor:
        """Probabilities for points as columns of their designated dims: (k, M) -> (C, M).

        Softmax down columns runs several times faster than over rows of only C entries.
        """
        return torch.softmax(torch.addmm(self.linear.bias[:, None], self.linear.weight, zd), dim=0)


class OrdinalHead(AttributeHead):
    """Ordered logit: one direction ψ and increasing cut points θ_1 < … < θ_{C−1}."""

    def __init__(self, attribute: Attribute, dims: list[int]) -> None:
        super().__init__(attribute, dims)
        c = attribute.n_levels
        self.linear = nn.Linear(len(dims), 1, bias=False)
        self.first_cut = nn.Parameter(torch.tensor(-(c - 2) / 2.0))
        # Gaps pass through softplus so the cut points stay strictly increasing.
        self.raw_gaps = nn.Parameter(torch.full((c - 2,), math.log(math.e - 1.0)))

    def cuts(self) -> torch.Tensor:  # (C-1,)
        gaps = F.softplus(self.raw_gaps)
        return torch.cat([self.first_cut.view(1), self.first_cut + torch.cumsum(gaps, 0)])

    def probs(self, zs: torch.Tensor) -> torch.Tensor:  # (..., C)
        eta = self.linear(self.select(zs))  # (..., 1)
        cdf = torch.sigmoid(self.cuts() - eta)  # P(s ≤ l), (..., C-1)
        ones = torch.ones_like(cdf[..., :1])
        upper = torch.cat([cdf, ones], -1)
        lower = torch.cat([torch.zeros_like(ones), cdf], -1)
        return (upper - lower).clamp_min(1e-12)

    def log_probs(self, zs: torch.Tensor) -> torch.Tensor:  # (..., C)
        return torch.log(self.probs(zs))

    def probs_columns(self, zd: torch.Tensor) -> torch.Tensor:  # (k, M) -> (C, M)
        eta = self.linear.weight @ zd  # (1, M)
        cdf = torch.sigmoid(self.cuts()[:, None] - eta)  # (C-1, M)
        ones = torch.ones_like(cdf[:1])
        return (torch.cat([cdf, ones], 0) - torch.cat([torch.zeros_like(ones), cdf], 0)).clamp_min(1e-12)


class ContinuousHead(AttributeHead):
    """Gaussian s ~ N(ψᵀ z*_D + ψ_0, σ²) on the [low, high] range mapped to [0, 1]."""

    def __init__(self, attribute: Attribute, dims: list[int]) -> None:
        super().__init__(attribute, dims)
        self.linear = nn.Linear(len(dims), 1)
        self.log_var = nn.Parameter(torch.tensor(math.log(0.1)))

    def scale(self, s: torch.Tensor) -> torch.Tensor:
        a = self.attribute
        return (s - a.low) / (a.high - a.low)  # type: ignore[operator]

    def unscale_mean(self, m: torch.Tensor) -> torch.Tensor:
        a = self.attribute
        return m * (a.high - a.low) + a.low  # type: ignore[operator]

    def unscale_var(self, v: torch.Tensor) -> torch.Tensor:
        a = self.attribute
        return v * (a.high - a.low) ** 2  # type: ignore[operator]

    def mean_var(self, zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance in scaled units, shapes (...,)."""
        m = self.linear(self.select(zs)).squeeze(-1)
        v = self.log_var.clamp(-9.0, 5.0).exp().expand_as(m)
        return m, v

    def mean_var_columns(self, zd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (k, M) -> (M,), (M,)
        m = torch.addmv(self.linear.bias.expand(zd.shape[1]), zd.T, self.linear.weight[0])
        return m, self.log_var.clamp(-9.0, 5.0).exp().expand_as(m)

    def log_prob(self, zs: torch.Tensor, s_scaled: torch.Tensor) -> torch.Tensor:
        m, v = self.mean_var(zs)
        return -0.5 * ((s_scaled - m) ** 2 / v + torch.log(2 * math.pi * v))


def make_head(attribute: Attribute, dims: list[int]) -> AttributeHead:
    """The head for ``attribute``'s kind."""
    if attribute.kind == "categorical":
        return CategoricalHead(attribute, dims)
    if attribute.kind == "ordinal":
        return OrdinalHead(attribute, dims)
    return ContinuousHead(attribute, dims)


def default_alpha(n_items: int, n_labelled: int) -> float:
    """The supervision weight α of log p_ψ(s|z*) from the labelled fraction: 10·N/N_labelled in [100, 1000].

    Shared by the lens (α) and JLVM (λ), which weigh the same heads. M2 (Kingma et al. 2014) weighs
    the mean labelled loss by 0.1·N. DESIGN.md measured α = 1 (the plain ELBO) leaving z* no more
    interpretable than z, and α = 100–1000 working on MNIST with 1,000 of 60,000 labelled
    (N/N_l = 60 → 600 here); scarcer labels get a larger weight.
    """
    if n_labelled <= 0:
        return 1.0
    return float(min(1000.0, max(100.0, 10.0 * n_items / n_labelled)))
