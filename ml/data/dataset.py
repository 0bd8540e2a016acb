"""``Dataset``: images with the ground-truth factors known for them, as every loader returns it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dataset:
    """A set of images with the ground-truth factors known for them, as every loader returns it."""

    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]; C = 1 (grey) or 3 (RGB)
    factors: dict[str, np.ndarray]  # name -> (N,) ground truth, where the source knows it
    source_index: np.ndarray  # (N,) int64: position of each item in its source
    name: str
    errors: list[str] = field(default_factory=list)  # per-file problems met while loading
    external_ids: list[str] | None = None  # file names, for folders and zips

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"dataset {self.name!r}: images must be (N, C, H, W) with C in (1, 3), got {images.shape}")
        self.images = images.astype(np.float32, copy=False)
        n = images.shape[0]
        self.source_index = np.asarray(self.source_index, dtype=np.int64)
        if self.source_index.shape != (n,):
            raise ValueError(
                f"dataset {self.name!r}: source_index has shape {self.source_index.shape}, expected ({n},)"
            )
        for key, values in self.factors.items():
            if np.shape(values)[:1] != (n,):
                raise ValueError(f"dataset {self.name!r}: factor {key!r} has shape {np.shape(values)}, expected ({n},)")
        if self.external_ids is not None and len(self.external_ids) != n:
            raise ValueError(f"dataset {self.name!r}: {len(self.external_ids)} external_ids for {n} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])
