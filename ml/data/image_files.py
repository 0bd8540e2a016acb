"""Image folders and zips: one image per file, decoded under byte and pixel budgets.

Per-file problems are collected in ``Dataset.errors``; a source that cannot be read at all raises a
``ValueError`` naming it.
"""

from __future__ import annotations

import io
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO

import numpy as np

from ml.data.dataset import Dataset

_CHUNK = 1 << 22  # read size while counting bytes against a budget

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
