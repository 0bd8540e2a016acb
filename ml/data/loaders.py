"""Loaders: scikit-learn's digits, IDX files (MNIST, Fashion-MNIST), image folders and zips, embeddings.

Each refuses malformed input with a ``ValueError`` naming the file and the problem; per-file problems in a
folder or zip are collected in ``Dataset.errors`` instead.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np

from ml.data.dataset import Dataset

# --------------------------------------------------------------------------------------------------
# scikit-learn digits


def load_digits() -> Dataset:
    """Load scikit-learn's bundled 8×8 digits (1,797 images), the product's embedded default data set."""
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


# --------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

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


# --------------------------------------------------------------------------------------------------
# Image folders and zips

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_TOTAL_BYTES = 2**30  # uncompressed bytes read from a folder or zip
MAX_IMAGE_PIXELS = 50_000_000  # per image, checked from the header before decoding
_DRIVE = re.compile(r"^[A-Za-z]:")


def _ignored(relname: str) -> bool:
    """Hidden files and macOS resource forks are noise from archivers, not data."""
    parts = [part for part in re.split(r"[\\/]", relname) if part]
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _unsafe_zip_name(name: str) -> str | None:
    """Why a zip entry name could escape the extraction root (zip-slip), or None if it is safe."""
    if name.startswith(("/", "\\")):
        return "absolute path"
    if _DRIVE.match(name):
        return "drive letter"
    if ".." in re.split(r"[\\/]", name):
        return "'..' component"
    return None


class _TooLarge(Exception):
    pass


def _read_capped(f: IO[bytes], budget: int) -> bytes:
    """Read a stream to its end, counting the bytes actually produced, never more than ``budget + 1``."""
    parts: list[bytes] = []
    total = 0
    while True:
        part = f.read(min(_CHUNK, budget - total + 1))
        if not part:
            return b"".join(parts)
        total += len(part)
        if total > budget:
            raise _TooLarge
        parts.append(part)


def _decode_image(data: bytes, mode: str, size: tuple[int, int] | None, max_pixels: int) -> np.ndarray:
    """Decode one image to a uint8 array (H, W) or (H, W, 3); raises ValueError with a short reason."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # We enforce our own (smaller) pixel bound below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ValueError(f"image is {w}x{h} = {w * h:,} pixels, above the {max_pixels:,} pixel limit")
            im.load()
            im = ImageOps.exif_transpose(im)  # photos from phones store their orientation in EXIF
            if im.mode.startswith("I;16"):  # 16-bit greyscale: convert("L") would clip, so rescale
                grey = np.asarray(im, dtype=np.float64) / 65535.0
                im = Image.fromarray(np.round(grey * 255).astype(np.uint8), mode="L")
            elif im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            im = im.convert(mode)
            if size is not None and im.size != size:
                im = im.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError("cannot identify image file") from None
    except Image.DecompressionBombError as exc:  # Pillow's own bound, met in Image.open before ours
        raise ValueError(f"image is above the {max_pixels:,} pixel limit (Pillow: {exc})") from None
    except (OSError, SyntaxError, EOFError, zlib.error) as exc:
        raise ValueError(f"cannot decode image ({exc})") from None


def _folder_entries(root: Path) -> list[tuple[str, int, Callable[[], IO[bytes]]]]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _ignored(d)]
        for filename in filenames:
            full = Path(dirpath) / filename
            rel = full.relative_to(root).as_posix()
            if _ignored(rel) or not full.is_file():
                continue
            entries.append((rel, full.stat().st_size, partial(open, full, "rb")))
    return entries


def _zip_entries(zf: zipfile.ZipFile, label: str) -> list[tuple[str, int, Callable[[], IO[bytes]]]]:
    infos = zf.infolist()
    # Refuse the whole archive on the first unsafe name: it was made to escape, so trust none of it.
    for info in infos:
        reason = _unsafe_zip_name(info.filename)
        if reason is not None:
            raise ValueError(f"{label}: unsafe zip entry {info.filename!r} ({reason}); refusing the whole archive")
    entries = []
    for info in infos:
        if info.is_dir() or _ignored(info.filename):
            continue
        entries.append((info.filename, info.file_size, lambda info=info: zf.open(info)))
    return entries


def load_image_folder(
    path_or_zip: str | os.PathLike[str] | IO[bytes],
    size: int | tuple[int, int] | None = None,
    mode: str = "L",
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> Dataset:
    """Load the images of a directory (recursively) or of a zip archive, e.g. an expert's upload.

    Files are taken in order of their relative path; ``external_ids`` holds those paths. ``mode`` is
    "L" (grey, C=1) or "RGB" (C=3). ``size`` (an int or (width, height)) resizes every image; without
    it, images whose size differs from the first one's are skipped. Files that are not images, cannot
    be decoded, or exceed ``max_image_pixels`` are skipped and reported in ``errors``. Hidden files and
    ``__MACOSX`` are ignored. A zip with an entry that could escape its root (absolute path, drive
    letter, ``..``) is refused whole, as is input that expands to more than ``max_total_bytes``; the
    count is of bytes actually decompressed, so a zip whose headers lie is still stopped in time.
    ``source_index`` is each image's position among the image files found, so skipped files leave gaps.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    target: tuple[int, int] | None
    if size is None:
        target = None
    elif isinstance(size, int | np.integer):
        target = (int(size), int(size))
    else:
        target = (int(size[0]), int(size[1]))
    if target is not None and not (0 < target[0] <= 4096 and 0 < target[1] <= 4096):
        raise ValueError(f"size must be between 1 and 4096 pixels a side, got {size!r}")

    zf: zipfile.ZipFile | None = None
    if isinstance(path_or_zip, str | os.PathLike):
        source = Path(path_or_zip)
        label, name = str(source), source.stem or source.name
        if source.is_dir():
            entries = _folder_entries(source)
        elif source.is_file():
            try:
                zf = zipfile.ZipFile(source)
            except (zipfile.BadZipFile, OSError) as exc:
                raise ValueError(f"{label}: neither a directory nor a readable zip archive ({exc})") from exc
            entries = _zip_entries(zf, label)
        else:
            raise FileNotFoundError(f"{label}: no such file or directory")
    else:
        label = str(getattr(path_or_zip, "name", None) or "<upload>")
        name = Path(label).stem if label != "<upload>" else "upload"
        try:
            zf = zipfile.ZipFile(path_or_zip)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{label}: not a zip archive ({exc})") from exc
        entries = _zip_entries(zf, label)

    try:
        return _load_entries(entries, label, name, mode, target, max_total_bytes, max_image_pixels, zf is not None)
    finally:
        if zf is not None:
            zf.close()


def _load_entries(
    entries: list[tuple[str, int, Callable[[], IO[bytes]]]],
    label: str,
    name: str,
    mode: str,
    target: tuple[int, int] | None,
    max_total_bytes: int,
    max_image_pixels: int,
    is_zip: bool,
) -> Dataset:
    entries = sorted(entries, key=lambda e: e[0])
    errors: list[str] = []
    candidates = []
    seen: set[str] = set()
    for relname, declared, opener in entries:
        suffix = Path(relname).suffix.lower()
        if suffix not in IMAGE_EXTENSIONS:
            errors.append(f"{relname}: skipped, not an image file name (extension {suffix or 'none'!r})")
        elif relname in seen:
            errors.append(f"{relname}: skipped, duplicate entry name")
        else:
            seen.add(relname)
            candidates.append((relname, declared, opener))
    declared_total = sum(declared for _, declared, _ in candidates)
    if declared_total > max_total_bytes:  # cheap early refusal when the headers are honest
        raise ValueError(
            f"{label}: the images add up to {declared_total:,} bytes uncompressed, above the {max_total_bytes:,} byte "
            "limit"
        )

    arrays: list[np.ndarray] = []
    ids: list[str] = []
    positions: list[int] = []
    shape: tuple[int, ...] | None = None
    used = 0
    for position, (relname, _, opener) in enumerate(candidates):
        try:
            with opener() as f:
                data = _read_capped(f, max_total_bytes - used)
        except _TooLarge:
            raise ValueError(
                f"{label}: {relname!r} expands past the {max_total_bytes:,} byte limit on uncompressed data; "
                "refusing the whole input"
            ) from None
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
            # Bad CRC (also what a lying size header produces), unsupported compression, encryption.
            errors.append(f"{relname}: cannot read {'zip entry' if is_zip else 'file'} ({exc})")
            continue
        used += len(data)
        try:
            pixels = _decode_image(data, mode, target, max_image_pixels)
        except ValueError as exc:
            errors.append(f"{relname}: {exc}")
            continue
        if shape is None:
            shape = pixels.shape
        elif pixels.shape != shape:
            errors.append(
                f"{relname}: skipped, size {pixels.shape[1]}x{pixels.shape[0]} differs from the first image's "
                f"{shape[1]}x{shape[0]} (pass size= to resize)"
            )
            continue
        arrays.append(pixels)
        ids.append(relname)
        positions.append(position)

    if not arrays:
        detail = "; ".join(errors[:5]) + (" …" if len(errors) > 5 else "")
        raise ValueError(f"{label}: no loadable images" + (f" ({detail})" if detail else ""))
    stack = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    stack = stack[:, None] if stack.ndim == 3 else stack.transpose(0, 3, 1, 2)
    return Dataset(
        images=stack.astype(np.float32) / 255.0,
        factors={},
        source_index=np.asarray(positions, dtype=np.int64),
        name=name,
        errors=errors,
        external_ids=ids,
    )


# --------------------------------------------------------------------------------------------------
# Embeddings


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
