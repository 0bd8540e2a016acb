"""Model selection for the lens that cannot cheat: k-fold cross-validation on the labelled items alone.

A lens with few labels is held back by generalisation (it fits its labelled items and little else),
so its settings must be judged on labels it did not train on — and only on labels the user gave it:
the metric's evaluation items are never looked at. For each candidate setting and each of k folds of
the labelled items, a lens is trained with that fold's labels hidden (and its items left out) and
scored after every epoch by the held-out log-likelihood Σ_j log p_ψ(s_j | f(z)) of the hidden
labels; early stopping picks the epoch. A candidate's score is its mean over folds of the best
epoch's value. The search is staged (flow family and depth, then α, then weight decay), each stage
keeping the previous stages' winners, so its cost grows with the sum, not the product, of the grid
sizes; a stage whose candidates all score below the incumbent keeps the incumbent. A winner still
improving when the screening budget ran out is trained again on the same folds with a longer
budget, to measure its own length. The winner's best length, kept as the same number of passes
over the labelled items (the final fit has all of them, a fold fit (k−1)/k) and converted to epochs
over the whole pool, sets the final fit's length.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from ml.attributes import Attribute, hard_levels, labelled_items, observed_mask, restrict_labels
from ml.control import ProgressFn, StopFn, sub_progress
from ml.heads import default_alpha
from ml.lens.config import AUTO, LensConfig
from ml.lens.folds import train_folds
from ml.lens.train import train

# Candidate (flow family, depth) pairs when ``flow="auto"``. Planar keeps the requested depth; the
# coupling depths are the ones first measured on MNIST (8 affine, 4 spline couplings).
FLOW_CANDIDATES: tuple[tuple[str, int | None], ...] = (
    ("planar", None),
    ("coupling", 4),
    ("coupling", 8),
    ("spline", 4),
)
# α candidates when ``alpha="auto"``: around M2's 0.1·N weighting (see ``ml.heads.default_alpha``).
ALPHA_CANDIDATES = (100.0, 300.0, 1000.0)
WEIGHT_DECAY_CANDIDATES = (0.0, 1e-4, 1e-3)
# Early stopping, counted in Adam steps (each sees one minibatch of the pool and one of the labelled
# items, whatever the pool's size, so a step count carries over from the selection's subsample to the
# whole pool once ``labelled_pass_steps`` has allowed for the final fit's extra labels): the budget of
# a selection fit, and how long it may go without a better held-out value.
# Measured on MNIST (60,000 pool, 1,000 labels, label propagation): 16 planar flows gained 5 points of
# digit score from 2,350 to 9,400 steps, so the budget must reach thousands of steps.
SELECTION_MAX_STEPS = 2400
SELECTION_PATIENCE_STEPS = 600
# The winner's length, when it was still improving at the end of the screening budget (the grid
# compares settings at equal budgets; only the winner needs its own length).
LENGTH_MAX_STEPS = 9600
LENGTH_PATIENCE_STEPS = 1200
SELECTION_MIN_EPOCHS = 5


def _folds(
    labels: Mapping[str, np.ndarray], attributes: list[Attribute], lab_idx: np.ndarray, k: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, held-out) splits of the labelled items, stratified by the first discrete attribute."""
    strata = None
    for a in attributes:
        if a.is_discrete:
            y = hard_levels(labels[a.name][lab_idx], a)
            if observed_mask(y, a).all() and np.unique(y, return_counts=True)[1].min() >= k:
                strata = y
            break
    if strata is not None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return [(lab_idx[tr], lab_idx[te]) for tr, te in splitter.split(lab_idx, strata)]
    splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    return [(lab_idx[tr], lab_idx[te]) for tr, te in splitter.split(lab_idx)]


def labelled_pass_steps(
    best_steps: list[int], fold_train_sizes: list[int], n_labelled: int, labelled_batch: int
) -> int:
    """Optimiser steps for the final fit: the folds' best lengths as passes over the labelled items.

    Early stopping guards against memorising the labels, and memorisation grows with how often each
    label is revisited. Each step draws min(``labelled_batch``, m) of a fit's m labelled items, so a
    fold fit on m of them passes over them min(b, m)/m times a step and the final fit, on all
    ``n_labelled``, min(b, n)/n times: the fold's best step count is scaled by the ratio, keeping the
    number of passes — the usual "refit on all the data for the cross-validated number of epochs".
    With k folds of at least b labels that is k/(k−1) times as many steps; with ``labelled_batch``
    0 (no supervised term, α = 0) the step count is kept. (Labelled items also sit in the pool's
    minibatches, but the labelled minibatch dominates: b/m per step against batch/pool.) The
    median over folds.
    """
    if len(best_steps) != len(fold_train_sizes) or not best_steps:
        raise ValueError(f"one best length per fold: got {len(best_steps)} lengths for {len(fold_train_sizes)} folds")
    if min(fold_train_sizes) < 1 or n_labelled < max(fold_train_sizes):
        raise ValueError(f"fold train sizes {fold_train_sizes} must lie in 1..{n_labelled} (the labelled items)")
    if labelled_batch < 0:
        raise ValueError(f"labelled_batch must be ≥ 0, got {labelled_batch}")

    def passes_per_step(m: int) -> float:
        return min(labelled_batch, m) / m if labelled_batch else 1.0

    final_rate = passes_per_step(n_labelled)
    scaled = [
        steps * passes_per_step(size) / final_rate for steps, size in zip(best_steps, fold_train_sizes, strict=True)
    ]
    return math.ceil(round(float(np.median(scaled)), 6))  # round: 1500.0000001 is 1,500 steps


def staged_search(
    stages: list[list[dict[str, Any]]],
    base: dict[str, Any],
    evaluate: Callable[[dict[str, Any]], dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Coordinate search over ``stages``; (every record in order, the best record).

    Each stage varies one group of settings on top of the best settings so far. The incumbent —
    the best record of the earlier stages — competes with the stage's candidates: a stage whose
    values all score worse keeps the incumbent's (for instance the α the flow stage ran at), rather
    than promoting the least bad of them; a candidate equal to the incumbent is not evaluated again.
    ``evaluate(settings)`` returns a record with "settings" and "score" (higher is better); scores
    are comparable across stages because the criterion, the held-out log-likelihood of the labels on
    the same folds, does not depend on the settings being chosen. (The incumbent's score is the best
    of its stage, so a later stage must beat a maximum: the search leans slightly towards keeping it.)
    """
    candidates: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for stage in stages:
        for change in stage:
            settings = {**base, **change}
            if best is not None and settings == best["settings"]:
                continue  # the incumbent's own values (a base value among the stage's): already scored
            record = evaluate(settings)
            candidates.append(record)
            if best is None or record["score"] > best["score"]:
                best = record
        assert best is not None, "every stage has at least one candidate"
        base = dict(best["settings"])
    assert best is not None, "at least one stage"
    return candidates, best


def select_settings(
    cfg: LensConfig,
    attributes: list[Attribute],
    Z: np.ndarray,
    labels: Mapping[str, np.ndarray],
    *,
    device: torch.device,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, Any]:
    """Choose ``cfg``'s "auto" settings and its epochs by k-fold CV; a JSON-able record of the search.

    Every fold fit is a call of ``ml.lens.train.train`` with concrete settings.

    Returns {"chosen": {setting: value, ..., "epochs": E}, "folds": k, "criterion", "candidates":
    [{"settings", "score", "fold_scores", "best_epochs", "best_steps", "ran_out"}], "length" (the
    winner's longer-budget record, or None when its screening fits stopped early), "final_steps"
    (the optimiser steps the final fit's epochs are rounded up from, ``labelled_pass_steps``; None
    when the user set ``epochs``), "selection_items", "seconds"}.
    """
    t0 = time.perf_counter()
    n = len(Z)
    cfg = cfg.for_device(device, n)  # unset batch size and step: the device's, as the final fit's
    k = cfg.selection_folds
    lab_idx = labelled_items(labels, attributes)
    if len(lab_idx) < 2 * k:
        raise ValueError(
            f"selection_folds={k}: automatic settings need at least {2 * k} labelled items, got {len(lab_idx)}"
        )
    rng = np.random.default_rng(cfg.seed)
    unlab = np.setdiff1d(np.arange(n), lab_idx)
    if len(unlab) > cfg.selection_pool:
        unlab = np.sort(rng.choice(unlab, cfg.selection_pool, replace=False))
    folds = _folds(labels, attributes, lab_idx, k, cfg.seed)

    # α at the labelled fraction of the whole pool, as the final fit would use: each selection fit
    # sees a subsample, where ``default_alpha`` would give another value.
    base: dict[str, Any] = {"alpha": default_alpha(n, len(lab_idx))} if cfg.alpha is None else {}
    stages: list[list[dict[str, Any]]] = []
    if cfg.flow == AUTO:
        stages.append([{"flow": f, "n_flows": cfg.n_flows if depth is None else depth} for f, depth in FLOW_CANDIDATES])
    else:
        base["flow"] = cfg.flow
    if cfg.alpha == AUTO:
        stages.append([{"alpha": a} for a in ALPHA_CANDIDATES])
        # Earlier stages run at the labelled-fraction default, as a fit without selection would.
        base["alpha"] = default_alpha(n, len(lab_idx))
    if cfg.weight_decay == AUTO:
        stages.append([{"weight_decay": w} for w in WEIGHT_DECAY_CANDIDATES])
        base["weight_decay"] = 0.0
    if not stages:
        stages.append([{}])  # only the epochs are chosen

    length_stage = cfg.epochs is None
    n_fits = (sum(len(s) for s in stages) + int(length_stage)) * k
    done = 0

    def cross_validate(settings: dict[str, Any], max_steps: int, patience_steps: int) -> dict[str, Any]:
        """Train ``settings`` once per fold with early stopping; the fold scores and best lengths."""
        nonlocal done

        def budget(n_rows: int) -> tuple[int, int, int]:
            steps_per_epoch = max(1, math.ceil(n_rows / cfg.batch_size))
            epochs = cfg.epochs or max(SELECTION_MIN_EPOCHS, math.ceil(max_steps / steps_per_epoch))
            return steps_per_epoch, epochs, max(2, math.ceil(patience_steps / steps_per_epoch))

        runs: list[tuple[list[float], int, int, int]] = []  # (curve, steps per epoch, epochs, patience) per fold
        if cfg.selection_batched:
            # One batched model for the k folds (ml.lens.folds): the pool is every labelled item plus the
            # unlabelled sample, each fold's held-out items unlabelled in it.
            steps_per_epoch, epochs, patience = budget(len(lab_idx) + len(unlab))
            sub = sub_progress(progress, done / n_fits, (done + k) / n_fits, candidate=settings)
            curves = train_folds(
                Z,
                labels,
                attributes,
                replace(cfg, **settings, epochs=epochs).check(),
                folds,
                unlab,
                device=device,
                patience=patience,
                progress=sub,
                should_stop=should_stop,
            )
            done += k
            runs = [(c, steps_per_epoch, epochs, patience) for c in curves]
        else:
            for tr, te in folds:
                rows = np.concatenate([tr, unlab])
                steps_per_epoch, epochs, patience = budget(len(rows))
                child = replace(cfg, **settings, epochs=epochs).check()
                sub = sub_progress(progress, done / n_fits, (done + 1) / n_fits, candidate=settings)
                curve = train(
                    Z[rows],
                    restrict_labels(labels, attributes, rows),
                    attributes,
                    child,
                    device=device,
                    progress=sub,
                    should_stop=should_stop,
                    validation=(Z[te], restrict_labels(labels, attributes, te)),
                    patience=patience,
                ).val_history
                done += 1
                runs.append((curve, steps_per_epoch, epochs, patience))
        fold_scores, best_steps, best_epochs, ran_out = [], [], [], []
        for curve, steps_per_epoch, epochs, patience in runs:
            e = int(np.nanargmax(curve)) if np.isfinite(curve).any() else len(curve) - 1
            fold_scores.append(float(curve[e]))
            best_epochs.append(e + 1)
            best_steps.append((e + 1) * steps_per_epoch)
            # Still improving within the last patience window when the budget ran out.
            ran_out.append(bool(len(curve) == epochs and epochs - (e + 1) < patience))
        return {
            "settings": dict(settings),
            "score": float(np.mean(fold_scores)),
            "fold_scores": fold_scores,
            "best_epochs": best_epochs,
            "best_steps": best_steps,
            "ran_out": ran_out,
        }

    candidates, best = staged_search(
        stages, base, lambda settings: cross_validate(settings, SELECTION_MAX_STEPS, SELECTION_PATIENCE_STEPS)
    )
    # The screening budget keeps the grid affordable, but a winner still improving when it ran out
    # has not found its length: measure that again, on the same folds, with a longer budget.
    length = None
    if length_stage and any(best["ran_out"]):
        length = cross_validate(best["settings"], LENGTH_MAX_STEPS, LENGTH_PATIENCE_STEPS)
    if progress is not None:
        progress(1.0, {"stage": "selection done"})  # also when fits were skipped or not needed
    final_steps, epochs = None, cfg.epochs
    if epochs is None:
        alpha = best["settings"].get("alpha", cfg.alpha)
        final_steps = labelled_pass_steps(
            (length or best)["best_steps"],
            [len(tr) for tr, _ in folds],
            len(lab_idx),
            cfg.labelled_batch_size if alpha else 0,
        )
        # The chosen number of optimiser steps, as epochs over the whole pool the final fit sees.
        epochs = int(max(1, math.ceil(final_steps / max(1, math.ceil(n / cfg.batch_size)))))
    chosen = {**best["settings"], "epochs": epochs}
    return {
        "chosen": chosen,
        "folds": k,
        "criterion": "mean held-out Σ_j log p(s_j | f(z)) over labelled items, best epoch per fold",
        "candidates": candidates,
        "length": length,
        "final_steps": final_steps,
        "selection_items": {"labelled": len(lab_idx), "unlabelled": len(unlab)},
        "seconds": round(time.perf_counter() - t0, 2),
    }
