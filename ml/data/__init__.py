"""Image data sets for lenslab: loaders, a procedural sprite set with known factors, and stroke thickness.

Every loader returns a :class:`Dataset` whose ``images`` are float32 in [0, 1], shaped (N, C, H, W),
with whatever ground-truth factors the source knows (used to simulate experts and to score the
interpretability metric). One module per concept: ``dataset`` (the container), ``idx`` (MNIST files),
``image_files`` (folders and zips), ``loaders`` (digits, embeddings), ``shapes`` (procedural sprites),
``morphometry`` (stroke thickness, rotations).

Factor keys:

- ``load_digits``: ``"digit"`` (int64, 0..9).
- ``load_mnist``: ``"label"`` (int64, 0..9) for MNIST and Fashion-MNIST alike, since the same
  reader serves both and a Fashion-MNIST class is not a digit.
- ``make_shapes``: ``"shape"`` (0 square, 1 ellipse, 2 heart), ``"scale"`` (0..5), ``"rotation"``
  (degrees, counter-clockwise as displayed), ``"x"`` and ``"y"`` (centre position in [0, 1]; x grows
  to the right, y downwards, like image columns and rows). ``by_eye_levels`` turns them into the level
  names of ``BY_EYE_ATTRIBUTES`` (shape, size, position), what an expert would answer on sight.
"""

from __future__ import annotations

from ml.data.dataset import Dataset
from ml.data.idx import load_mnist, read_idx
from ml.data.image_files import load_image_folder
from ml.data.loaders import load_digits, load_embeddings
from ml.data.morphometry import (
    binarise_for_thickness,
    fast_medial_axis,
    rotate_images,
    stroke_thickness,
    thickness_levels,
)
from ml.data.shapes import BY_EYE_ATTRIBUTES, SHAPE_NAMES, by_eye_levels, make_shapes

__all__ = [
    "BY_EYE_ATTRIBUTES",
    "SHAPE_NAMES",
    "Dataset",
    "binarise_for_thickness",
    "by_eye_levels",
    "fast_medial_axis",
    "load_digits",
    "load_embeddings",
    "load_image_folder",
    "load_mnist",
    "make_shapes",
    "read_idx",
    "rotate_images",
    "stroke_thickness",
    "thickness_levels",
]
