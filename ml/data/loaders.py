"""The small loaders: scikit-learn's bundled digits and precomputed embeddings (``.npy``/``.npz``).

IDX files live in ``ml.data.idx``, image folders and zips in ``ml.data.image_files``. Each loader
refuses malformed input with a ``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ml.data.dataset import Dataset


def load_digits() -> Dataset:
    """Load scikit-learn's bundled 8×8 digits (1,797 images): a data set the product imports without a download."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]  # pixel values are 0..16
    n = images.shape[0]
    return Dataset(
        images=images,
        factors={"digit": bunch.target.astype(np.int64)},
        source_index=np.arange(n, dtype=np.int64),
        name="digits",
    )


def load_embeddings(path: str | os.PathLike[str]) -> np.ndarray:
    """Load precomputed embeddings (float32, (N, d)) from ``.npy`` or ``.npz`` to use as a base representation.

    An ``.npz`` must hold an array ``embeddings`` or ``z``, or exactly one array. Pickled objects are
    refused (``allow_pickle=False``), as are arrays that are not 2-D, empty, or not finite.
    """
    p = Path(path)
    try:
        loaded: Any = np.load(p, allow_pickle=False)
    except ValueError as exc:  # pickled content, or not a NumPy file at all
        raise ValueError(f"{p}: cannot load embeddings without unpickling or not a .npy/.npz file ({exc})") from exc
    except (EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{p}: corrupt file ({exc})") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            key = next((k for k in ("embeddings", "z") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ValueError(f"{p}: expected an array named 'embeddings' or 'z', or a single array; found {keys}")
            try:
                array = loaded[key]
            except ValueError as exc:
                raise ValueError(f"{p}: array {key!r} cannot be loaded without unpickling ({exc})") from exc
            label = f"{p}[{key!r}]"
    else:
        array, label = loaded, str(p)
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{label}: embeddings must be numbers, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{label}: embeddings must be 2-D (N, d), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{label}: embeddings are empty, shape {array.shape}")
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, reported just below
        out = array.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise ValueError(
            f"{label}: {int(bad.sum())} non-finite values (NaN/inf, or beyond float32), first in row {row}"
        )
    return out
