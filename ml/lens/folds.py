"""The k folds of the model selection trained as one batched model (``torch.func.vmap``).

``ml.lens.selection`` scores a candidate setting by training it once per fold of the labelled items.
The k fits share the networks' shapes, the settings and the unlabelled pool, and differ only in
which labels they see, so their parameters can be stacked along a leading fold axis and the k
training steps run as one: ``vmap`` over ``step_loss`` (``ml.lens.train``) with each fold's
parameters and labels. On a GPU, bound by kernel launches rather than arithmetic, that is k times
fewer launches per step; on a CPU it measured slower than k fused fits one after the other (see
``ml.device.sizes_for``), which is why the device decides (``LensConfig.selection_batched``).

Every fold's fit is the one ``ml.lens.train.train`` would make, with two differences: the pool is
shared, so a fold's held-out items stay in it as unlabelled items (their labels are never seen:
the transductive setting the product's pool always is), and z is scaled once over that pool (each
fold's alignment rotation, ``LensConfig.align``, comes from its own labels).
The planar flows run flow by flow inside ``vmap`` (the fused stack is a custom autograd node
without a batching rule). Gradient clipping and Adam act per fold, as k optimisers would: Adam's
update is elementwise, and the clipping norm is taken over each fold's own gradients.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.attributes import Attribute, labelled_items, restrict_labels
from ml.control import ProgressFn, StopFn, Throttle, check_stop
from ml.device import intra_op_threads
from ml.flows import PlanarFlowStack
from ml.heads import default_alpha
from ml.lens.alignment import attribute_rotation
from ml.lens.config import AUTO, LensConfig
from ml.lens.model import LensModule
from ml.lens.regularisers import propagate_labels
from ml.lens.train import (
    CLIP_NORM,
    assign_dims,
    heldout_log_lik,
    label_tensors,
    make_adam,
    scaling,
    standardise,
    step_loss,
)


class _StepLoss(nn.Module):
    """``step_loss`` as a module's forward, so ``torch.func.functional_call`` can swap its parameters."""

    def __init__(self, mod: LensModule, cfg: LensConfig, alpha: float) -> None:
        super().__init__()
        self.mod, self.cfg, self.alpha = mod, cfg, alpha

    def forward(self, *args: Any) -> torch.Tensor:
        return step_loss(self.mod, self.cfg, self.alpha, *args)


def train_folds(
    Z: np.ndarray,
    labels: Mapping[str, np.ndarray],
    attributes: list[Attribute],
    cfg: LensConfig,
    folds: list[tuple[np.ndarray, np.ndarray]],
    unlabelled: np.ndarray,
    *,
    device: torch.device,
    patience: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> list[list[float]]:
    """Train one lens per fold (train, held-out indices into ``Z``) as one batched model.

    The pool is every fold's items plus ``unlabelled``. After every epoch each fold's held-out items
    are scored as ``train``'s ``validation`` does (mean Σ_j log p_ψ(s_j | f(z)) of their labels);
    training stops once every fold went ``patience`` epochs without a better value (or after
    ``cfg.epochs``). Returns the validation curve of each fold.
    """
    if cfg.needs_selection:
        raise ValueError(f"train_folds needs concrete settings; {AUTO!r} is left in {cfg.to_dict()}")
    if cfg.epochs is None:
        raise ValueError("train_folds needs epochs")
    rows = np.unique(np.concatenate([*(np.concatenate([tr, te]) for tr, te in folds), unlabelled]))
    cfg = cfg.for_device(device, len(rows))
    with intra_op_threads(cfg.threads):
        return _train_folds(Z, labels, attributes, cfg, folds, rows, device, patience, progress, should_stop)


def _train_folds(
    Z: np.ndarray,
    labels: Mapping[str, np.ndarray],
    attributes: list[Attribute],
    cfg: LensConfig,
    folds: list[tuple[np.ndarray, np.ndarray]],
    rows: np.ndarray,
    device: torch.device,
    patience: int | None,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> list[list[float]]:
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    k, n, d = len(folds), len(rows), Z.shape[1]
    rng = np.random.default_rng(cfg.seed)
    dims = assign_dims(attributes, cfg.dims_per_attribute, d)
    z_mean, z_scale = scaling(Z[rows])
    z_std = standardise(Z[rows], z_mean, z_scale, None)

    # Per fold: its labels (its training items' only), labelled positions, propagated soft labels, and
    # z as its lens sees it (rotated by the alignment its own labels give, as a sequential fit would).
    fold_labels = [restrict_labels(labels, attributes, rows, keep=tr) for tr, _ in folds]
    if cfg.align:
        zt = torch.stack(
            [
                torch.as_tensor(z_std @ attribute_rotation(z_std, lab, attributes, dims), dtype=torch.float32)
                for lab in fold_labels
            ]
        ).to(device)
    else:
        zt = torch.as_tensor(z_std, dtype=torch.float32, device=device).expand(k, n, d)  # (k, n, d)
    st = [label_tensors(attributes, lab, device) for lab in fold_labels]
    stacked = {name: torch.stack([s[name] for s in st]) for name in st[0]}  # (k, n, …)
    lab_pos = [labelled_items(lab, attributes) for lab in fold_labels]  # positions in ``rows``
    alpha = float(cfg.alpha) if cfg.alpha is not None else default_alpha(n, min(len(p) for p in lab_pos))
    soft: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if cfg.propagation_weight > 0:
        per_fold = [
            propagate_labels(zt[f].cpu().numpy(), lab, attributes, seed=cfg.seed) for f, lab in enumerate(fold_labels)
        ]
        for name in per_fold[0]:
            if all(name in p for p in per_fold):
                soft[name] = (
                    torch.stack([torch.as_tensor(p[name][0], device=device) for p in per_fold]),
                    torch.stack([torch.as_tensor(p[name][1], device=device) for p in per_fold]),
                )
    val = [
        (
            zt[f, np.searchsorted(rows, te)],  # ``rows`` is sorted and holds every held-out item
            label_tensors(attributes, restrict_labels(labels, attributes, te), device),
        )
        for f, (_, te) in enumerate(folds)
    ]

    # k copies of the same initial lens (a sequential fold fit seeds each the same way).
    modules = []
    for _ in range(k):
        torch.manual_seed(cfg.seed)
        modules.append(LensModule(cfg, d, attributes, dims).to(device))
    params, buffers = stack_module_state(modules)
    base = _StepLoss(copy.deepcopy(modules[0]).to("meta"), cfg, alpha)
    if isinstance(base.mod.flows, PlanarFlowStack):
        base.mod.flows.fused = False
    scratch = modules[0]  # reloaded with one fold's weights to score its held-out items

    def fold_loss(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *args: Any) -> torch.Tensor:
        named = ({f"mod.{n}": v for n, v in p.items()}, {f"mod.{n}": v for n, v in b.items()})
        return functional_call(base, named, args)

    supervised = alpha > 0 and all(len(p) for p in lab_pos)
    lab_dim = 0 if supervised else None
    in_dims = (0, 0, 0, 0, lab_dim, lab_dim, 0)  # params, buffers, zb, sb, z_lab, s_lab, soft_b
    batched_step = vmap(grad_and_value(fold_loss), in_dims=in_dims, randomness="different")
    # The stacked parameters, trained by one Adam: its update is elementwise, so k folds' optimisers in one.
    live = {name: nn.Parameter(v) for name, v in params.items()}
    opt = make_adam(nn.ParameterList(live.values()), cfg.lr, float(cfg.weight_decay), device)
    folds_axis = torch.arange(k, device=device)[:, None]

    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    curves: list[list[float]] = [[] for _ in range(k)]
    throttle = Throttle(progress)
    step, total = 0, cfg.epochs * steps_per_epoch
    for epoch in range(cfg.epochs):
        perm = torch.as_tensor(rng.permutation(n), device=device)
        for b in range(steps_per_epoch):
            check_stop(should_stop)
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            zb = zt[:, idx]
            sb = {name: v[:, idx] for name, v in stacked.items()}
            z_lab = s_lab = None
            if supervised:
                # (k, L): each fold's own labelled items; always L of them (drawn with replacement when a
                # fold has fewer), so the folds' batches stack.
                li = torch.as_tensor(
                    np.stack(
                        [
                            rng.choice(p, size=cfg.labelled_batch_size, replace=len(p) < cfg.labelled_batch_size)
                            for p in lab_pos
                        ]
                    ),
                    device=device,
                )
                z_lab = zt[folds_axis, li]
                s_lab = {name: v[folds_axis, li] for name, v in stacked.items()}
            soft_b = {name: (p[:, idx], w[:, idx]) for name, (p, w) in soft.items()}
            grads, _ = batched_step(live, buffers, zb, sb, z_lab, s_lab, soft_b)
            # Per-fold clipping: each fold's gradient norm over its own parameters.
            sq = torch.stack([g.reshape(k, -1).pow(2).sum(1) for g in grads.values()]).sum(0)
            scale = (CLIP_NORM / (sq.sqrt() + 1e-6)).clamp(max=1.0)
            for name, g in grads.items():
                live[name].grad = g * scale.view(-1, *([1] * (g.dim() - 1)))
            opt.step()
            step += 1
            if throttle.due():
                throttle(step / total, {"epoch": epoch + 1})
        for f in range(k):
            with torch.no_grad():
                for name, p in scratch.named_parameters():
                    p.copy_(live[name][f])
            curves[f].append(heldout_log_lik(scratch, attributes, *val[f]))
        if patience is not None and all(
            np.isfinite(c).any() and epoch - int(np.nanargmax(c)) >= patience for c in curves
        ):
            break
    throttle(1.0, {"epoch": len(curves[0])}, final=True)
    return curves
