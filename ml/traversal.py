"""Latent traversals (paper Figures 2, 3, 5 and 6): vary one attribute's z* dimension, decode, tile.

One row per item: the item's z* is copied, the attribute's dimension is set to each of ``steps``
values spread over the reference z*'s quantiles (others fixed), then mapped back to the base
model's z by the lens's exact inverse flow (ILVM) — or used as is (JLVM decodes z* directly) —
and decoded to images. ``grid_png`` turns the [items, steps] image array into one PNG.

An attribute that owns two z* dimensions (a lens with ``dims_per_attribute`` ≥ 2) is shown as a
2-D grid per item (``attribute_grid``): rows move along its first dimension, columns along its
second, so the attribute's whole plane is visible at once; ``grid_png``'s ``group_rows`` keeps
several items' grids apart.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["attribute_grid", "attribute_traversal", "attribute_values", "grid_png", "traverse"]

ArrayFn = Callable[[np.ndarray], np.ndarray]


def _latents(Z: Any, name: str) -> np.ndarray:
    Z = np.asarray(Z)
    if not (np.issubdtype(Z.dtype, np.floating) or np.issubdtype(Z.dtype, np.integer)) or Z.dtype == bool:
        raise ValueError(f"{name} must hold numbers, got dtype {Z.dtype}")
    if Z.ndim != 2 or Z.shape[0] == 0 or Z.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, d] with N, d >= 1, got shape {Z.shape}")
    if not np.isfinite(Z).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return Z.astype(np.float32)  # the models' precision


def _dims(dims: int | Sequence[int], d: int) -> list[int]:
    out = [dims] if isinstance(dims, int | np.integer) else list(dims)
    if not 1 <= len(out) <= 2:
        raise ValueError(f"dims must be one dimension or a list of 1 or 2, got {dims!r}")
    for k in out:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k < d:
            raise ValueError(f"dims: {k!r} is not a dimension index in [0, {d - 1}]")
    if len(out) == 2 and out[0] == out[1]:
        raise ValueError(f"dims: the two dimensions must differ, got {dims!r}")
    return [int(k) for k in out]


def _values_1d(v: Any, name: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of values, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return v


def attribute_values(
    Zs_reference: Any, dim: int, steps: int = 7, quantiles: tuple[float, float] = (0.05, 0.95)
) -> np.ndarray:
    """Values to traverse dimension ``dim`` over: ``steps`` evenly spaced between the reference z*'s quantiles."""
    Z = _latents(Zs_reference, "Zs_reference")
    (dim,) = _dims(dim, Z.shape[1])
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    lo, hi = (float(q) for q in quantiles)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"quantiles must satisfy 0 <= low <= high <= 1, got {quantiles!r}")
    a, b = np.quantile(Z[:, dim].astype(np.float64), [lo, hi])
    return np.linspace(a, b, int(steps)).astype(np.float32)  # (steps,)


def traverse(Zs_items: Any, dims: int | Sequence[int], values: Any) -> np.ndarray:
    """Copies of each item's z* with dimension(s) ``dims`` set to each value: [n_items, steps, d].

    One dimension: ``values`` is 1-D (steps,). Two dimensions: ``values`` is a pair of 1-D arrays
    (an array (2, steps) or two sequences, possibly of different lengths a and b) spanning a grid;
    the result is [n_items, a·b, d] in row-major order (the first dimension varies slowest).
    """
    Z = _latents(Zs_items, "Zs_items")  # (n, d)
    ds = _dims(dims, Z.shape[1])
    if len(ds) == 1:
        v = _values_1d(values, "values")  # (S,)
        out = np.repeat(Z[:, None, :], len(v), axis=1)  # (n, S, d)
        out[:, :, ds[0]] = v[None, :]
        return out
    if isinstance(values, Sequence | np.ndarray) and len(values) == 2:  # (2, steps) array or a pair
        va, vb = values[0], values[1]
    else:
        raise ValueError("for two dims, values must be a pair of 1-D arrays (one per dimension)")
    va, vb = _values_1d(va, "values[0]"), _values_1d(vb, "values[1]")
    ga, gb = np.meshgrid(va, vb, indexing="ij")  # (a, b)
    out = np.repeat(Z[:, None, :], ga.size, axis=1)  # (n, a·b, d)
    out[:, :, ds[0]] = ga.ravel()[None, :]
    out[:, :, ds[1]] = gb.ravel()[None, :]
    return out


def attribute_traversal(
    decoder: ArrayFn,
    Zs_items: Any,
    dim: int | Sequence[int],
    values: Any,
    inverse: ArrayFn | None = None,
) -> np.ndarray:
    """Decoded traversal images [n_items, steps, C, H, W] (Figures 2, 3, 5, 6).

    z* grid (``traverse``) → ``inverse(z*)`` (e.g. the lens's exact inverse flow back to the base
    model's z; None for a JLVM, whose decoder takes z*) → ``decoder`` (np [N, d] → images
    np [N, C, H, W] in [0, 1], e.g. ``VAE.decode``).
    """
    Zt = traverse(Zs_items, dim, values)  # (n, S, d)
    n, S, d = Zt.shape
    flat = Zt.reshape(n * S, d)
    if inverse is not None:
        flat = np.asarray(inverse(flat))
        if flat.ndim != 2 or flat.shape[0] != n * S:
            raise ValueError(f"inverse must map [N, d] to [N, d'], got shape {flat.shape} for N={n * S}")
    images = np.asarray(decoder(flat))
    if images.ndim not in (3, 4) or images.shape[0] != n * S:
        raise ValueError(f"decoder must return images [N, C, H, W] for N={n * S} codes, got shape {images.shape}")
    if images.ndim == 3:
        images = images[:, None]  # (N, H, W) -> (N, 1, H, W)
    if not np.isfinite(images).all():
        raise ValueError("decoder returned NaN or infinite pixel values")
    return images.reshape(n, S, *images.shape[1:])  # (n, S, C, H, W)


def attribute_grid(
    decoder: ArrayFn,
    Zs_items: Any,
    dims: Sequence[int],
    values: Any,
    inverse: ArrayFn | None = None,
) -> np.ndarray:
    """Decoded 2-D traversal images [n_items, a, b, C, H, W] over two z* dimensions.

    ``dims`` = (first, second); ``values`` a pair of 1-D arrays of lengths a and b (e.g. one
    ``attribute_values`` per dimension). Entry [i, r, c] decodes item i's z* with dimension
    ``dims[0]`` set to ``values[0][r]`` and ``dims[1]`` to ``values[1][c]``, the others fixed: rows
    move along the first dimension, columns along the second.
    """
    ds = list(dims) if not isinstance(dims, int | np.integer) else [dims]
    if len(ds) != 2:
        raise ValueError(f"dims must be two dimension indices, got {dims!r}")
    if not (isinstance(values, Sequence | np.ndarray) and len(values) == 2):
        raise ValueError("values must be a pair of 1-D arrays (one per dimension)")
    a, b = len(np.ravel(values[0])), len(np.ravel(values[1]))
    images = attribute_traversal(decoder, Zs_items, ds, values, inverse=inverse)  # (n, a·b, C, H, W)
    return images.reshape(images.shape[0], a, b, *images.shape[2:])


def grid_png(
    images: Any, pad: int = 1, scale: int = 1, pad_value: float = 0.5, group_rows: int | None = None, group_gap: int = 4
) -> bytes:
    """One PNG of an image grid: rows = items, columns = steps, for the traversal pages.

    ``images`` [rows, cols, C, H, W] (C = 1 or 3) or [rows, cols, H, W], floats in [0, 1] (values
    slightly outside are clipped). Each tile is enlarged ``scale``× by nearest neighbour, then
    ``pad`` pixels of grey ``pad_value`` go between tiles and round the border, so the PNG is
    (rows·H·scale + (rows+1)·pad) × (cols·W·scale + (cols+1)·pad) pixels.

    ``group_rows``: rows come in blocks of this many (e.g. one item's 2-D grid each), and
    ``group_gap`` more grey pixels go between blocks, so the PNG is ``(blocks − 1)·group_gap``
    pixels taller.
    """
    a = np.asarray(images)
    if not np.issubdtype(a.dtype, np.floating):  # 8-bit images would silently saturate to white
        raise ValueError(f"images must hold floats in [0, 1], got dtype {a.dtype} (divide 8-bit images by 255)")
    if a.ndim == 4:
        a = a[:, :, None]  # (R, K, H, W) -> (R, K, 1, H, W)
    if a.ndim != 5 or a.shape[2] not in (1, 3):
        raise ValueError(
            "images must have shape [rows, cols, C, H, W] with C in (1, 3) or [rows, cols, H, W], got "
            f"{np.shape(images)}"
        )
    if min(a.shape) == 0:
        raise ValueError(f"images must not be empty, got shape {np.shape(images)}")
    if not np.isfinite(a).all():
        raise ValueError("images contain NaN or infinite values")
    for name, v in (("pad", pad), ("scale", scale)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < (1 if name == "scale" else 0):
            raise ValueError(f"{name} must be an integer >= {1 if name == 'scale' else 0}, got {v!r}")
    if not (isinstance(pad_value, int | float) and 0.0 <= pad_value <= 1.0):
        raise ValueError(f"pad_value must be a number in [0, 1], got {pad_value!r}")
    R, K, C, H, W = a.shape
    if group_rows is not None and (
        isinstance(group_rows, bool) or not isinstance(group_rows, int | np.integer) or group_rows < 1 or R % group_rows
    ):
        raise ValueError(f"group_rows must be a positive integer dividing the {R} rows, got {group_rows!r}")
    if isinstance(group_gap, bool) or not isinstance(group_gap, int | np.integer) or group_gap < 0:
        raise ValueError(f"group_gap must be an integer >= 0, got {group_gap!r}")
    gap = int(group_gap) if group_rows is not None else 0
    block = int(group_rows) if group_rows is not None else R

    tiles = np.clip(a.astype(np.float32), 0.0, 1.0)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=3).repeat(scale, axis=4)  # nearest-neighbour upscaling
    h, w = H * scale, W * scale
    n_blocks = R // block
    canvas = np.full((C, R * h + (R + 1) * pad + (n_blocks - 1) * gap, K * w + (K + 1) * pad), pad_value, np.float32)
    for r in range(R):
        for k in range(K):
            y0, x0 = pad + r * (h + pad) + (r // block) * gap, pad + k * (w + pad)
            canvas[:, y0 : y0 + h, x0 : x0 + w] = tiles[r, k]
    pixels = np.round(canvas * 255.0).astype(np.uint8)
    # uint8 (H, W) → mode "L", (H, W, 3) → "RGB" (Pillow infers it; its ``mode=`` argument is deprecated)
    img = Image.fromarray(pixels[0] if C == 1 else np.ascontiguousarray(pixels.transpose(1, 2, 0)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
