"""IDX files (MNIST, Fashion-MNIST): a bounded, streaming reader and the train/test loader."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from ml.data.dataset import Dataset

# IDX type code -> big-endian dtype (http://yann.lecun.com/exdb/mnist/, "the IDX file format").
_IDX_DTYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_IMAGES_MAGIC = 2051  # ubyte, 3 dims
IDX_LABELS_MAGIC = 2049  # ubyte, 1 dim
IDX_MAX_COUNT = 10_000_000  # bound on the first dimension (items)
IDX_MAX_SIDE = 1024  # bound on every other dimension (rows, cols)
IDX_MAX_BYTES = 4 * 2**30  # bound on the payload a header may announce
_CHUNK = 1 << 22


def _read_up_to(f: IO[bytes], nbytes: int) -> bytes:
    """Read at most ``nbytes`` in chunks, so a lying header never makes us allocate what is not there."""
    parts: list[bytes] = []
    left = nbytes
    while left > 0:
        part = f.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def read_idx(
    path: str | os.PathLike[str],
    *,
    expected_magic: int | None = None,
    max_bytes: int = IDX_MAX_BYTES,
) -> np.ndarray:
    """Read one IDX file (gzip-compressed or raw, detected from its first bytes) into a native-endian array.

    The header is checked before any payload is read: the magic number (and ``expected_magic`` when
    given), the dimensions (first ≤ 10 million, others ≤ 1024, payload ≤ ``max_bytes``), and then
    that the payload has exactly the announced length. Every problem is a ``ValueError`` naming the file.
    """
    p = Path(path)
    gz = _is_gzip(p)
    try:
        with gzip.open(p, "rb") if gz else open(p, "rb") as f:
            return _read_idx_stream(f, p, expected_magic, max_bytes)
    except EOFError as exc:  # gzip stream cut short: the usual result of an interrupted download
        raise ValueError(f"{p}: truncated gzip file ({exc})") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{p}: corrupt gzip data ({exc})") from exc


def _read_idx_stream(f: IO[bytes], p: Path, expected_magic: int | None, max_bytes: int) -> np.ndarray:
    head = _read_up_to(f, 4)
    if len(head) < 4:
        raise ValueError(f"{p}: truncated header: {len(head)} bytes, an IDX file starts with a 4-byte magic number")
    magic = int.from_bytes(head, "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{p}: bad magic {magic}, expected {expected_magic}")
    if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or not 1 <= head[3] <= 8:
        raise ValueError(f"{p}: bad magic {magic} (0x{magic:08x}): not an IDX file")
    dtype = np.dtype(_IDX_DTYPES[head[2]])
    ndim = head[3]
    raw_dims = _read_up_to(f, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise ValueError(f"{p}: truncated header: expected {ndim} dimension sizes, found {len(raw_dims) // 4}")
    dims = tuple(int.from_bytes(raw_dims[4 * k : 4 * k + 4], "big") for k in range(ndim))
    if dims[0] > IDX_MAX_COUNT:
        raise ValueError(f"{p}: absurd header: {dims[0]} items (at most {IDX_MAX_COUNT:,} accepted)")
    for k, d in enumerate(dims[1:], start=1):
        if not 1 <= d <= IDX_MAX_SIDE:
            raise ValueError(f"{p}: absurd header: dimension {k} is {d} (expected 1..{IDX_MAX_SIDE})")
    nbytes = math.prod(dims) * dtype.itemsize
    if nbytes > max_bytes:
        raise ValueError(
            f"{p}: absurd header: dims {dims} mean {nbytes:,} bytes of data, above the {max_bytes:,} byte limit"
        )
    what = {3: "pixels", 1: "labels"}.get(ndim, "data")
    payload = _read_up_to(f, nbytes)
    if len(payload) < nbytes:
        raise ValueError(f"{p}: truncated: expected {nbytes} bytes of {what}, found {len(payload)}")
    if f.read(1):
        raise ValueError(
            f"{p}: trailing data: the file is longer than the {nbytes} bytes of {what} its header announces"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, prefix: str, kind: str, ndim: int) -> Path | None:
    """The first existing spelling of an IDX file (official dashes, or the common ``.idx3`` variant)."""
    for stem in (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"):
        for suffix in ("", ".gz"):
            candidate = directory / (stem + suffix)
            if candidate.is_file():
                return candidate
    return None


def load_mnist(path: str | os.PathLike[str], split: str = "train") -> Dataset:
    """Load an MNIST-format split (MNIST, Fashion-MNIST, …) from the directory holding its IDX files.

    Reads ``{train,t10k}-images-idx3-ubyte[.gz]`` and, when present, the matching labels file, whose
    values become the factor ``"label"`` (no factor when there is no labels file).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_idx(directory, prefix, "images", 3)
    if images_path is None:
        raise FileNotFoundError(f"{directory}: no {prefix}-images-idx3-ubyte[.gz] file")
    pixels = read_idx(images_path, expected_magic=IDX_IMAGES_MAGIC)
    if pixels.shape[0] == 0:
        raise ValueError(f"{images_path}: the file holds no images")
    factors: dict[str, np.ndarray] = {}
    labels_path = _find_idx(directory, prefix, "labels", 1)
    if labels_path is not None:
        labels = read_idx(labels_path, expected_magic=IDX_LABELS_MAGIC)
        if labels.shape[0] != pixels.shape[0]:
            raise ValueError(
                f"{labels_path}: {labels.shape[0]} labels for the {pixels.shape[0]} images of {images_path.name}"
            )
        factors["label"] = labels.astype(np.int64)
    n = pixels.shape[0]
    return Dataset(
        images=(pixels.astype(np.float32) / 255.0)[:, None],
        factors=factors,
        source_index=np.arange(n, dtype=np.int64),
        name=f"{directory.name}-{split}",
    )
