"""Image data sets for lenslab: loaders, a procedural sprite set with known factors, and stroke thickness.

Every loader returns a :class:`Dataset` whose ``images`` are float32 in [0, 1], shaped (N, C, H, W),
with whatever ground-truth factors the source knows (used to simulate experts and to score the
interpretability metric). Loaders refuse malformed input with a ``ValueError`` that names the file
and the problem; per-file problems in a folder or zip are collected in ``Dataset.errors`` instead.

Factor keys:

- ``load_digits``: ``"digit"`` (int64, 0..9).
- ``load_mnist``: ``"label"`` (int64, 0..9) for MNIST and Fashion-MNIST alike, since the same
  reader serves both and a Fashion-MNIST class is not a digit.
- ``make_shapes``: ``"shape"`` (0 square, 1 ellipse, 2 heart), ``"scale"`` (0..5), ``"rotation"``
  (degrees, counter-clockwise as displayed), ``"x"`` and ``"y"`` (centre position in [0, 1]; x grows
  to the right, y downwards, like image columns and rows).
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
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cache, partial
from multiprocessing import get_context
from pathlib import Path
from typing import IO, Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "SHAPE_NAMES",
    "Dataset",
    "binarise_for_thickness",
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
            raise ValueError(
                f"dataset {self.name!r}: images must be (N, C, H, W) with C in (1, 3), got {images.shape}"
            )
        self.images = images.astype(np.float32, copy=False)
        n = images.shape[0]
        self.source_index = np.asarray(self.source_index, dtype=np.int64)
        if self.source_index.shape != (n,):
            raise ValueError(
                f"dataset {self.name!r}: source_index has shape {self.source_index.shape}, expected ({n},)"
            )
        for key, values in self.factors.items():
            if np.shape(values)[:1] != (n,):
                raise ValueError(
                    f"dataset {self.name!r}: factor {key!r} has shape {np.shape(values)}, expected ({n},)"
                )
        if self.external_ids is not None and len(self.external_ids) != n:
            raise ValueError(f"dataset {self.name!r}: {len(self.external_ids)} external_ids for {n} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])


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
        raise ValueError(
            f"{p}: truncated header: {len(head)} bytes, an IDX file starts with a 4-byte magic number"
        )
    magic = int.from_bytes(head, "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{p}: bad magic {magic}, expected {expected_magic}")
    if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or not 1 <= head[3] <= 8:
        raise ValueError(f"{p}: bad magic {magic} (0x{magic:08x}): not an IDX file")
    dtype = np.dtype(_IDX_DTYPES[head[2]])
    ndim = head[3]
    raw_dims = _read_up_to(f, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise ValueError(
            f"{p}: truncated header: expected {ndim} dimension sizes, found {len(raw_dims) // 4}"
        )
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
            raise ValueError(
                f"{label}: unsafe zip entry {info.filename!r} ({reason}); refusing the whole archive"
            )
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
        return _load_entries(
            entries, label, name, mode, target, max_total_bytes, max_image_pixels, zf is not None
        )
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
            f"{label}: the images add up to {declared_total:,} bytes uncompressed, above the {max_total_bytes:,} byte limit"
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


def make_shapes(n: int = 5000, seed: int = 0, size: int = 32, position_range: float = 1.0) -> Dataset:
    """Draw dSprites-like white sprites on black with known generative factors, for controlled experiments.

    Factors (drawn independently and uniformly): ``shape`` (0 square, 1 ellipse with axes 2:1,
    2 heart), ``scale`` (6 levels; sprite size 0.5 + 0.1·level of the largest), ``rotation``
    (0..360 degrees, counter-clockwise), ``x``/``y`` (centre position in [0, 1] across the range
    that keeps the largest sprite inside the image). All shapes have the same area at the same scale,
    so ink area measures scale alone. Deterministic per ``seed``; ``make_shapes(k, seed)`` is the
    first k sprites of ``make_shapes(n, seed)``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 16 <= size <= 512:
        raise ValueError(f"size must be between 16 and 512 pixels, got {size}")
    if not 0.0 <= position_range <= 1.0:
        raise ValueError(f"position_range must be within [0, 1], got {position_range}")
    # One row of uniforms per sprite, so the first k sprites are the same whatever n is.
    draws = np.random.default_rng(seed).random((n, 5))
    shape = np.minimum((draws[:, 0] * len(SHAPE_NAMES)).astype(np.int64), len(SHAPE_NAMES) - 1)
    scale_level = np.minimum((draws[:, 1] * N_SCALES).astype(np.int64), N_SCALES - 1)
    rotation = draws[:, 2] * 360.0
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
        raise ValueError(
            f"{p}: cannot load embeddings without unpickling or not a .npy/.npz file ({exc})"
        ) from exc
    except (EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{p}: corrupt file ({exc})") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            key = next((k for k in ("embeddings", "z") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ValueError(
                    f"{p}: expected an array named 'embeddings' or 'z', or a single array; found {keys}"
                )
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


# --------------------------------------------------------------------------------------------------
# Stroke thickness (Morpho-MNIST, Castro et al. 2019)


@cache
def _medial_axis_tables() -> tuple[np.ndarray, np.ndarray] | None:
    """scikit-image's medial-axis lookup tables, built once rather than on every call (the slow part).

    Mirrors ``skimage.morphology.medial_axis``; returns None if this scikit-image no longer exposes
    the helpers, in which case the public (slow, identical) function is used instead.
    """
    try:
        from skimage.morphology._skeletonize import _pattern_of
    except ImportError:
        return None
    eight = ndi.generate_binary_structure(2, 2)
    center_is_foreground = (np.arange(512) & 2**4).astype(bool)
    # Keep a pixel if removing it changes the number of 8-connected components, or if it has
    # fewer than 3 pixels in its neighbourhood (ends of lines).
    changes_topology = np.array(
        [
            ndi.label(_pattern_of(i), eight)[1] != ndi.label(_pattern_of(i & ~(2**4)), eight)[1]
            for i in range(512)
        ]
    )
    few_pixels = np.array([np.sum(_pattern_of(i)) < 3 for i in range(512)])
    table = np.ascontiguousarray(center_is_foreground & (changes_topology | few_pixels), dtype=np.uint8)
    # Cornerness = number of background pixels in the 3×3 neighbourhood; corners are processed last.
    cornerness = np.array([9 - np.sum(_pattern_of(i)) for i in range(512)])
    return table, cornerness


def fast_medial_axis(image: np.ndarray, *, rng: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Medial axis and distance transform of a 2-D binary image, with cached lookup tables.

    Same output as ``skimage.morphology.medial_axis(image, return_distance=True, rng=rng)`` at about a
    tenth of the cost on MNIST-sized images. ``rng`` seeds the tie-breaking order, as in scikit-image.
    """
    tables = _medial_axis_tables()
    if tables is None:
        from skimage.morphology import medial_axis

        return medial_axis(image, return_distance=True, rng=rng)
    from skimage.morphology._skeletonize import _table_lookup
    from skimage.morphology._skeletonize_various_cy import _skeletonize_loop

    table, cornerness = tables
    binary = np.asarray(image).astype(bool)
    distance = ndi.distance_transform_edt(binary)
    corner_score = _table_lookup(binary, cornerness)
    i, j = np.nonzero(binary)  # row-major, like scikit-image's mgrid[...][mask]
    i = np.ascontiguousarray(i, dtype=np.intp)
    j = np.ascontiguousarray(j, dtype=np.intp)
    # Process pixels by distance, then cornerness, then a seeded random tie-breaker.
    tiebreaker = np.random.default_rng(rng).permutation(np.arange(i.size))
    order = np.ascontiguousarray(
        np.lexsort((tiebreaker, corner_score[binary], distance[binary])), dtype=np.int32
    )
    result = np.ascontiguousarray(binary, dtype=np.uint8)
    _skeletonize_loop(result, i, j, order, table)
    return result.astype(bool), distance


def _grey_stack(images: np.ndarray) -> np.ndarray:
    """(N, H, W) float view of (N, H, W), (N, 1, H, W) or (N, 3, H, W) images (RGB averaged)."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4:
        x = x.mean(axis=1)
    if x.ndim != 3:
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got shape {np.shape(images)}")
    return x


@cache
def _upsampling_matrix(n: int, scale: int) -> np.ndarray:
    """(n·scale, n) matrix of bilinear upsampling along one axis, so a batch upsamples with two matmuls.

    Equal to ``ndi.zoom(..., order=1, grid_mode=True, mode="grid-constant")`` (separable), which on a
    3-D batch is an order of magnitude slower. grid_mode keeps pixel areas aligned, so a w-pixel
    stroke becomes scale·w pixels wide.
    """
    return ndi.zoom(np.eye(n), (scale, 1), order=1, grid_mode=True, mode="grid-constant")


def binarise_for_thickness(image: np.ndarray, scale: int = 4) -> np.ndarray:
    """The upsampled binary image whose medial axis ``stroke_thickness`` measures (for inspection and tests)."""
    return _upsample_binarise(_grey_stack(np.asarray(image)[None]), scale)[0]


def _upsample_binarise(images: np.ndarray, scale: int) -> list[np.ndarray]:
    # A one-pixel frame makes ink that touches the border end there, as a stroke edge should.
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))  # (B, H+2, W+2)
    if scale > 1:
        rows = _upsampling_matrix(padded.shape[1], scale)
        cols = _upsampling_matrix(padded.shape[2], scale)
        padded = rows @ padded @ cols.T  # (B, (H+2)·s, (W+2)·s)
    out = []
    for hires in padded:
        top = hires.max()
        # Half the maximum: Morpho-MNIST's 128/255 on MNIST, and indifferent to the intensity scale.
        out.append(hires >= 0.5 * top if top > 0 else np.zeros(hires.shape, dtype=bool))
    return out


def _thickness_block(images: np.ndarray, scale: int, rng: int | None) -> np.ndarray:
    out = np.zeros(images.shape[0])
    for k, binary in enumerate(_upsample_binarise(images, scale)):
        rows = np.flatnonzero(binary.any(axis=1))
        if rows.size == 0:
            continue  # empty image: thickness 0
        cols = np.flatnonzero(binary.any(axis=0))
        # Crop to the ink plus a ring of background: the distance transform, corner scores, pixel
        # order and tie-breaks are then exactly those of the full image, at a fraction of the cost.
        crop = np.pad(binary[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
        skeleton, distance = fast_medial_axis(crop, rng=rng)
        # The distance on the skeleton is the stroke's half-width; report it in original pixels.
        out[k] = 2.0 * distance[skeleton].mean() / scale
    return out


def stroke_thickness(
    images: np.ndarray,
    scale: int = 4,
    *,
    rng: int | None = 0,
    n_jobs: int = 1,
    batch_size: int = 512,
) -> np.ndarray:
    """Mean stroke thickness of each image in pixels (float64, (N,)), the "thickness" attribute of Morpho-MNIST.

    Following Castro et al. (2019): upsample ×``scale`` (bilinear), binarise at half the image's
    maximum, take the medial axis with its distance transform, and report twice the mean distance on
    the skeleton, divided by ``scale``. Empty images give 0. ``rng`` seeds scikit-image's tie-breaking
    per image (None: unseeded, as scikit-image's default). ``n_jobs`` > 1 (or -1 for all CPUs) spreads
    batches over "spawn" worker processes, so a script calling it needs an ``if __name__ == "__main__":``
    guard; one process already does about 1,000 MNIST digits a second.
    """
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    x = _grey_stack(images)
    n = x.shape[0]
    batches = [x[start : start + batch_size] for start in range(0, n, batch_size)]
    workers = (os.cpu_count() or 1) if n_jobs == -1 else max(1, int(n_jobs))
    if workers == 1 or len(batches) == 1:
        parts = [_thickness_block(b, int(scale), rng) for b in batches]
    else:
        # "spawn": forking a process that may hold torch threads can deadlock.
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            parts = list(
                pool.map(_thickness_block, batches, [int(scale)] * len(batches), [rng] * len(batches))
            )
    return np.concatenate(parts) if parts else np.zeros(0)


def thickness_levels(
    thickness: np.ndarray, n_levels: int = 5, edges: Sequence[float] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bin thickness into ordinal levels 0..n_levels-1 by quantiles, for the "thickness" attribute.

    Returns ``(levels, edges)`` where ``edges`` are the n_levels − 1 inner bin edges; pass them back
    to bin another split the same way (``n_levels`` is then ignored: there are len(edges) + 1 levels).
    A value equal to an edge goes to the upper level; NaN gets -1 (missing).
    """
    t = np.asarray(thickness, dtype=np.float64).ravel()
    if edges is None:
        if n_levels < 2:
            raise ValueError(f"n_levels must be at least 2, got {n_levels}")
        finite = t[np.isfinite(t)]
        if finite.size == 0:
            raise ValueError("thickness has no finite values to take quantiles of")
        inner = np.quantile(finite, np.arange(1, n_levels) / n_levels)
    else:
        inner = np.asarray(edges, dtype=np.float64).ravel()
        if not np.all(np.isfinite(inner)) or np.any(np.diff(inner) < 0):
            raise ValueError(f"edges must be finite and sorted, got {inner.tolist()}")
    levels = np.searchsorted(inner, t, side="right").astype(np.int64)
    levels[~np.isfinite(t)] = -1
    return levels, inner


# --------------------------------------------------------------------------------------------------
# Transformations


def rotate_images(images: np.ndarray, angles_deg: float | np.ndarray, *, order: int = 1) -> np.ndarray:
    """Rotate each image counter-clockwise (as displayed) about its centre, keeping its size, e.g. to probe a classifier.

    ``images`` is (N, H, W) or (N, C, H, W); ``angles_deg`` one angle or one per image. Uncovered
    corners are filled with 0 (background); bilinear interpolation (``order=1``) keeps values in range.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim not in (3, 4):
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got shape {x.shape}")
    n = x.shape[0]
    angles = np.asarray(angles_deg, dtype=np.float64)
    if angles.ndim > 1 or (angles.ndim == 1 and angles.shape[0] != n):
        raise ValueError(
            f"angles_deg must be a number or have one angle per image ({n}), got shape {angles.shape}"
        )
    angles = np.broadcast_to(angles, (n,))
    out = np.empty_like(x)
    # axes (W, H): a positive angle turns content counter-clockwise on screen (rows grow downwards).
    axes = (x.ndim - 2, x.ndim - 3)
    for k in range(n):
        out[k] = ndi.rotate(x[k], angles[k], axes=axes, reshape=False, order=order, mode="constant", cval=0.0)
    return out
