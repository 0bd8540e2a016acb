"""Procedural sprites with known factors (dSprites-like): shape, scale, rotation and position."""

from __future__ import annotations

import math

import numpy as np

from ml.data.dataset import Dataset

# --------------------------------------------------------------------------------------------------
# Procedural sprites (dSprites-like)

SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "heart")
N_SCALES = 6
# The heart (x² + y² − 1)³ − x² y³ ≤ 0 has area 3.662 and its centroid at y = 0.2935 (measured on a
# 3001² grid); both are needed to give it the same area and centre as the other shapes.
_HEART_AREA = 3.6620
_HEART_CENTROID_Y = 0.2935
_SUPERSAMPLE = 3  # sub-pixels per side, for anti-aliased edges


def _sprite_mask(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of one shape of unit area centred at the origin, in its own frame (v up)."""
    if kind == 0:  # square of side 1
        return np.maximum(np.abs(u), np.abs(v)) <= 0.5
    if kind == 1:  # ellipse with axes 2:1
        a = math.sqrt(2.0 / math.pi)
        return (u / a) ** 2 + (v / (0.5 * a)) ** 2 <= 1.0
    k = math.sqrt(_HEART_AREA)  # heart, point down, centroid at the origin
    hu, hv = u * k, v * k + _HEART_CENTROID_Y
    r2 = hu * hu + hv * hv - 1.0
    return r2 * r2 * r2 - hu * hu * hv * hv * hv <= 0.0


def make_shapes(
    n: int = 5000, seed: int = 0, size: int = 32, position_range: float = 1.0, rotation_range: float = 360.0
) -> Dataset:
    """Draw dSprites-like white sprites on black with known generative factors, for controlled experiments.

    Factors (drawn independently and uniformly): ``shape`` (0 square, 1 ellipse with axes 2:1,
    2 heart), ``scale`` (6 levels; sprite size 0.5 + 0.1·level of the largest), ``rotation``
    (0..``rotation_range`` degrees, counter-clockwise; 0 keeps every sprite upright), ``x``/``y``
    (centre position in [0, 1] across the range that keeps the largest sprite inside the image). All
    shapes have the same area at the same scale, so ink area measures scale alone. Deterministic per
    ``seed``; ``make_shapes(k, seed)`` is the first k sprites of ``make_shapes(n, seed)``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 16 <= size <= 512:
        raise ValueError(f"size must be between 16 and 512 pixels, got {size}")
    if not 0.0 <= position_range <= 1.0:
        raise ValueError(f"position_range must be within [0, 1], got {position_range}")
    if not 0.0 <= rotation_range <= 360.0:
        raise ValueError(f"rotation_range must be within [0, 360] degrees, got {rotation_range}")
    # One row of uniforms per sprite, so the first k sprites are the same whatever n is.
    draws = np.random.default_rng(seed).random((n, 5))
    shape = np.minimum((draws[:, 0] * len(SHAPE_NAMES)).astype(np.int64), len(SHAPE_NAMES) - 1)
    scale_level = np.minimum((draws[:, 1] * N_SCALES).astype(np.int64), N_SCALES - 1)
    rotation = draws[:, 2] * rotation_range
    x, y = draws[:, 3].copy(), draws[:, 4].copy()

    side = 0.36 * size  # square side at full scale; every shape then has area side²
    reach = 0.8 * side + 1.0  # ellipse semi-major (the largest circumradius) plus a pixel of margin
    # position_range < 1 keeps sprites nearer the centre (0: all centred; the factors x, y still
    # record the draw), for experiments that want fewer nuisance pixels than dSprites' full range.
    cx = size / 2 + (x - 0.5) * position_range * (size - 2 * reach)
    cy = size / 2 + (y - 0.5) * position_range * (size - 2 * reach)
    s = side * (0.5 + 0.1 * scale_level)
    theta = np.deg2rad(rotation)

    # Draw each sprite in a window just large enough for the largest one, then paste it in place.
    ss = _SUPERSAMPLE
    win = min(size, math.ceil(2 * reach) + 1)
    ox = np.clip(np.floor(cx - reach).astype(np.int64), 0, size - win)
    oy = np.clip(np.floor(cy - reach).astype(np.int64), 0, size - win)
    sub = ((np.arange(win * ss) + 0.5) / ss).astype(np.float32)  # sub-pixel centres in the window
    offsets = np.arange(win)
    images = np.zeros((n, 1, size, size), dtype=np.float32)
    batch = max(1, 2**21 // (win * ss) ** 2)
    for kind in range(len(SHAPE_NAMES)):
        members = np.flatnonzero(shape == kind)
        for start in range(0, members.size, batch):
            idx = members[start : start + batch]
            px, py, cos, sin, inv = (
                a[idx, None, None].astype(np.float32)  # (B, 1, 1)
                for a in (cx - ox, cy - oy, np.cos(theta), np.sin(theta), 1.0 / s)
            )
            dx = sub[None, None, :] - px  # (B, 1, w)
            dy = py - sub[None, :, None]  # (B, h, 1); up is positive
            # Coordinates in the sprite's frame (rotated by −θ), in units of its size: (B, h, w).
            u = (cos * dx + sin * dy) * inv
            v = (cos * dy - sin * dx) * inv
            mask = _sprite_mask(kind, u, v)
            pixels = mask.reshape(idx.size, win, ss, win, ss).mean(axis=(2, 4), dtype=np.float32)
            rows = (oy[idx, None] + offsets)[:, :, None]
            cols = (ox[idx, None] + offsets)[:, None, :]
            images[idx[:, None, None], 0, rows, cols] = pixels
    return Dataset(
        images=images,
        factors={
            "shape": shape.astype(np.int64),
            "scale": scale_level.astype(np.int64),
            "rotation": rotation,
            "x": x,
            "y": y,
        },
        source_index=np.arange(n, dtype=np.int64),
        name=f"shapes-{n}-seed{seed}",
    )


# --------------------------------------------------------------------------------------------------
# Attributes an expert can judge by eye

# On upright sprites (``rotation_range=0``) three factors can be read off the image at a glance: which
# shape, how large (the six scales in three bands of two) and where across the image (thirds of the
# horizontal range). Rotation and height are left as nuisance factors.
BY_EYE_ATTRIBUTES: tuple[dict[str, object], ...] = (
    {"name": "shape", "kind": "categorical", "levels": list(SHAPE_NAMES)},
    {"name": "size", "kind": "ordinal", "levels": ["small", "medium", "large"]},
    {"name": "position", "kind": "ordinal", "levels": ["left", "centre", "right"]},
)


def by_eye_levels(factors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per item, the level name of each of ``BY_EYE_ATTRIBUTES`` from ``make_shapes``'s factors.

    What an expert would answer on looking at the sprite: ``shape`` by name, ``size`` from the scale
    (levels 0-1 small, 2-3 medium, 4-5 large), ``position`` from x (left, centre, right thirds).
    """
    shape = np.asarray(factors["shape"], dtype=np.int64)
    size = np.asarray(factors["scale"], dtype=np.int64) * 3 // N_SCALES
    position = np.minimum((np.asarray(factors["x"], dtype=np.float64) * 3).astype(np.int64), 2)
    names = {a["name"]: np.asarray(a["levels"]) for a in BY_EYE_ATTRIBUTES}
    return {
        "shape": names["shape"][shape],
        "size": names["size"][size],
        "position": names["position"][position],
    }
