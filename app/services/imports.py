"""Data import: load a dataset spec or an upload through ``ml.data`` and store its items in one transaction."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Item, Project, Representation
from app.services.errors import Conflict, Invalid

MAX_SHAPES = 200_000


@dataclass
class Loaded:
    """What a source yielded: images (or None for bare embeddings), embeddings, ids and per-file errors."""

    name: str
    images: np.ndarray | None  # (N, C, H, W) float32 in [0, 1]
    source_index: np.ndarray  # (N,) int64
    external_ids: list[str] | None = None
    embeddings: np.ndarray | None = None  # (N, d) float32
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.source_index.shape[0])


def confine_path(raw: str, settings: Settings, field_name: str) -> Path:
    """``raw`` resolved, if it lies under DATA_DIR or an import root; Invalid naming the field otherwise."""
    p = Path(raw).expanduser()
    if not p.is_absolute():
        p = Path(settings.data_dir) / p
    p = p.resolve()
    roots = settings.allowed_import_roots()
    if not any(p == r or r in p.parents for r in roots):
        raise Invalid(
            f"{field_name}: {raw!r} is outside the allowed import roots "
            f"(LENSLAB_DATA_DIR or LENSLAB_IMPORT_ROOTS: {[str(r) for r in roots]})"
        )
    if not p.exists():
        raise Invalid(f"{field_name}: {raw!r} does not exist")
    return p


def _from_dataset(ds: Any) -> Loaded:
    return Loaded(
        name=ds.name,
        images=ds.images,
        source_index=np.asarray(ds.source_index, np.int64),
        external_ids=ds.external_ids,
        errors=list(ds.errors),
    )


def load_spec(spec: dict[str, Any], settings: Settings) -> Loaded:
    """Load a server-side dataset spec ({"source": "digits" | "shapes" | "mnist" | "images" | "embeddings", ...})."""
    from ml import data

    source = spec.get("source")
    try:
        if source == "digits":
            return _from_dataset(data.load_digits())
        if source == "shapes":
            n = int(spec.get("n", 5000))
            if not 1 <= n <= MAX_SHAPES:
                raise Invalid(f"dataset.n: between 1 and {MAX_SHAPES}, got {n}")
            return _from_dataset(
                data.make_shapes(
                    n=n,
                    seed=int(spec.get("seed", 0)),
                    size=int(spec.get("size", 32)),
                    rotation_range=float(spec.get("rotation_range", 360.0)),
                )
            )
        if source == "mnist":
            path = confine_path(str(spec.get("path", "")), settings, "dataset.path")
            loaded = _from_dataset(data.load_mnist(path, split=spec.get("split", "train")))
            limit = spec.get("limit")
            if limit is not None:
                loaded = _take(loaded, int(limit))
            return loaded
        if source == "images":
            path = confine_path(str(spec.get("path", "")), settings, "dataset.path")
            return _from_dataset(
                data.load_image_folder(
                    path,
                    size=spec.get("size"),
                    mode=spec.get("mode", "L"),
                    max_total_bytes=settings.max_upload_bytes * 4,
                )
            )
        if source == "embeddings":
            path = confine_path(str(spec.get("path", "")), settings, "dataset.path")
            images = None
            if spec.get("images"):
                img_path = confine_path(str(spec["images"]), settings, "dataset.images")
                images = data.load_image_folder(img_path, size=spec.get("size"), mode=spec.get("mode", "L"))
            return with_embeddings(data.load_embeddings(path), images, name=path.stem)
    except (ValueError, FileNotFoundError) as exc:
        raise Invalid(f"dataset ({source}): {exc}") from None
    raise Invalid(f"dataset.source: unknown source {source!r}")


def _take(loaded: Loaded, limit: int) -> Loaded:
    if limit < 1:
        raise Invalid(f"dataset.limit: must be at least 1, got {limit}")
    ids = loaded.external_ids[:limit] if loaded.external_ids else None
    imgs = loaded.images[:limit] if loaded.images is not None else None
    emb = loaded.embeddings[:limit] if loaded.embeddings is not None else None
    return Loaded(loaded.name, imgs, loaded.source_index[:limit], ids, emb, loaded.errors)


def with_embeddings(embeddings: np.ndarray, images: Any | None, *, name: str) -> Loaded:
    """Embeddings rows as items, with the matching images (same count, in file order) when given."""
    n = embeddings.shape[0]
    if images is not None:
        if len(images.errors):
            raise Invalid(f"dataset.images: every image must load when paired with embeddings: {images.errors[:3]}")
        if len(images) != n:
            raise Invalid(f"dataset.images: {len(images)} images for {n} embedding rows")
        return Loaded(
            name=name,
            images=images.images,
            source_index=np.arange(n, dtype=np.int64),
            external_ids=images.external_ids,
            embeddings=embeddings.astype(np.float32),
        )
    return Loaded(
        name=name, images=None, source_index=np.arange(n, dtype=np.int64), embeddings=embeddings.astype(np.float32)
    )


def load_upload(kind: str, data_file: IO[bytes], images_file: IO[bytes] | None, settings: Settings) -> Loaded:
    """Load an uploaded zip of images or .npy/.npz embeddings (+ optional zip of images)."""
    from ml import data

    try:
        if kind == "zip":
            return _from_dataset(data.load_image_folder(data_file, max_total_bytes=settings.max_upload_bytes * 4))
        if kind == "embeddings":
            import tempfile

            # load_embeddings takes a path: the upload is spooled to a private temporary file.
            with tempfile.NamedTemporaryFile(suffix=".npy" if _is_npy(data_file) else ".npz") as tmp:
                tmp.write(data_file.read())
                tmp.flush()
                emb = data.load_embeddings(tmp.name)
            images = data.load_image_folder(images_file) if images_file is not None else None
            return with_embeddings(emb, images, name="upload")
    except ValueError as exc:
        raise Invalid(f"file: {exc}") from None
    raise Invalid(f"file: unsupported upload kind {kind!r}")


def _is_npy(f: IO[bytes]) -> bool:
    pos = f.tell()
    head = f.read(6)
    f.seek(pos)
    return head == b"\x93NUMPY"


def sniff_upload(f: IO[bytes]) -> str:
    """ "zip" or "embeddings" from the file's magic bytes; Invalid for anything else."""
    pos = f.tell()
    head = f.read(6)
    f.seek(pos)
    if head.startswith(b"\x93NUMPY"):
        return "embeddings"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        # An .npz is a zip of .npy files: look inside to tell it from a zip of images.
        import zipfile

        try:
            with zipfile.ZipFile(f) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as exc:
            raise Invalid(f"file: corrupt zip archive ({exc})") from None
        finally:
            f.seek(pos)
        if names and all(n.endswith(".npy") for n in names):
            return "embeddings"
        return "zip"
    raise Invalid("file: expected a zip of images or a .npy/.npz embeddings file")


def encode_png(image: np.ndarray) -> bytes:
    """An 8-bit PNG of one (C, H, W) float image in [0, 1]."""
    from PIL import Image

    arr = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    pil = Image.fromarray(arr[0], mode="L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def store(*, session: Session, project: Project, loaded: Loaded, commit: bool = True) -> int:
    """Insert ``loaded`` as items of ``project`` (and its embeddings as the active representation).

    Nothing is committed unless every row is written; returns the number of items added.
    """
    if len(loaded) == 0:
        raise Invalid("dataset: no items to import")
    is_embeddings = loaded.embeddings is not None
    if is_embeddings != (project.representation.get("source") == "embeddings"):
        raise Invalid("dataset.source: embeddings imports go with representation source 'embeddings' (and only they)")
    if is_embeddings and session.scalar(
        sa.select(sa.func.count()).select_from(Item).where(Item.project_id == project.id)
    ):
        raise Conflict("an embeddings project takes a single import: its items already exist")
    rng = np.random.default_rng()
    keys = rng.random(len(loaded))
    rows: list[dict[str, Any]] = []
    for i in range(len(loaded)):
        row: dict[str, Any] = {
            "project_id": project.id,
            "source_index": int(loaded.source_index[i]),
            "external_id": loaded.external_ids[i] if loaded.external_ids else None,
            "split": "pool",
            "random_key": float(keys[i]),
            "label_count": 0,
            "labelled": False,
        }
        if loaded.images is not None:
            png = encode_png(loaded.images[i])
            c, h, w = loaded.images.shape[1:]
            row.update(
                image_png=png,
                width=int(w),
                height=int(h),
                channels=int(c),
                content_hash=hashlib.sha256(png).hexdigest(),
            )
        rows.append(row)
    first_new = session.scalar(sa.select(sa.func.max(Item.id))) or 0
    session.execute(sa.insert(Item), rows)
    if is_embeddings:
        # source_index is the embeddings row here (0..N-1), so it maps rows to the new item ids.
        ids = np.asarray(
            session.scalars(
                sa.select(Item.id).where(Item.project_id == project.id, Item.id > first_new).order_by(Item.source_index)
            ).all(),
            dtype=np.int64,
        )
        if ids.shape[0] != len(loaded):
            raise Conflict("concurrent import into the same project; retry")
        session.add(
            Representation(
                project_id=project.id,
                source="embeddings",
                config={"dim": int(loaded.embeddings.shape[1])},  # type: ignore[union-attr]
                z=_npy(loaded.embeddings),
                item_ids=_npy(ids),
                active=True,
            )
        )
    if commit:
        session.commit()
    return len(rows)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()
