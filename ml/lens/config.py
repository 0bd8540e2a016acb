"""Every hyper-parameter of the lens, once: its default, its kind, its check and the words of its refusal.

A setting is *structural* (it fixes the networks' shapes: a warm start cannot change it), *training*
(it steers a fit and may change between fits) or *selection* (it steers the k-fold search of
``ml.lens.selection``). The estimator, the selection, the worker's settings validation and the
checkpoint all read this one table; nothing here imports torch, so settings can be checked where
torch is not loaded (a project's settings are refused when saved, before any job runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

AUTO = "auto"
STRUCTURAL, TRAINING, SELECTION = "structural", "training", "selection"
# The flow families of ``ml.flows`` (planar is the paper's); ``ml.flows`` builds exactly these.
FLOW_NAMES = ("planar", "coupling", "spline")


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) and math.isfinite(v)


Check = tuple[Callable[[Any], bool], str]
_INT_GE0: Check = (lambda v: _is_int(v) and v >= 0, "an integer ≥ 0")
_INT_GE1: Check = (lambda v: _is_int(v) and v >= 1, "an integer ≥ 1")
_WEIGHT: Check = (lambda v: _is_number(v) and v >= 0, "a finite number ≥ 0")


def _setting(default: Any, kind: str, check: Check, doc: str) -> Any:
    return field(default=default, metadata={"kind": kind, "check": check, "doc": doc})


@dataclass
class LensConfig:
    """The lens's hyper-parameters (also the ``config`` of its checkpoints). ``"auto"`` values of
    ``flow``, ``alpha`` and ``weight_decay`` are chosen by cross-validation before the final fit."""

    flow: str = _setting(
        "planar",
        STRUCTURAL,
        (lambda v: v == AUTO or v in FLOW_NAMES, f'one of {list(FLOW_NAMES)} or "auto"'),
        "flow family (ml.flows; planar is the paper's eq. 5)",
    )
    # The defaults are what measured best: 32 planar flows of width 128 with label propagation lift the
    # served digit score at every label count (EXPERIMENTS.md "The label curve"; README, lenslab bench al).
    n_flows: int = _setting(32, STRUCTURAL, _INT_GE0, "flows in the stack, T of eq. (5)")
    dims_per_attribute: int = _setting(1, STRUCTURAL, _INT_GE1, "z* dimensions designated per attribute")
    align: bool = _setting(
        True,
        STRUCTURAL,
        (lambda v: isinstance(v, bool), "true or false"),
        "rotate z before the flows so each attribute's best linear direction (fitted on the labels) lies on "
        "its designated dims (ml.lens.alignment)",
    )
    hidden: int = _setting(128, STRUCTURAL, _INT_GE1, "width of q0's and p_θ's hidden layers")
    epochs: int | None = _setting(
        None,
        TRAINING,
        (lambda v: v is None or (_is_int(v) and v >= 1), "an integer ≥ 1 or null"),
        "passes over the pool (None: ~1,500 Adam steps, or chosen by selection)",
    )
    alpha: float | str | None = _setting(
        None,
        TRAINING,
        (lambda v: v is None or v == AUTO or (_is_number(v) and v >= 0), 'a finite number ≥ 0, "auto" or null'),
        "supervision weight α (None: ml.heads.default_alpha)",
    )
    lr: float | None = _setting(
        None,
        TRAINING,
        (lambda v: v is None or (_is_number(v) and v > 0), "a finite number > 0 or null"),
        "Adam step (None: the device's, ml.device.sizes_for)",
    )
    weight_decay: float | str = _setting(
        0.0,
        TRAINING,
        (lambda v: v == AUTO or (_is_number(v) and v >= 0), 'a finite number ≥ 0 or "auto"'),
        "Adam weight decay",
    )
    batch_size: int | None = _setting(
        None,
        TRAINING,
        (lambda v: v is None or (_is_int(v) and v >= 1), "an integer ≥ 1 or null"),
        "items per ELBO minibatch (None: the device's, ml.device.sizes_for)",
    )
    threads: int | None = _setting(
        None,
        TRAINING,
        (lambda v: v is None or (_is_int(v) and v >= 1), "an integer ≥ 1 or null"),
        "torch intra-op threads while training (None: the device's, ml.device.sizes_for)",
    )
    labelled_batch_size: int = _setting(128, TRAINING, _INT_GE1, "labelled items per α-term minibatch")
    seed: int = _setting(0, TRAINING, _INT_GE0, "seed of the initialisation and the minibatch order")
    pseudo_label_threshold: float | None = _setting(
        None,
        TRAINING,
        (lambda v: v is None or (_is_number(v) and 0.0 < v < 1.0), "a number in (0, 1) or null"),
        "confidence τ of pseudo-labels (None: off)",
    )
    pseudo_label_weight: float = _setting(10.0, TRAINING, _WEIGHT, "weight of the pseudo-label term")
    consistency_weight: float = _setting(0.0, TRAINING, _WEIGHT, "weight of the consistency term")
    consistency_noise: float = _setting(0.3, TRAINING, _WEIGHT, "noise of the consistency term (std of z)")
    mixup_weight: float = _setting(0.0, TRAINING, _WEIGHT, "weight of the mixup (ICT) term")
    propagation_weight: float = _setting(3000.0, TRAINING, _WEIGHT, "weight of the label-propagation term")
    fused_step: bool = _setting(
        True,
        TRAINING,
        (lambda v: isinstance(v, bool), "true or false"),
        "planar flows as one autograd node and one pass for the ELBO and α batches (false: flow by flow)",
    )
    compile_step: bool | None = _setting(
        None,
        TRAINING,
        (lambda v: v is None or isinstance(v, bool), "true, false or null"),
        "compile the training step with torch.compile, falling back to eager if that fails "
        "(None: the device's, ml.device.sizes_for: on CUDA only)",
    )
    selection_folds: int = _setting(
        3, SELECTION, (lambda v: _is_int(v) and v >= 2, "an integer ≥ 2"), "folds of the cross-validated selection"
    )
    selection_pool: int = _setting(10_000, SELECTION, _INT_GE1, "unlabelled items a selection fit sees")
    selection_batched: bool | None = _setting(
        None,
        SELECTION,
        (lambda v: v is None or isinstance(v, bool), "true, false or null"),
        "train the selection's k folds as one batched model (ml.lens.folds; None: the device's, "
        "ml.device.sizes_for: on CUDA only)",
    )

    # -- the table ------------------------------------------------------------------------------
    @classmethod
    def names(cls, kind: str | None = None) -> tuple[str, ...]:
        """Setting names in declaration order, all or of one kind (structural / training / selection)."""
        return tuple(f.name for f in fields(cls) if kind is None or f.metadata["kind"] == kind)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls)}

    @classmethod
    def check_value(cls, key: str, value: Any, where: str = "lens") -> None:
        """ValueError naming ``<where>.<key>``, the value and what is accepted, when ``value`` is invalid."""
        meta = {f.name: f.metadata for f in fields(cls)}
        if key not in meta:
            raise ValueError(f"{where}: unknown setting {key!r}; known: {list(cls.names())}")
        test, words = meta[key]["check"]
        if not test(value):
            raise ValueError(f"{where}.{key} must be {words}, got {value!r}")

    def check(self, where: str = "lens") -> LensConfig:
        """Every value checked (ValueError naming the first bad one); returns self."""
        for key in self.names():
            self.check_value(key, getattr(self, key), where)
        return self

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None, where: str = "settings.lens") -> LensConfig:
        """A config from a mapping of settings (missing ones take their defaults), checked."""
        if settings is not None and not isinstance(settings, Mapping):
            raise ValueError(f"{where} must be an object of lens settings, got {settings!r}")
        given = dict(settings or {})
        unknown = sorted(set(given) - set(cls.names()))
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {list(cls.names())}")
        return cls(**given).check(where)

    # -- use ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.names()}

    def with_changes(self, **changes: Any) -> LensConfig:
        """A copy with ``changes`` applied and checked."""
        return replace(self, **changes).check()

    def for_device(self, device: Any, n_items: int | None = None) -> LensConfig:
        """A copy whose unset ``batch_size``, ``lr``, ``threads``, ``compile_step`` and ``selection_batched`` take
        ``device``'s sizes (``ml.device.sizes_for``).

        The concrete values are what a fit stores in its config, so a checkpoint says what it was trained with.
        """
        from ml.device import sizes_for

        sizes = sizes_for(device, n_items)
        return replace(
            self,
            batch_size=self.batch_size if self.batch_size is not None else sizes.lens_batch_size,
            lr=self.lr if self.lr is not None else sizes.lens_lr,
            threads=self.threads if self.threads is not None else sizes.lens_threads,
            compile_step=self.compile_step if self.compile_step is not None else sizes.compile_step,
            selection_batched=(
                self.selection_batched if self.selection_batched is not None else sizes.selection_batched
            ),
        )

    @property
    def needs_selection(self) -> bool:
        """Whether some setting is ``"auto"`` (chosen by cross-validation before the final fit)."""
        return AUTO in (self.flow, self.alpha, self.weight_decay)

    def structural_changes(self, other: LensConfig) -> list[str]:
        """The structural settings whose values differ from ``other``'s, as "name (old → new)"."""
        return [
            f"{k} ({getattr(other, k)!r} → {getattr(self, k)!r})"
            for k in self.names(STRUCTURAL)
            if getattr(self, k) != getattr(other, k)
        ]
