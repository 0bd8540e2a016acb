"""The interpretable lens (ILVM, paper section 2): planar flows from z to z*, z* linear in s.

Generative model (Fig. 1): z* ~ N(0, I), z | z* ~ p_θ (a Gaussian MLP), s | z* ~ p_ψ (linear
heads, ``ml.heads``). Recognition: q0(z0 | z, s) = N(z, diag σ²_φ(z, s)) pushed through the flow
stack f = f_T ∘ … ∘ f_1, so q(z*|z, s) has the density of eq. (3).

The deterministic lens map is the flow stack applied to z itself (eq. 5): ``transform(Z) = f(z)``
and ``inverse_transform`` is its exact inverse, so z is always recoverable. Centring q0 on z (only
its spread is learnt) keeps the samples the ELBO trains on around that map; and since the map
never reads s, an item's z* cannot carry its own labels into the metric.

Training maximises ELBO (7) for labelled attributes and ELBO (8) for unlabelled ones — s latent,
with q(s | z) the head evaluated at f(z): enumerated for discrete attributes, reparameterised for
continuous ones — plus α·log p_ψ(s|z*) on labelled items, the supervision weight of Kingma et al.
(2014, M2) that DESIGN.md measured to be needed (α = 1 leaves z* no more interpretable than z).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.acquisition import STRATEGIES, bald, gaussian_bald, gaussian_entropy, max_entropy
from ml.attributes import Attribute, coerce_attributes, observed_mask, validate_labels
from ml.control import ProgressFn, StopFn, Throttle, check_stop, sub_progress
from ml.device import load_checkpoint, resolve_device, save_checkpoint
from ml.flows import FLOW_FAMILIES, FlowStack, PlanarFlowStack, build_flow_stack, log_normal_std
from ml.heads import AttributeHead, ContinuousHead, make_head
from ml.regularisers import consistency_terms, mixup_terms, propagate_labels, soft_label_terms

FORMAT_VERSION = 1
AUTO = "auto"
_LOG_2PI = math.log(2 * math.pi)


@dataclass
class LensConfig:
    """Hyper-parameters of the lens (also its checkpoint's JSON config)."""

    attributes: list[dict[str, Any]]
    dim: int
    n_flows: int = 8
    dims_per_attribute: int = 1
    hidden: int = 256
    alpha: float | None = None  # None → chosen from the labelled fraction (see ``default_alpha``)
    lr: float = 5e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    labelled_batch_size: int = 128
    epochs: int | None = None
    seed: int = 0
    pseudo_label_threshold: float | None = None
    pseudo_label_weight: float = 10.0
    flow: str = "planar"
    consistency_weight: float = 0.0
    consistency_noise: float = 0.3
    mixup_weight: float = 0.0
    propagation_weight: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def default_alpha(n_items: int, n_labelled: int) -> float:
    """α from the labelled fraction: 10·N/N_labelled, kept within [100, 1000].

    M2 (Kingma et al. 2014) weighs the mean labelled loss by 0.1·N. DESIGN.md measured α = 1 (the
    plain ELBO) leaving z* no more interpretable than z, and α = 100–1000 working on MNIST with
    1,000 of 60,000 labelled (N/N_l = 60 → 600 here); scarcer labels get a larger weight.
    """
    if n_labelled <= 0:
        return 1.0
    return float(min(1000.0, max(100.0, 10.0 * n_items / n_labelled)))


class _MLP(nn.Sequential):
    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__(
            nn.Linear(d_in, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, d_out)
        )


class LensModule(nn.Module):
    """The ILVM networks: q0's spread σ_φ(z, s), the flows, p_θ(z|z*) and the heads p_ψ(s|z*)."""

    def __init__(self, cfg: LensConfig, attributes: list[Attribute], dims: dict[str, list[int]]) -> None:
        super().__init__()
        d = cfg.dim
        self.attributes = attributes
        self.s_width = sum(a.n_levels + 1 if a.is_discrete else 2 for a in attributes)
        self.q0 = _MLP(d + self.s_width, cfg.hidden, d)  # log σ² of q0(z0 | z, s)
        self.flows: FlowStack = build_flow_stack(cfg.flow, d, cfg.n_flows)
        self.decoder = _MLP(d, cfg.hidden, 2 * d)  # p_θ(z | z*): mean and log σ²
        self.heads = nn.ModuleDict({a.name: make_head(a, dims[a.name]) for a in attributes})
        # Start q0 narrow so early training sees z* close to f(z).
        last = self.q0[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, -4.0)

    # -- encodings ----------------------------------------------------------------------------
    def encode_s(self, s: Mapping[str, torch.Tensor], n: int, device: torch.device) -> torch.Tensor:
        """One-hot levels (+ a missing flag) or the scaled value (+ flag), zeros where missing."""
        parts = []
        for a in self.attributes:
            v = s.get(a.name)
            if a.is_discrete:
                if v is None:
                    oh = torch.zeros(n, a.n_levels, device=device)
                    miss = torch.ones(n, 1, device=device)
                else:
                    known = v >= 0
                    oh = F.one_hot(v.clamp_min(0), a.n_levels).float() * known[:, None]
                    miss = (~known).float()[:, None]
                parts += [oh, miss]
            else:
                if v is None:
                    parts += [torch.zeros(n, 1, device=device), torch.ones(n, 1, device=device)]
                else:
                    known = ~torch.isnan(v)
                    head = self.heads[a.name]
                    assert isinstance(head, ContinuousHead)
                    val = torch.where(known, head.scale(v), torch.zeros_like(v))
                    parts += [val[:, None].float(), (~known).float()[:, None]]
        return torch.cat(parts, 1)

    def q0_log_var(self, z: torch.Tensor, s_enc: torch.Tensor) -> torch.Tensor:
        return self.q0(torch.cat([z, s_enc], 1)).clamp(-12.0, 4.0)

    # -- eq. (7)/(8) ----------------------------------------------------------------------------
    def elbo(self, z: torch.Tensor, s: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-item ELBO: labelled attributes as eq. (7), missing ones as eq. (8). (B,)"""
        return self.elbo_and_sample(z, s)[0]

    def elbo_and_sample(self, z: torch.Tensor, s: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-item ELBO (B,) and the z* ~ q(z*|z, s) it was estimated with (B, d).

        The sample, drawn from q(z*|z, s_observed), is reused by the regularisers of unlabelled
        attributes (only q0's spread reads the observed labels), which saves a pass of the flows.
        """
        n = z.shape[0]
        s_enc = self.encode_s(s, n, z.device)
        log_var = self.q0_log_var(z, s_enc)
        eps = torch.randn_like(z)
        z0 = z + eps * torch.exp(0.5 * log_var)
        log_q0 = -0.5 * (eps * eps + log_var + _LOG_2PI).sum(1)
        zs, log_det = self.flows(z0)
        dec = self.decoder(zs)
        mu, lv = dec.chunk(2, 1)
        lv = lv.clamp(-9.0, 5.0)
        log_pz = -0.5 * ((z - mu) ** 2 / lv.exp() + lv + _LOG_2PI).sum(1)
        elbo = log_normal_std(zs) + log_pz - log_q0 + log_det  # eq. (3) inside (7)
        with torch.no_grad():
            zdet = self.flows.transform(z)  # q(s|z) for eq. (8): the head at the deterministic lens map
        for a in self.attributes:
            head = self.heads[a.name]
            v = s.get(a.name)
            if a.is_discrete:
                logp = head.log_probs(zs)  # (B, C)
                known = v >= 0 if v is not None else torch.zeros(n, dtype=torch.bool, device=z.device)
                obs = (
                    logp.gather(1, v.clamp_min(0)[:, None]).squeeze(1)
                    if v is not None
                    else torch.zeros(n, device=z.device)
                )
                # eq. (8): Σ_s q(s|z)[log p(s|z*) − log q(s|z)], q from the head at f(z).
                q = head.log_probs(zdet).exp()
                lat = (q * (logp - torch.log(q.clamp_min(1e-12)))).sum(1)
            else:
                assert isinstance(head, ContinuousHead)
                known = (
                    ~torch.isnan(v) if v is not None else torch.zeros(n, dtype=torch.bool, device=z.device)
                )
                val = (
                    head.scale(torch.where(known, v, torch.zeros_like(v)))
                    if v is not None
                    else torch.zeros(n, device=z.device)
                )
                obs = head.log_prob(zs, val.float())
                qm, qv = head.mean_var(zdet)
                s_draw = qm + torch.randn_like(qm) * qv.sqrt()  # reparameterised s ~ q(s|z)
                log_q = -0.5 * ((s_draw - qm) ** 2 / qv + torch.log(2 * math.pi * qv))
                lat = head.log_prob(zs, s_draw) - log_q
            elbo = elbo + torch.where(known, obs, lat)
        return elbo, zs

    def supervised_terms(self, z: torch.Tensor, s: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Σ_j log p_ψ(s_j | z*) over observed attributes, z* ~ q(z*|z, s): the α-weighted term. (B,)"""
        n = z.shape[0]
        log_var = self.q0_log_var(z, self.encode_s(s, n, z.device))
        zs, _ = self.flows(z + torch.randn_like(z) * torch.exp(0.5 * log_var))
        total = torch.zeros(n, device=z.device)
        for a in self.attributes:
            head = self.heads[a.name]
            v = s[a.name]
            if a.is_discrete:
                known = v >= 0
                obs = head.log_probs(zs).gather(1, v.clamp_min(0)[:, None]).squeeze(1)
            else:
                assert isinstance(head, ContinuousHead)
                known = ~torch.isnan(v)
                obs = head.log_prob(zs, head.scale(torch.where(known, v, torch.zeros_like(v))))
            total = total + torch.where(known, obs, torch.zeros_like(obs))
        return total

    def sample_unlabelled(self, z: torch.Tensor) -> torch.Tensor:
        """One z* ~ q(z*|z) per item with every attribute unobserved (reparameterised). (B, d)"""
        log_var = self.q0_log_var(z, self.encode_s({}, z.shape[0], z.device))
        return self.flows.transform(z + torch.randn_like(z) * torch.exp(0.5 * log_var))

    def pseudo_label_terms(self, z: torch.Tensor, threshold: float) -> torch.Tensor:
        """Σ_j 1[max p(s_j|f(z)) ≥ τ]·log p_ψ(ŝ_j | z*), ŝ_j = argmax p(s_j|f(z)), z* ~ q(z*|z). (B,)

        Confidence-thresholded pseudo-labels (FixMatch, Sohn et al. 2020) for discrete attributes of
        unlabelled items: the deterministic lens map proposes, a noisy sample must agree. It pulls
        decision boundaries into the low-density gaps of the pool (the cluster assumption).
        """
        n = z.shape[0]
        with torch.no_grad():
            zdet = self.flows.transform(z)
        zs = self.sample_unlabelled(z)
        total = torch.zeros(n, device=z.device)
        for a in self.attributes:
            if not a.is_discrete:
                continue
            head = self.heads[a.name]
            with torch.no_grad():
                conf, guess = head.probs(zdet).max(1)
            logp = head.log_probs(zs).gather(1, guess[:, None]).squeeze(1)
            total = total + torch.where(conf >= threshold, logp, torch.zeros_like(logp))
        return total


class InterpretableLens:
    """scikit-learn-style ILVM: ``fit(Z, S)``, ``transform``, ``inverse_transform``, acquisition scores.

    Parameters mirror ``LensConfig``. ``Z`` is [N, d] (the base model's representation); ``S`` maps
    attribute name → array of length N: level indices (−1 = missing) for categorical/ordinal
    attributes, values (NaN = missing) for continuous ones. Learnt state ends with ``_``.

    ``flow`` picks the flow family (``ml.flows.FLOW_FAMILIES``; planar is the paper's). ``flow``,
    ``alpha`` and ``weight_decay`` may be ``"auto"``: they are then chosen, with the number of
    epochs, by ``selection_folds``-fold cross-validation on the labelled items alone
    (``ml.lens_selection``); the outcome is kept in ``selection_``. The regulariser weights
    (``pseudo_label_*``, ``consistency_*``, ``mixup_weight``, ``propagation_weight``; 0 or None =
    off) let the unlabelled pool shape the heads (``ml.regularisers``).
    """

    def __init__(
        self,
        attributes: Sequence[Attribute | Mapping[str, Any]],
        n_flows: int = 8,
        dims_per_attribute: int = 1,
        hidden: int = 256,
        epochs: int | None = None,
        alpha: float | str | None = None,
        lr: float = 5e-3,
        weight_decay: float | str = 0.0,
        batch_size: int = 256,
        labelled_batch_size: int = 128,
        device: str = "auto",
        seed: int = 0,
        pseudo_label_threshold: float | None = None,
        pseudo_label_weight: float = 10.0,
        flow: str = "planar",
        consistency_weight: float = 0.0,
        consistency_noise: float = 0.3,
        mixup_weight: float = 0.0,
        propagation_weight: float = 0.0,
        selection_folds: int = 3,
        selection_pool: int = 10_000,
    ) -> None:
        self.attributes = coerce_attributes(attributes)
        for name, value, lo in (
            ("n_flows", n_flows, 0),
            ("dims_per_attribute", dims_per_attribute, 1),
            ("hidden", hidden, 1),
            ("batch_size", batch_size, 1),
            ("labelled_batch_size", labelled_batch_size, 1),
            ("selection_folds", selection_folds, 2),
            ("selection_pool", selection_pool, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer ≥ {lo}, got {value!r}")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"epochs must be a positive integer or None, got {epochs!r}")
        if alpha != AUTO and alpha is not None and not _finite_at_least(alpha, 0.0):
            raise ValueError(f"alpha must be a finite number ≥ 0, None or 'auto', got {alpha!r}")
        if weight_decay != AUTO and not _finite_at_least(weight_decay, 0.0):
            raise ValueError(f"weight_decay must be a finite number ≥ 0 or 'auto', got {weight_decay!r}")
        if flow != AUTO and flow not in FLOW_FAMILIES:
            raise ValueError(f"flow must be one of {FLOW_FAMILIES} or 'auto', got {flow!r}")
        if not (isinstance(lr, int | float) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if pseudo_label_threshold is not None and not (
            _finite_at_least(pseudo_label_threshold, 0.0) and 0.0 < pseudo_label_threshold < 1.0
        ):
            raise ValueError(
                f"pseudo_label_threshold must be in (0, 1) or None, got {pseudo_label_threshold!r}"
            )
        for name, value in (
            ("pseudo_label_weight", pseudo_label_weight),
            ("consistency_weight", consistency_weight),
            ("consistency_noise", consistency_noise),
            ("mixup_weight", mixup_weight),
            ("propagation_weight", propagation_weight),
        ):
            if not _finite_at_least(value, 0.0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")
        self.n_flows = n_flows
        self.dims_per_attribute = dims_per_attribute
        self.hidden = hidden
        self.epochs = epochs
        self.alpha = alpha
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.labelled_batch_size = labelled_batch_size
        self.device = device
        self.seed = seed
        self.pseudo_label_threshold = pseudo_label_threshold
        self.pseudo_label_weight = pseudo_label_weight
        self.flow = flow
        self.consistency_weight = consistency_weight
        self.consistency_noise = consistency_noise
        self.mixup_weight = mixup_weight
        self.propagation_weight = propagation_weight
        self.selection_folds = selection_folds
        self.selection_pool = selection_pool

    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments (scikit-learn convention), ``attributes`` as dicts."""
        return {
            "attributes": [a.to_dict() for a in self.attributes],
            **{k: getattr(self, k) for k in _PARAMS},
        }

    @property
    def needs_selection(self) -> bool:
        """Whether ``fit`` chooses some setting by cross-validation (a setting is ``"auto"``)."""
        return AUTO in (self.flow, self.alpha, self.weight_decay)

    # -- configuration ------------------------------------------------------------------------
    def _config(self, dim: int) -> LensConfig:
        assert not self.needs_selection, "settings are concrete once selection has run"
        return LensConfig(
            attributes=[a.to_dict() for a in self.attributes],
            dim=dim,
            n_flows=self.n_flows,
            dims_per_attribute=self.dims_per_attribute,
            hidden=self.hidden,
            alpha=self.alpha,  # type: ignore[arg-type]
            lr=self.lr,
            weight_decay=float(self.weight_decay),
            batch_size=self.batch_size,
            labelled_batch_size=self.labelled_batch_size,
            epochs=self.epochs,
            seed=self.seed,
            pseudo_label_threshold=self.pseudo_label_threshold,
            pseudo_label_weight=self.pseudo_label_weight,
            flow=self.flow,
            consistency_weight=self.consistency_weight,
            consistency_noise=self.consistency_noise,
            mixup_weight=self.mixup_weight,
            propagation_weight=self.propagation_weight,
        )

    def _assign_dims(self, dim: int) -> dict[str, list[int]]:
        """Attribute j owns z* dimensions [j·k, (j+1)·k) — its designated dims."""
        k = self.dims_per_attribute
        need = k * len(self.attributes)
        if need > dim:
            raise ValueError(
                f"{len(self.attributes)} attribute(s) × dims_per_attribute={k} need {need} z* dimensions, "
                f"but Z has only {dim}"
            )
        return {a.name: list(range(j * k, (j + 1) * k)) for j, a in enumerate(self.attributes)}

    def _check_Z(self, Z: Any, *, fitted: bool) -> np.ndarray:
        Z = np.asarray(Z)
        if Z.ndim != 2:
            raise ValueError(f"Z must be a 2-d array [N, d], got shape {Z.shape}")
        if Z.dtype.kind not in "fiu":
            raise ValueError(f"Z must be numeric, got dtype {Z.dtype}")
        if not np.isfinite(Z).all():
            bad = np.argwhere(~np.isfinite(Z))[0]
            raise ValueError(f"Z contains NaN or infinite values (first at row {bad[0]}, column {bad[1]})")
        if fitted and Z.shape[1] != self.config_.dim:
            raise ValueError(f"Z has {Z.shape[1]} columns but the lens was fitted on d={self.config_.dim}")
        return Z

    def _require_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise ValueError("this InterpretableLens is not fitted yet: call fit(Z, S) first")

    # -- fitting --------------------------------------------------------------------------------
    def fit(
        self,
        Z: Any,
        S: Mapping[str, Any] | None = None,
        warm_start: bool = False,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> InterpretableLens:
        """Fit the lens by stochastic maximisation of the ELBO (7)/(8) + α·supervision (Adam).

        Settings given as ``"auto"`` are first chosen by k-fold cross-validation on the labelled
        items (``ml.lens_selection``). A warm start keeps the fitted flow family, depth and width
        and any setting chosen before, and refits from the current weights.
        """
        Z = self._check_Z(Z, fitted=False)
        n, d = Z.shape
        if n < 2:
            raise ValueError(f"need at least 2 items to fit, got {n}")
        labels = validate_labels(S, self.attributes, n)
        self._check_label_support(labels)
        self._assign_dims(d)
        reuse = warm_start and hasattr(self, "module_") and self.config_.dim == d
        if reuse:
            # Structural settings (flow, depth, width, dims) stay; the training settings asked for now
            # replace the previous fit's, except those left to selection, which keep their chosen value.
            cfg = replace(
                self.config_, **{k: getattr(self, k) for k in _REFIT_KEYS if getattr(self, k) != AUTO}
            )
            self._fit_fixed(Z, labels, cfg, reuse=True, progress=progress, should_stop=should_stop)
            return self
        selection = None
        fit_progress = progress
        if self.needs_selection:
            from ml.lens_selection import select_settings

            selection = select_settings(
                self,
                Z,
                labels,
                progress=sub_progress(progress, 0.0, 0.75, stage="selection"),
                should_stop=should_stop,
            )
            fit_progress = sub_progress(progress, 0.75, 1.0)
        concrete = self._concrete(selection["chosen"] if selection else {})
        cfg = concrete._config(d)
        self._fit_fixed(Z, labels, cfg, reuse=False, progress=fit_progress, should_stop=should_stop)
        self.selection_ = selection
        return self

    def _concrete(self, chosen: Mapping[str, Any]) -> InterpretableLens:
        """A copy of this lens's settings with the ``"auto"`` ones replaced by ``chosen`` values."""
        params = {**self.get_params(), **chosen}
        params.pop("attributes")
        return InterpretableLens(self.attributes, device=self.device, **params)

    def _fit_fixed(
        self,
        Z: np.ndarray,
        labels: Mapping[str, np.ndarray],
        cfg: LensConfig,
        *,
        reuse: bool,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        validation: tuple[np.ndarray, Mapping[str, np.ndarray]] | None = None,
        patience: int | None = None,
    ) -> list[float]:
        """Train with the concrete settings ``cfg``; return the held-out log-likelihood per epoch.

        ``validation`` (Z, labels): after every epoch, the mean over its labelled items of
        Σ_j log p_ψ(s_j | f(z)) — the model-selection criterion. ``patience``: stop once that many
        epochs passed without a better value (early stopping); the weights are those of the last epoch.
        """
        n, d = Z.shape
        self.device_ = resolve_device(self.device)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        if not reuse:
            self.attribute_dims_ = self._assign_dims(d)
            # The lens works on standardised z; this affine step is part of the exact map.
            self.z_mean_ = Z.mean(0).astype(np.float64)
            self.z_scale_ = np.where(Z.std(0) > 1e-8, Z.std(0), 1.0).astype(np.float64)
            self.module_ = LensModule(cfg, self.attributes, self.attribute_dims_).to(self.device_)
        else:
            self.module_.to(self.device_)
        self.config_ = cfg
        mod = self.module_
        labelled_any = np.zeros(n, bool)
        for a in self.attributes:
            labelled_any |= observed_mask(labels[a.name], a)
        lab_idx = np.flatnonzero(labelled_any)
        alpha = cfg.alpha if cfg.alpha is not None else default_alpha(n, len(lab_idx))
        self.alpha_ = float(alpha)

        Z_std = self._standardise(Z)
        zt = torch.as_tensor(Z_std, dtype=torch.float32, device=self.device_)
        st = self._label_tensors(labels)
        soft: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if cfg.propagation_weight > 0:
            for name, (p_hat, w) in propagate_labels(Z_std, labels, self.attributes, seed=cfg.seed).items():
                soft[name] = (
                    torch.as_tensor(p_hat, device=self.device_),
                    torch.as_tensor(w, device=self.device_),
                )
        val = None
        if validation is not None:
            val = (
                torch.as_tensor(self._standardise(validation[0]), dtype=torch.float32, device=self.device_),
                self._label_tensors(validation[1]),
            )
        steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
        epochs = cfg.epochs if cfg.epochs is not None else self._auto_epochs(steps_per_epoch)
        total = epochs * steps_per_epoch
        opt = torch.optim.Adam(mod.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        throttle = Throttle(progress)
        history: list[float] = []
        val_history: list[float] = []
        mod.train()
        step = 0
        for epoch in range(epochs):
            perm = torch.as_tensor(rng.permutation(n), device=self.device_)
            running = 0.0
            for b in range(steps_per_epoch):
                check_stop(should_stop)
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                zb = zt[idx]
                elbo, zs_b = mod.elbo_and_sample(zb, {k: v[idx] for k, v in st.items()})
                loss = -elbo.mean()
                if len(lab_idx) and alpha > 0:
                    li = torch.as_tensor(
                        rng.choice(
                            lab_idx,
                            size=min(cfg.labelled_batch_size, len(lab_idx)),
                            replace=len(lab_idx) < cfg.labelled_batch_size,
                        ),
                        device=self.device_,
                    )
                    sup = mod.supervised_terms(zt[li], {k: v[li] for k, v in st.items()})
                    loss = loss - alpha * sup.mean()
                loss = loss - self._regularisers(mod, cfg, zb, zs_b, idx, soft)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(mod.parameters(), 100.0)
                opt.step()
                running += float(loss.detach())
                step += 1
                if throttle.due():
                    throttle(step / total, {"epoch": epoch + 1, "loss": running / (b + 1)})
            history.append(running / steps_per_epoch)
            if val is not None:
                val_history.append(self._heldout_log_lik(*val))
                mod.train()
                finite = np.isfinite(val_history)
                best = int(np.nanargmax(val_history)) if finite.any() else epoch
                if patience is not None and epoch - best >= patience:
                    break
        mod.eval()
        self.history_ = history
        self.n_labelled_ = len(lab_idx)
        # Training z* quantiles anchor the traversals (DESIGN.md: "over its training quantiles").
        self.zstar_quantiles_ = np.quantile(self.transform(Z), [0.01, 0.05, 0.5, 0.95, 0.99], axis=0)
        throttle(1.0, {"epoch": len(history), "loss": history[-1] if history else float("nan")}, final=True)
        return val_history

    @staticmethod
    def _regularisers(
        mod: LensModule,
        cfg: LensConfig,
        zb: torch.Tensor,
        zs_b: torch.Tensor,
        idx: torch.Tensor,
        soft: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """The weighted semi-supervised terms (``ml.regularisers``) of one minibatch, to maximise."""
        out = torch.zeros((), device=zb.device)
        if cfg.pseudo_label_threshold is not None and cfg.pseudo_label_weight > 0:
            out = (
                out + cfg.pseudo_label_weight * mod.pseudo_label_terms(zb, cfg.pseudo_label_threshold).mean()
            )
        if soft and cfg.propagation_weight > 0:
            targets = {k: (p[idx], w[idx]) for k, (p, w) in soft.items()}
            out = (
                out
                + cfg.propagation_weight * soft_label_terms(mod, zs_b, targets).mean()
            )
        if cfg.consistency_weight > 0:
            out = out - cfg.consistency_weight * consistency_terms(mod, zb, cfg.consistency_noise).mean()
        if cfg.mixup_weight > 0:
            out = out - cfg.mixup_weight * mixup_terms(mod, zb).mean()
        return out

    def _label_tensors(self, labels: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        st = {a.name: torch.as_tensor(labels[a.name], device=self.device_) for a in self.attributes}
        for a in self.attributes:
            if not a.is_discrete:
                st[a.name] = st[a.name].float()
        return st

    def _heldout_log_lik(self, z_std: torch.Tensor, st: Mapping[str, torch.Tensor]) -> float:
        """Mean over items of Σ_j log p_ψ(s_j | f(z)) on observed attributes (nats per item)."""
        mod = self.module_
        mod.eval()
        with torch.no_grad():
            zs = mod.flows.transform(z_std)
            total = torch.zeros(len(z_std), dtype=torch.float64, device=z_std.device)
            any_obs = torch.zeros(len(z_std), dtype=torch.bool, device=z_std.device)
            for a in self.attributes:
                head = self.module_.heads[a.name]
                v = st[a.name]
                if a.is_discrete:
                    known = v >= 0
                    lp = head.log_probs(zs).gather(1, v.clamp_min(0)[:, None]).squeeze(1)
                else:
                    assert isinstance(head, ContinuousHead)
                    known = ~torch.isnan(v)
                    lp = head.log_prob(zs, head.scale(torch.where(known, v, torch.zeros_like(v))))
                total += torch.where(known, lp, torch.zeros_like(lp)).double()
                any_obs |= known
        return float(total[any_obs].mean()) if bool(any_obs.any()) else float("nan")

    @staticmethod
    def _auto_epochs(steps_per_epoch: int) -> int:
        """Enough epochs for ~1,500 Adam steps on small pools, at least 10 passes on large ones."""
        return int(min(200, max(10, math.ceil(1500 / steps_per_epoch))))

    def _check_label_support(self, labels: Mapping[str, np.ndarray]) -> None:
        for a in self.attributes:
            obs = labels[a.name][observed_mask(labels[a.name], a)]
            if a.kind == "categorical":
                if len(np.unique(obs)) < 2:
                    raise ValueError(
                        f"attribute {a.name!r}: labelled items cover {len(np.unique(obs))} level(s); "
                        "a categorical attribute needs at least 2 labelled levels"
                    )
            elif a.kind == "continuous" and len(obs) and len(np.unique(obs)) < 2:
                raise ValueError(
                    f"attribute {a.name!r}: labelled values are all equal; need at least 2 distinct values"
                )

    # -- the deterministic map (eq. 5) ---------------------------------------------------------------
    def _standardise(self, Z: np.ndarray) -> np.ndarray:
        return (Z - self.z_mean_) / self.z_scale_

    def transform(self, Z: Any, batch_size: int = 65536) -> np.ndarray:
        """z* = f_T ∘ … ∘ f_1(z) (eq. 5), float64 [N, d].

        Computed in float64: the round trip to z is exact to ~1e-10 even for strongly curved flows,
        where float32 rounding of z* would be amplified by the inverse's conditioning.
        """
        self._require_fitted()
        Z = self._check_Z(Z, fitted=True)
        flows = self.module_.flows
        out = np.empty(Z.shape, dtype=np.float64)
        with torch.no_grad():
            flows64 = _as_double(flows)
            for i in range(0, len(Z), batch_size):
                zt = torch.as_tensor(self._standardise(Z[i : i + batch_size]), dtype=torch.float64)
                out[i : i + batch_size] = flows64(zt)[0].numpy()
        return out

    def inverse_transform(self, Zs: Any, batch_size: int = 65536) -> np.ndarray:
        """z = f⁻¹(z*) with the flows' exact inverse (Rezende & Mohamed, App. A.1), float64 [N, d]."""
        self._require_fitted()
        Zs = self._check_Z(Zs, fitted=True)
        flows64 = _as_double(self.module_.flows)
        out = np.empty(Zs.shape, dtype=np.float64)
        with torch.no_grad():
            for i in range(0, len(Zs), batch_size):
                y = torch.as_tensor(np.asarray(Zs[i : i + batch_size], dtype=np.float64))
                out[i : i + batch_size] = flows64.inverse(y)[0].numpy()
        return out * self.z_scale_ + self.z_mean_

    # -- predictions -----------------------------------------------------------------------------
    def _heads_on(self, zs: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for a in self.attributes:
            head: AttributeHead = self.module_.heads[a.name]  # type: ignore[assignment]
            if a.is_discrete:
                out[a.name] = head.probs(zs)  # type: ignore[attr-defined]
            else:
                assert isinstance(head, ContinuousHead)
                m, v = head.mean_var(zs)
                out[a.name] = (head.unscale_mean(m), head.unscale_var(v))
        return out

    def predict_proba(self, Z: Any) -> dict[str, Any]:
        """p_ψ(s | z* = f(z)): {attr: [N, C] probabilities} or {attr: (mean [N], variance [N])}."""
        Zs = self.transform(Z)
        with torch.no_grad():
            zs = torch.as_tensor(Zs, dtype=torch.float32, device=self.device_)
            res = self._heads_on(zs)
        return {k: _np(v) for k, v in res.items()}

    def predict(self, Z: Any) -> dict[str, np.ndarray]:
        """Most probable level index (discrete) or predicted mean (continuous) per attribute."""
        return {
            a.name: (p.argmax(1) if a.is_discrete else p[0])
            for a, p in zip(self.attributes, self.predict_proba(Z).values(), strict=True)
        }

    def _samples(self, z_std: torch.Tensor, n_samples: int) -> dict[str, Any]:
        """Heads at z*_t ~ q(z*|z): {attr: probs (B, S, C)} or {attr: (means, variances) (B, S)}.

        Points are laid out as columns (d, B·S) and only the designated dims of z* are formed
        (``PlanarFlowStack.project_columns``), the layout in which the small per-point operations
        vectorise; the returned arrays are views in the usual (B, S, …) order.
        """
        mod = self.module_
        n, d = z_std.shape
        with torch.no_grad():
            std = torch.exp(0.5 * mod.q0_log_var(z_std, mod.encode_s({}, n, z_std.device)))  # (B, d)
            # Antithetic pairs (ε, −ε): half the random draws, and a lower-variance Monte-Carlo
            # estimate of the mean predictive than S independent draws.
            half = torch.randn(d, n, (n_samples + 1) // 2, device=z_std.device, dtype=z_std.dtype)
            eps = torch.cat([half, -half], 2)[:, :, :n_samples]
            z0 = torch.addcmul(z_std.T[:, :, None], std.T[:, :, None], eps).reshape(d, n * n_samples)
            heads = [mod.heads[a.name] for a in self.attributes]
            wanted = torch.cat([h.dims for h in heads])
            # One pass of the flows for every attribute's designated rows of z*.
            if isinstance(mod.flows, PlanarFlowStack):
                rows = mod.flows.project_columns(z0, wanted)  # (Σk, B·S)
            else:
                rows = mod.flows.transform(z0.T).index_select(1, wanted).T
            out: dict[str, Any] = {}
            start = 0
            for a, head in zip(self.attributes, heads, strict=True):
                k = len(head.dims)
                zd, start = rows[start : start + k], start + k
                if a.is_discrete:
                    p = head.probs_columns(zd)  # (C, B·S)
                    out[a.name] = p.reshape(-1, n, n_samples).permute(1, 2, 0)
                else:
                    assert isinstance(head, ContinuousHead)
                    m, v = head.mean_var_columns(zd)
                    out[a.name] = (
                        head.unscale_mean(m).reshape(n, n_samples),
                        head.unscale_var(v).reshape(n, n_samples),
                    )
        return out

    def sample_probs(self, Z: Any, n_samples: int = 32, seed: int | None = None) -> dict[str, Any]:
        """p_ψ(s | z*_t) for z*_t ~ q(z*|z): {attr: [N, S, C]} or {attr: (means [N, S], variances [N, S])}."""
        self._require_fitted()
        Z = self._check_Z(Z, fitted=True)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            zt = torch.as_tensor(self._standardise(Z), dtype=torch.float32, device=self.device_)
            res = self._samples(zt, n_samples)
        return {k: _np(v) for k, v in res.items()}

    def acquisition_scores(
        self,
        Z: Any,
        strategy: str = "bald",
        n_samples: int = 32,
        attribute: str | None = None,
        chunk: int = 8192,
        seed: int | None = 0,
    ) -> np.ndarray:
        """Acquisition score of every item (section 3): BALD (eq. 10), max-entropy or random, float64 [N].

        Several attributes: the sum of per-attribute scores, or one ``attribute`` only. Streams the
        pool in chunks of ``chunk`` items, so memory does not grow with N.
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self._require_fitted()
        Z = self._check_Z(Z, fitted=True)
        names = [a.name for a in self.attributes]
        if attribute is not None and attribute not in names:
            raise ValueError(f"unknown attribute {attribute!r}; known: {names}")
        if strategy == "random":
            return np.random.default_rng(seed).random(len(Z))
        if seed is not None:
            torch.manual_seed(seed)
        out = np.empty(len(Z), dtype=np.float64)
        with torch.no_grad():
            for i in range(0, len(Z), chunk):
                zt = torch.as_tensor(
                    self._standardise(Z[i : i + chunk]), dtype=torch.float32, device=self.device_
                )
                res = self._samples(zt, n_samples)
                total = torch.zeros(len(zt), dtype=torch.float64, device=self.device_)
                for a in self.attributes:
                    if attribute is not None and a.name != attribute:
                        continue
                    r = res[a.name]
                    if a.is_discrete:
                        sc = bald(r) if strategy == "bald" else max_entropy(r)
                    else:
                        sc = gaussian_bald(*r) if strategy == "bald" else gaussian_entropy(*r)
                    total += sc.double()
                out[i : i + len(zt)] = total.cpu().numpy()
        return out

    # -- persistence -------------------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        self._require_fitted()
        extra = {
            "format": FORMAT_VERSION,
            "attribute_dims": self.attribute_dims_,
            "alpha": self.alpha_,
            "n_labelled": self.n_labelled_,
            "history": self.history_,
            "device": self.device,
            "selection": getattr(self, "selection_", None),
            # What was asked for ("auto" included), so a cold refit of a loaded lens selects again.
            "requested": {
                k: getattr(self, k)
                for k in ("flow", "n_flows", "epochs", "alpha", "weight_decay", "selection_folds", "selection_pool")
            },
        }
        return {
            "config": json.dumps(asdict(self.config_)),
            "extra": json.dumps(extra),
            "state": {k: v.detach().cpu() for k, v in self.module_.state_dict().items()},
            "z_mean": torch.as_tensor(self.z_mean_),
            "z_scale": torch.as_tensor(self.z_scale_),
            "zstar_quantiles": torch.as_tensor(self.zstar_quantiles_),
        }

    def to_bytes(self) -> bytes:
        """The checkpoint (JSON config + state dict) as bytes, e.g. for a database column."""
        b = save_checkpoint(self._checkpoint())
        assert b is not None
        return b

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the checkpoint to ``path`` (loaded back with ``weights_only=True``)."""
        save_checkpoint(self._checkpoint(), path)

    @classmethod
    def from_bytes(cls, data: bytes, device: str = "auto") -> InterpretableLens:
        """A fitted lens from ``to_bytes`` output."""
        return cls._from_checkpoint(load_checkpoint(data, resolve_device(device)), device)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "auto") -> InterpretableLens:
        """A fitted lens from a file written by ``save``."""
        return cls._from_checkpoint(load_checkpoint(path, resolve_device(device)), device)

    @classmethod
    def _from_checkpoint(cls, ckpt: Mapping[str, Any], device: str) -> InterpretableLens:
        try:
            cfg = LensConfig(**json.loads(ckpt["config"]))
            extra = json.loads(ckpt["extra"])
        except (TypeError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"not an InterpretableLens checkpoint: {exc}") from exc
        if extra.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"unsupported lens checkpoint format {extra.get('format')!r} (expected {FORMAT_VERSION})"
            )
        settings = {k: getattr(cfg, k) for k in _PARAMS if hasattr(cfg, k)}
        settings.update(extra.get("requested") or {})
        lens = cls(cfg.attributes, device=device, **settings)
        lens.config_ = cfg
        lens.selection_ = extra.get("selection")
        lens.device_ = resolve_device(device)
        lens.attribute_dims_ = {k: list(v) for k, v in extra["attribute_dims"].items()}
        lens.alpha_ = float(extra["alpha"])
        lens.n_labelled_ = int(extra["n_labelled"])
        lens.history_ = list(extra["history"])
        lens.module_ = LensModule(cfg, lens.attributes, lens.attribute_dims_).to(lens.device_)
        lens.module_.load_state_dict(ckpt["state"])
        lens.module_.eval()
        lens.z_mean_ = ckpt["z_mean"].cpu().numpy()
        lens.z_scale_ = ckpt["z_scale"].cpu().numpy()
        lens.zstar_quantiles_ = ckpt["zstar_quantiles"].cpu().numpy()
        return lens


def _finite_at_least(value: Any, low: float) -> bool:
    """A real number (not a bool), finite and ≥ ``low``."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= low
    )


# Constructor settings besides ``attributes`` and ``device`` (``get_params``, checkpoints).
_PARAMS = (
    "n_flows",
    "dims_per_attribute",
    "hidden",
    "epochs",
    "alpha",
    "lr",
    "weight_decay",
    "batch_size",
    "labelled_batch_size",
    "seed",
    "pseudo_label_threshold",
    "pseudo_label_weight",
    "flow",
    "consistency_weight",
    "consistency_noise",
    "mixup_weight",
    "propagation_weight",
    "selection_folds",
    "selection_pool",
)
# Settings that fix the networks (or only matter for selection); a warm start keeps the fitted ones
# and takes every other setting from the lens's current attributes.
_STRUCTURAL = ("n_flows", "dims_per_attribute", "hidden", "flow", "selection_folds", "selection_pool")
_REFIT_KEYS = tuple(k for k in _PARAMS if k not in _STRUCTURAL)


def _as_double(flows: FlowStack) -> FlowStack:
    """A float64 CPU copy of the flow stack (the exact map runs in double precision)."""
    import copy

    return copy.deepcopy(flows).to(device="cpu", dtype=torch.float64)


def _np(v: Any) -> Any:
    if isinstance(v, tuple):
        return tuple(_np(x) for x in v)
    return v.detach().cpu().numpy()
