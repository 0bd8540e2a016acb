"""Training the lens: stochastic maximisation of ELBO (7)/(8) + α·log p_ψ(s|z*) with Adam.

``train`` is the one training loop: the estimator's fits, warm starts and every fold of the model
selection call it. It takes concrete settings (a ``LensConfig`` with no ``"auto"`` left) and returns
a ``Fit``: the trained networks with the standardisation and the dimension assignment they work in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.attributes import Attribute, hard_levels, labelled_items, observed_mask
from ml.control import ProgressFn, StopFn, Throttle, check_stop
from ml.device import intra_op_threads
from ml.flows import PlanarFlowStack
from ml.heads import ContinuousHead, default_alpha
from ml.lens.alignment import attribute_rotation
from ml.lens.config import AUTO, LensConfig
from ml.lens.model import LensModule
from ml.lens.regularisers import consistency_terms, mixup_terms, propagate_labels, soft_label_terms

CLIP_NORM = 100.0  # the gradient norm a step is clipped to


@dataclass
class Fit:
    """Trained networks and what they need: z's standardisation, the designated dims, the history."""

    module: LensModule
    z_mean: np.ndarray
    z_scale: np.ndarray
    attribute_dims: dict[str, list[int]]
    alpha: float = 0.0
    n_labelled: int = 0
    history: list[float] = field(default_factory=list)
    val_history: list[float] = field(default_factory=list)
    step_mode: str = "eager"  # how the training step ran (``Stepper.mode``)
    z_rotation: np.ndarray | None = None  # orthogonal [d, d] after the scaling (``ml.lens.alignment``)

    def standardise(self, Z: np.ndarray) -> np.ndarray:
        """The affine step before the flows, part of the exact lens map."""
        return standardise(Z, self.z_mean, self.z_scale, self.z_rotation)


def standardise(Z: np.ndarray, mean: np.ndarray, scale: np.ndarray, rotation: np.ndarray | None) -> np.ndarray:
    """z → ((z − mean) / scale) R: the lens's fixed affine layer before the flows (R orthogonal or None)."""
    out = (Z - mean) / scale
    return out if rotation is None else out @ rotation


def unstandardise(Y: np.ndarray, mean: np.ndarray, scale: np.ndarray, rotation: np.ndarray | None) -> np.ndarray:
    """The exact inverse of ``standardise`` (Rᵀ = R⁻¹)."""
    if rotation is not None:
        Y = Y @ rotation.T
    return Y * scale + mean


def scaling(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z's per-dimension mean and scale (1 where z is constant), float64."""
    std = Z.std(0)
    return Z.mean(0).astype(np.float64), np.where(std > 1e-8, std, 1.0).astype(np.float64)


def assign_dims(attributes: list[Attribute], k: int, dim: int) -> dict[str, list[int]]:
    """Attribute j owns z* dimensions [j·k, (j+1)·k) — its designated dims."""
    need = k * len(attributes)
    if need > dim:
        raise ValueError(
            f"{len(attributes)} attribute(s) × dims_per_attribute={k} need {need} z* dimensions, but Z has only {dim}"
        )
    return {a.name: list(range(j * k, (j + 1) * k)) for j, a in enumerate(attributes)}


def check_label_support(attributes: list[Attribute], labels: Mapping[str, np.ndarray]) -> None:
    """ValueError when a labelled attribute cannot be learnt: one categorical level, one continuous value."""
    for a in attributes:
        obs = labels[a.name][observed_mask(labels[a.name], a)]
        if a.is_discrete:
            obs = hard_levels(obs, a)
        if a.kind == "categorical":
            if len(np.unique(obs)) < 2:
                raise ValueError(
                    f"attribute {a.name!r}: labelled items cover {len(np.unique(obs))} level(s); "
                    "a categorical attribute needs at least 2 labelled levels"
                )
        elif a.kind == "continuous" and len(obs) and len(np.unique(obs)) < 2:
            raise ValueError(f"attribute {a.name!r}: labelled values are all equal; need at least 2 distinct values")


def auto_epochs(steps_per_epoch: int) -> int:
    """Enough epochs for ~1,500 Adam steps on small pools, at least 10 passes on large ones."""
    return int(min(200, max(10, math.ceil(1500 / steps_per_epoch))))


def label_tensors(
    attributes: list[Attribute], labels: Mapping[str, np.ndarray], device: torch.device
) -> dict[str, torch.Tensor]:
    st = {}
    for a in attributes:
        if a.is_discrete:
            st[a.name] = torch.as_tensor(as_distributions(labels[a.name], a), dtype=torch.float32, device=device)
        else:
            st[a.name] = torch.as_tensor(labels[a.name], device=device).float()
    return st


def as_distributions(y: np.ndarray, a: Attribute) -> np.ndarray:
    """A discrete attribute's labels as target distributions [N, C]: one-hot for a level index, the
    soft target as given, zeros for a missing label. The lens trains on these in every term, so an
    item several experts labelled differently pulls towards each level by its share (eqs. 7, 9)."""
    y = np.asarray(y)
    if y.ndim == 2:
        return y.astype(np.float32)
    out = np.zeros((len(y), a.n_levels), np.float32)
    known = y >= 0
    out[np.flatnonzero(known), y[known]] = 1.0
    return out


def heldout_log_lik(
    mod: LensModule, attributes: list[Attribute], z_std: torch.Tensor, st: Mapping[str, torch.Tensor]
) -> float:
    """Mean over items of Σ_j log p_ψ(s_j | f(z)) on observed attributes (nats per item)."""
    mod.eval()
    with torch.no_grad():
        zs = mod.flows.transform(z_std)
        total = torch.zeros(len(z_std), dtype=torch.float64, device=z_std.device)
        any_obs = torch.zeros(len(z_std), dtype=torch.bool, device=z_std.device)
        for a in attributes:
            head = mod.heads[a.name]
            v = st[a.name]
            if a.is_discrete:
                known = v.sum(1) > 0
                lp = (v * head.log_probs(zs)).sum(1)
            else:
                assert isinstance(head, ContinuousHead)
                known = ~torch.isnan(v)
                lp = head.log_prob(zs, head.scale(torch.where(known, v, torch.zeros_like(v))))
            total += torch.where(known, lp, torch.zeros_like(lp)).double()
            any_obs |= known
    return float(total[any_obs].mean()) if bool(any_obs.any()) else float("nan")


def regularisers(
    mod: LensModule,
    cfg: LensConfig,
    zb: torch.Tensor,
    zs_b: torch.Tensor,
    soft_b: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """The weighted semi-supervised terms (``ml.lens.regularisers``) of one minibatch, to maximise.

    ``soft_b``: the propagated soft labels and weights of the minibatch's items.
    """
    out = torch.zeros((), device=zb.device)
    if cfg.pseudo_label_threshold is not None and cfg.pseudo_label_weight > 0:
        out = out + cfg.pseudo_label_weight * mod.pseudo_label_terms(zb, cfg.pseudo_label_threshold).mean()
    if soft_b and cfg.propagation_weight > 0:
        out = out + cfg.propagation_weight * soft_label_terms(mod, zs_b, soft_b).mean()
    if cfg.consistency_weight > 0:
        out = out - cfg.consistency_weight * consistency_terms(mod, zb, cfg.consistency_noise).mean()
    if cfg.mixup_weight > 0:
        out = out - cfg.mixup_weight * mixup_terms(mod, zb).mean()
    return out


def step_loss(
    mod: LensModule,
    cfg: LensConfig,
    alpha: float,
    zb: torch.Tensor,
    sb: Mapping[str, torch.Tensor],
    z_lab: torch.Tensor | None,
    s_lab: Mapping[str, torch.Tensor] | None,
    soft_b: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """What one training step minimises: −mean ELBO (7)/(8) − α·mean log p_ψ(s|z*) over the labelled
    minibatch (``z_lab`` None: no supervised term) − the regularisers."""
    if z_lab is not None and s_lab is not None:
        if cfg.fused_step:
            elbo, zs_b, sup = mod.training_terms(zb, sb, z_lab, s_lab)
        else:
            elbo, zs_b = mod.elbo_and_sample(zb, sb)
            sup = mod.supervised_terms(z_lab, s_lab)
        loss = -elbo.mean() - alpha * sup.mean()
    else:
        elbo, zs_b = mod.elbo_and_sample(zb, sb)
        loss = -elbo.mean()
    return loss - regularisers(mod, cfg, zb, zs_b, soft_b)


class Stepper:
    """One training step's loss and gradients (``step_loss``, then backward): compiled by
    ``torch.compile`` when the settings ask for it (``compile_step``), else eager, and eager again
    whenever compiling fails.

    On a GPU a step of the lens is bound by kernel launches, not arithmetic; compiling fuses its
    small kernels, and on CUDA the "reduce-overhead" mode also replays the step as a CUDA graph (one
    launch). A compiler error can surface in the forward call or, compiled lazily, in the backward
    pass of the first step of each new shape: either way the gradients are dropped and the step is
    taken again eagerly. ``mode`` says what ran: "compiled", "eager", or "eager (…)" with the reason
    compiling was given up, which the fit records.
    """

    def __init__(self, mod: LensModule, cfg: LensConfig, alpha: float, device: torch.device) -> None:
        self.mod = mod
        self.eager = functools.partial(step_loss, mod, cfg, alpha)
        self.compiled: Any = None
        self.mode = "eager"
        if cfg.compile_step:
            try:
                self.compiled = torch.compile(
                    self.eager, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False
                )
                self.mode = "compiled"
            except Exception as exc:  # no compiler backend in this build or on this platform
                self.mode = f"eager (torch.compile unavailable: {_first_line(exc)})"

    def loss_and_grad(self, *args: Any) -> torch.Tensor:
        """The step's loss (detached), its gradients left in the parameters' ``.grad``."""
        if self.compiled is not None:
            try:
                loss = self.compiled(*args)
                loss.backward()
                return loss.detach()
            except Exception as exc:
                self.compiled = None
                self.mode = f"eager (compiling failed: {_first_line(exc)})"
                self.mod.zero_grad(set_to_none=True)
        loss = self.eager(*args)
        loss.backward()
        return loss.detach()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def make_adam(mod: nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """Adam in one fused kernel per step, without a host round trip on a GPU where torch offers it.

    The default (for-each) Adam reads each parameter's step count with ``.item()``: on a GPU, a wait
    for the device per parameter and step. The fused kernel updates every parameter in one call, and
    with ``capturable`` (CUDA) keeps the step counts on the device. On the CPU the step counts live in
    host memory anyway, so reading them waits for nothing.
    """
    extra = {"capturable": True} if device.type == "cuda" else {}
    try:
        return torch.optim.Adam(mod.parameters(), lr=lr, weight_decay=weight_decay, fused=True, **extra)
    except (RuntimeError, ValueError):  # a device or build without the fused kernel
        return torch.optim.Adam(mod.parameters(), lr=lr, weight_decay=weight_decay)


def train(
    Z: np.ndarray,
    labels: Mapping[str, np.ndarray],
    attributes: list[Attribute],
    cfg: LensConfig,
    *,
    device: torch.device,
    start: Fit | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    validation: tuple[np.ndarray, Mapping[str, np.ndarray]] | None = None,
    patience: int | None = None,
) -> Fit:
    """Train with the concrete settings ``cfg``: from scratch, or on from ``start`` (a warm start).

    ``validation`` (Z, labels): after every epoch, the mean over its labelled items of
    Σ_j log p_ψ(s_j | f(z)) — the model-selection criterion — is appended to ``val_history``.
    ``patience``: stop once that many epochs passed without a better value (early stopping); the
    weights are those of the last epoch.
    """
    if cfg.needs_selection:
        raise ValueError(f"train needs concrete settings; {AUTO!r} is left in {cfg.to_dict()}")
    cfg = cfg.for_device(device, len(Z))
    with intra_op_threads(cfg.threads):
        return _train(Z, labels, attributes, cfg, device, start, progress, should_stop, validation, patience)


def _train(
    Z: np.ndarray,
    labels: Mapping[str, np.ndarray],
    attributes: list[Attribute],
    cfg: LensConfig,
    device: torch.device,
    start: Fit | None,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    validation: tuple[np.ndarray, Mapping[str, np.ndarray]] | None,
    patience: int | None,
) -> Fit:
    n, d = Z.shape
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if start is None:
        dims = assign_dims(attributes, cfg.dims_per_attribute, d)
        z_mean, z_scale = scaling(Z)
        # The alignment: each attribute's linear direction on its designated dims before the flows.
        rotation = (
            attribute_rotation(standardise(Z, z_mean, z_scale, None), labels, attributes, dims) if cfg.align else None
        )
        fit = Fit(
            module=LensModule(cfg, d, attributes, dims).to(device),
            z_mean=z_mean,
            z_scale=z_scale,
            attribute_dims=dims,
            z_rotation=rotation,
        )
    else:
        fit = Fit(
            module=start.module.to(device),
            z_mean=start.z_mean,
            z_scale=start.z_scale,
            attribute_dims=start.attribute_dims,
            z_rotation=start.z_rotation,
        )
    mod = fit.module
    if isinstance(mod.flows, PlanarFlowStack):
        mod.flows.fused = cfg.fused_step
    lab_idx = labelled_items(labels, attributes)
    alpha = cfg.alpha if cfg.alpha is not None else default_alpha(n, len(lab_idx))
    fit.alpha, fit.n_labelled = float(alpha), len(lab_idx)  # type: ignore[arg-type]

    Z_std = fit.standardise(Z)
    zt = torch.as_tensor(Z_std, dtype=torch.float32, device=device)
    st = label_tensors(attributes, labels, device)
    soft: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if cfg.propagation_weight > 0:
        for name, (p_hat, w) in propagate_labels(Z_std, labels, attributes, seed=cfg.seed).items():
            soft[name] = (torch.as_tensor(p_hat, device=device), torch.as_tensor(w, device=device))
    val = None
    if validation is not None:
        val = (
            torch.as_tensor(fit.standardise(validation[0]), dtype=torch.float32, device=device),
            label_tensors(attributes, validation[1], device),
        )
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    epochs = cfg.epochs if cfg.epochs is not None else auto_epochs(steps_per_epoch)
    total = epochs * steps_per_epoch
    opt = make_adam(mod, cfg.lr, float(cfg.weight_decay), device)
    params = [p for p in mod.parameters() if p.requires_grad]
    supervised = bool(len(lab_idx)) and alpha > 0  # type: ignore[operator]
    stepper = Stepper(mod, cfg, float(alpha), device)  # type: ignore[arg-type]
    throttle = Throttle(progress)
    mod.train()
    step = 0
    for epoch in range(epochs):
        perm = torch.as_tensor(rng.permutation(n), device=device)
        # The epoch's loss adds up on the device and is read at progress ticks only: a float() per step
        # would make the host wait for the device every step.
        running = torch.zeros((), device=device)
        for b in range(steps_per_epoch):
            check_stop(should_stop)
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            zb, sb = zt[idx], {k: v[idx] for k, v in st.items()}
            z_lab = s_lab = None
            if supervised:
                li = torch.as_tensor(
                    rng.choice(
                        lab_idx,
                        size=min(cfg.labelled_batch_size, len(lab_idx)),
                        replace=len(lab_idx) < cfg.labelled_batch_size,
                    ),
                    device=device,
                )
                z_lab, s_lab = zt[li], {k: v[li] for k, v in st.items()}
            opt.zero_grad(set_to_none=True)
            loss = stepper.loss_and_grad(zb, sb, z_lab, s_lab, {k: (p[idx], w[idx]) for k, (p, w) in soft.items()})
            nn.utils.clip_grad_norm_(params, CLIP_NORM, foreach=True)  # one norm kernel for all parameters
            opt.step()
            running += loss
            step += 1
            if throttle.due():
                throttle(step / total, {"epoch": epoch + 1, "loss": float(running) / (b + 1)})
        fit.history.append(float(running) / steps_per_epoch)
        if val is not None:
            fit.val_history.append(heldout_log_lik(mod, attributes, *val))
            mod.train()
            finite = np.isfinite(fit.val_history)
            best = int(np.nanargmax(fit.val_history)) if finite.any() else epoch
            if patience is not None and epoch - best >= patience:
                break
    mod.eval()
    fit.step_mode = stepper.mode
    throttle(1.0, {"epoch": len(fit.history), "loss": fit.history[-1] if fit.history else float("nan")}, final=True)
    return fit
