"""A linear alignment of z to the attributes: the rotation the lens applies before its flows.

The flows of eq. (5) start near the identity, so before training z* is (standardised) z, whose axes
rarely carry one attribute each. ``attribute_rotation`` fits, from the labelled items, one direction
per designated z* dimension — for an ordinal or continuous attribute the least-squares direction of
its value, for a categorical one the leading Fisher discriminant (LDA) directions — and completes
them to an orthonormal basis. The rotation is orthogonal, so it is an exactly invertible flow layer
with log-determinant 0 (eq. 3 is unchanged), and the flows then refine a z* whose designated
dimensions already hold each attribute's best linear reading of z.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ml.attributes import Attribute, observed_mask

RIDGE = 1e-3  # relative ridge: keeps the fits defined with fewer labelled items than dimensions


def attribute_rotation(
    Z_std: np.ndarray,
    labels: Mapping[str, np.ndarray],
    attributes: Sequence[Attribute],
    dims: Mapping[str, Sequence[int]],
) -> np.ndarray:
    """An orthogonal [d, d] matrix R: z*₀ = z_std @ R puts attribute a's directions on ``dims[a]``.

    ``Z_std`` [N, d] standardised z; ``labels`` per attribute as the lens trains on them: [N] level
    indices (−1 unknown) or soft targets [N, C], or values (NaN unknown). Directions are
    orthogonalised in attribute order (Gram–Schmidt), so a later attribute gets its direction with
    earlier ones projected out;
    an attribute with too few labels (fewer than two levels or values) gets whatever direction
    completes the basis. The signs follow the fits: an ordinal or continuous attribute grows along
    its dimension.
    """
    Z = np.asarray(Z_std, dtype=np.float64)
    d = Z.shape[1]
    D = np.zeros((d, d))
    wanted = np.zeros(d, dtype=bool)
    for a in attributes:
        slots = list(dims[a.name])
        for slot, direction in zip(slots, _directions(Z, np.asarray(labels[a.name]), a, len(slots)), strict=False):
            D[:, slot], wanted[slot] = direction, True
    # Gram–Schmidt in dimension order over the fitted directions, then the standard basis for the rest.
    basis: list[np.ndarray] = []
    for slot in range(d):
        if wanted[slot]:
            v = _orthogonal_part(D[:, slot], basis)
            if v is not None:
                basis.append(v)
                continue
        basis.append(np.zeros(d))  # placeholder, filled below
    missing = [i for i, v in enumerate(basis) if not v.any()]
    for e in np.eye(d):
        if not missing:
            break
        v = _orthogonal_part(e, [b for b in basis if b.any()])
        if v is not None:
            basis[missing.pop(0)] = v
    return np.stack(basis, axis=1)


def _orthogonal_part(v: np.ndarray, basis: list[np.ndarray], tol: float = 1e-6) -> np.ndarray | None:
    for b in basis:
        v = v - (v @ b) * b
    norm = float(np.linalg.norm(v))
    return v / norm if norm > tol else None


def _directions(Z: np.ndarray, y: np.ndarray, a: Attribute, k: int) -> list[np.ndarray]:
    """Up to k unit directions of z that best read attribute ``a`` off its labelled items."""
    if a.is_discrete:
        known = observed_mask(y, a)
        # Soft targets (several experts' consensus): the most likely level reads the direction.
        hard = y.argmax(1) if y.ndim == 2 else y
        X, yk = Z[known], hard[known].astype(np.int64)
        if np.unique(yk).size < 2:
            return []
        out = []
        if a.kind == "ordinal":
            out.append(_regression(X, yk.astype(np.float64)))
        out += _fisher(X, yk, k)
        return [v for v in out if v is not None][:k]
    known = observed_mask(y, a)
    if known.sum() < 2 or np.ptp(y[known]) == 0:
        return []
    v = _regression(Z[known], y[known].astype(np.float64))
    return [v] if v is not None else []


def _regression(X: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """The ridge least-squares direction of y on X (centred), as a unit vector; grows with y."""
    Xc, yc = X - X.mean(0), y - y.mean()
    gram = Xc.T @ Xc
    w = np.linalg.solve(gram + RIDGE * (np.trace(gram) / len(gram) + 1e-12) * np.eye(len(gram)), Xc.T @ yc)
    norm = float(np.linalg.norm(w))
    return w / norm if norm > 0 else None


def _fisher(X: np.ndarray, y: np.ndarray, k: int) -> list[np.ndarray]:
    """The k leading Fisher discriminant directions (between-class over ridged within-class scatter)."""
    classes = np.unique(y)
    mean = X.mean(0)
    d = X.shape[1]
    Sw, Sb = np.zeros((d, d)), np.zeros((d, d))
    for c in classes:
        Xc = X[y == c]
        mc = Xc.mean(0)
        Sw += (Xc - mc).T @ (Xc - mc)
        Sb += len(Xc) * np.outer(mc - mean, mc - mean)
    Sw += RIDGE * (np.trace(Sw) / d + 1e-12) * np.eye(d)
    # Symmetric form: with Sw = L Lᵀ, the eigenvectors u of L⁻¹ Sb L⁻ᵀ give w = L⁻ᵀ u.
    L = np.linalg.cholesky(Sw)
    Linv = np.linalg.inv(L)
    vals, U = np.linalg.eigh(Linv @ Sb @ Linv.T)
    order = np.argsort(vals)[::-1][: min(k, classes.size - 1)]
    out = []
    for i in order:
        w = Linv.T @ U[:, i]
        norm = float(np.linalg.norm(w))
        if norm > 0:
            out.append(w / norm)
    return out
