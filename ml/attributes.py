"""Side information: the attributes experts label, and the validation of label arrays.

A label array for attribute ``a`` holds, per item, a level index (``int``; ``-1`` = missing) for
categorical and ordinal attributes, or a value (``float``; ``NaN`` = missing) for continuous ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Kind = Literal["categorical", "ordinal", "continuous"]
KINDS: tuple[str, ...] = ("categorical", "ordinal", "continuous")
MISSING_LEVEL = -1


@dataclass(frozen=True)
class Attribute:
    """One salient attribute s_j of the side information (paper section 2)."""

    name: str
    kind: Kind = "categorical"
    levels: tuple[str, ...] = field(default_factory=tuple)
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"attribute name must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"attribute {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "levels", tuple(str(v) for v in self.levels))
        if self.kind == "continuous":
            if self.levels:
                raise ValueError(f"attribute {self.name!r}: a continuous attribute takes low/high, not levels")
            if self.low is None or self.high is None:
                raise ValueError(f"attribute {self.name!r}: a continuous attribute needs low and high")
            if not (np.isfinite(self.low) and np.isfinite(self.high)) or not float(self.low) < float(self.high):
                raise ValueError(
                    f"attribute {self.name!r}: need finite low < high, got low={self.low}, high={self.high}"
                )
            object.__setattr__(self, "low", float(self.low))
            object.__setattr__(self, "high", float(self.high))
        else:
            if len(self.levels) < 2:
                raise ValueError(
                    f"attribute {self.name!r}: a {self.kind} attribute needs at least 2 levels, got {list(self.levels)}"
                )
            if len(set(self.levels)) != len(self.levels):
                raise ValueError(f"attribute {self.name!r}: levels must be distinct, got {list(self.levels)}")

    @property
    def is_discrete(self) -> bool:
        return self.kind != "continuous"

    @property
    def n_levels(self) -> int:
        """Number of classes of a discrete attribute (0 for continuous ones)."""
        return len(self.levels)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.is_discrete:
            d["levels"] = list(self.levels)
        else:
            d["low"], d["high"] = self.low, self.high
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Attribute:
        unknown = set(d) - {"name", "kind", "levels", "low", "high"}
        if unknown:
            raise ValueError(f"attribute {d.get('name')!r}: unknown field(s) {sorted(unknown)}")
        return cls(
            name=d.get("name", ""),
            kind=d.get("kind", "categorical"),
            levels=tuple(d.get("levels") or ()),
            low=d.get("low"),
            high=d.get("high"),
        )

    def level_index(self, value: Any) -> int:
        """Index of a level given by name (or by an int index); ValueError names the attribute."""
        if not self.is_discrete:
            raise ValueError(f"attribute {self.name!r} is continuous: it has no levels")
        if isinstance(value, str) and value in self.levels:
            return self.levels.index(value)
        raise ValueError(f"attribute {self.name!r}: unknown level {value!r} (levels: {list(self.levels)})")

    def validate_value(self, value: Any) -> float:
        """A continuous value as float, checked to be finite and within [low, high]."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"attribute {self.name!r}: expected a number, got {value!r}")
        v = float(value)
        if not np.isfinite(v) or v < self.low or v > self.high:  # type: ignore[operator]
            raise ValueError(f"attribute {self.name!r}: value {value!r} outside [{self.low}, {self.high}]")
        return v


def coerce_attributes(attributes: Sequence[Attribute | Mapping[str, Any]]) -> list[Attribute]:
    """Attributes from objects or dicts; names must be unique and the list non-empty."""
    out = [a if isinstance(a, Attribute) else Attribute.from_dict(a) for a in attributes]
    if not out:
        raise ValueError("at least one attribute is required")
    names = [a.name for a in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"attribute names must be unique, repeated: {dup}")
    return out


def validate_labels(
    S: Mapping[str, Any] | None,
    attributes: Sequence[Attribute],
    n: int,
    *,
    require_all: bool = False,
    soft: bool = False,
) -> dict[str, np.ndarray]:
    """Check a label dict against the schema; returns arrays (int64 levels / float64 values).

    With ``soft``, a discrete attribute may also be given as soft targets [n, C] (a distribution over
    its levels per item, zeros where unlabelled), returned normalised as float64 [n, C].

    Attributes absent from ``S`` are all-missing (unless ``require_all``). Raises ``ValueError``
    naming the attribute for an unknown name, a wrong length, an out-of-range level or a bad value.
    """
    S = dict(S or {})
    by_name = {a.name: a for a in attributes}
    unknown = sorted(set(S) - set(by_name))
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; known: {sorted(by_name)}")
    out: dict[str, np.ndarray] = {}
    for a in attributes:
        if a.name not in S:
            if require_all:
                raise ValueError(f"labels for attribute {a.name!r} are missing")
            out[a.name] = np.full(n, MISSING_LEVEL, np.int64) if a.is_discrete else np.full(n, np.nan)
            continue
        arr = np.asarray(S[a.name])
        if soft and a.is_discrete and arr.ndim == 2:
            out[a.name] = _soft_targets(arr, a, n)
            continue
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(f"attribute {a.name!r}: expected a 1-d array of length {n}, got shape {arr.shape}")
        if a.is_discrete:
            if arr.dtype.kind == "f":
                bad = ~np.isnan(arr) & (arr != np.round(arr))
                if bad.any():
                    raise ValueError(f"attribute {a.name!r}: level indices must be integers, got {arr[bad][0]!r}")
                arr = np.where(np.isnan(arr), MISSING_LEVEL, arr)
            elif arr.dtype.kind not in "iub":
                raise ValueError(f"attribute {a.name!r}: expected integer level indices, got dtype {arr.dtype}")
            arr = arr.astype(np.int64)
            bad = (arr < MISSING_LEVEL) | (arr >= a.n_levels)
            if bad.any():
                raise ValueError(
                    f"attribute {a.name!r}: level {int(arr[bad][0])} out of range 0..{a.n_levels - 1} (-1 = missing)"
                )
        else:
            if arr.dtype.kind not in "fiub":
                raise ValueError(f"attribute {a.name!r}: expected numbers, got dtype {arr.dtype}")
            arr = arr.astype(np.float64)
            if np.isinf(arr).any():
                raise ValueError(f"attribute {a.name!r}: infinite value")
        out[a.name] = arr
    return out


def _soft_targets(arr: np.ndarray, a: Attribute, n: int) -> np.ndarray:
    """A discrete attribute's soft targets [n, C]: each row a distribution over the levels (e.g. what
    several experts said), or all zeros for an unlabelled item; rows are normalised to sum to 1."""
    if arr.shape != (n, a.n_levels):
        raise ValueError(
            f"attribute {a.name!r}: soft targets must have shape ({n}, {a.n_levels}) (items × levels), got {arr.shape}"
        )
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"attribute {a.name!r}: soft targets must be numbers, got dtype {arr.dtype}")
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"attribute {a.name!r}: soft targets must be finite and non-negative")
    mass = arr.sum(1, keepdims=True)
    return np.where(mass > 0, arr / np.where(mass > 0, mass, 1.0), 0.0)


def observed_mask(labels: np.ndarray, attribute: Attribute) -> np.ndarray:
    """Boolean mask of items whose value for ``attribute`` is known (a soft target: any mass)."""
    if attribute.is_discrete and np.ndim(labels) == 2:
        return np.asarray(labels).sum(1) > 0
    return labels != MISSING_LEVEL if attribute.is_discrete else ~np.isnan(labels)


def labelled_items(labels: Mapping[str, np.ndarray], attributes: Sequence[Attribute]) -> np.ndarray:
    """Indices of the items with at least one attribute known."""
    n = len(next(iter(labels.values()))) if labels else 0
    known = np.zeros(n, bool)
    for a in attributes:
        known |= observed_mask(labels[a.name], a)
    return np.flatnonzero(known)


def restrict_labels(
    labels: Mapping[str, np.ndarray],
    attributes: Sequence[Attribute],
    rows: np.ndarray,
    keep: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Labels of the items ``rows``, in that order; with ``keep`` (item indices), missing for every item
    not in it: a fold's view of the labels, where only its training items are labelled."""
    out = {}
    drop = None if keep is None else ~np.isin(rows, keep)
    for a in attributes:
        y = np.array(np.asarray(labels[a.name])[rows], copy=True)
        if drop is not None:
            y[drop] = 0.0 if y.ndim == 2 else MISSING_LEVEL if a.is_discrete else np.nan  # soft, level, value
        out[a.name] = y
    return out


def hard_levels(labels: np.ndarray, attribute: Attribute) -> np.ndarray:
    """A discrete attribute's labels as level indices (−1 missing): soft targets by their most likely level."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return np.where(labels.sum(1) > 0, labels.argmax(1), MISSING_LEVEL).astype(np.int64)
    return labels
