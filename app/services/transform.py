"""A model version applied to data the client sends: z, z* and each attribute's predicted distribution.

Nothing is imported or stored: the caller's images go through the version's base model (the VAE,
classifier or uploaded encoder that gave the project's items their z), or its embeddings are taken
as z, and the lens maps z to z* (eq. 5) and predicts each attribute from z* (eq. 4).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.db.models import Item, ModelVersion, Project, Representation
from app.schemas import MAX_TRANSFORM_ITEMS
from app.services import models
from app.services.errors import Conflict, Invalid

_MODES = {1: "L", 3: "RGB"}


def model_version(*, session: Session, project: Project, version: int | None) -> ModelVersion:
    """The project's version number ``version``, or its active version; Invalid names an unknown number."""
    if version is None:
        return models.active_or_raise(session=session, project_id=project.id)
    mv = session.scalar(
        sa.select(ModelVersion).where(ModelVersion.project_id == project.id, ModelVersion.version == version)
    )
    if mv is None:
        raise Invalid(f"model_version: project {project.id} has no model version {version}")
    return mv


def _representation(session: Session, mv: ModelVersion) -> Representation:
    rep = session.get(Representation, mv.representation_id) if mv.representation_id is not None else None
    if rep is None:
        raise Conflict(f"model version {mv.version} has lost its base representation: retrain, then transform")
    return rep


def _items_image_shape(session: Session, project: Project) -> tuple[int, int, int] | None:
    row = session.execute(
        sa.select(Item.channels, Item.height, Item.width)
        .where(Item.project_id == project.id, Item.channels.is_not(None))
        .limit(1)
    ).one_or_none()
    return None if row is None else (int(row.channels), int(row.height), int(row.width))


def decode_images(encoded: list[str], shape: tuple[int, int, int]) -> np.ndarray:
    """Base64 PNG/JPEG strings → (N, C, H, W) float32 in [0, 1], as imports store them; Invalid names
    the first image that is not base64, not an image, of another size or of another mode."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    want_mode = _MODES.get(c)
    if want_mode is None:
        raise Conflict(f"the base model takes {c}-channel images, which cannot be sent as PNG")
    out = np.empty((len(encoded), c, h, w), dtype=np.float32)
    for i, text in enumerate(encoded):
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid(f"images[{i}]: not base64") from None
        try:
            img = Image.open(io.BytesIO(raw))
            size, mode = img.size, img.mode
            if size != (w, h):
                raise Invalid(f"images[{i}]: {size[0]}×{size[1]} pixels, the base model takes {w}×{h}")
            if mode != want_mode:
                raise Invalid(f"images[{i}]: mode {mode}, the base model takes mode {want_mode} ({c} channel(s))")
            arr = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, SyntaxError):
            raise Invalid(f"images[{i}]: not a readable image") from None
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return out


def _embeddings(rows: list[list[float]], dim: int) -> np.ndarray:
    for i, row in enumerate(rows):
        if len(row) != dim:
            raise Invalid(f"embeddings[{i}]: {len(row)} values, the project's base has dimension {dim}")
    Z = np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)
    if not np.isfinite(Z).all():
        raise Invalid(f"embeddings[{int(np.argwhere(~np.isfinite(Z))[0, 0])}]: not finite")
    return Z


def predictions_out(pred: dict[str, Any], attrs: list[Any]) -> dict[str, Any]:
    """Column-wise predictions: per attribute ``levels``, ``probs`` [N][C] and ``level`` [N], or ``mean``
    and ``var`` [N] for a continuous attribute."""
    levels_of = {a.name: list(a.levels) if a.levels else None for a in attrs}
    out: dict[str, Any] = {}
    for name, value in pred.items():
        if isinstance(value, tuple):
            out[name] = {"mean": np.asarray(value[0]).tolist(), "var": np.asarray(value[1]).tolist()}
        else:
            probs = np.asarray(value, dtype=np.float64)
            levels = levels_of.get(name) or [str(i) for i in range(probs.shape[1])]
            out[name] = {
                "levels": levels,
                "probs": probs.tolist(),
                "level": [levels[k] for k in probs.argmax(1)],
            }
    return out


def transform(
    *,
    session: Session,
    project: Project,
    embeddings: list[list[float]] | None,
    images: list[str] | None,
    version: int | None,
) -> dict[str, Any]:
    """Apply model version ``version`` (default: the active one) to the sent embeddings or images."""
    if (embeddings is None) == (images is None):
        raise Invalid("body: send exactly one of embeddings or images")
    field, sent = ("embeddings", embeddings) if embeddings is not None else ("images", images)
    assert sent is not None
    if not sent:
        raise Invalid(f"{field}: empty")
    if len(sent) > MAX_TRANSFORM_ITEMS:
        raise Invalid(f"{field}: at most {MAX_TRANSFORM_ITEMS} per request, got {len(sent)}")
    mv = model_version(session=session, project=project, version=version)
    rep = _representation(session, mv)
    lens = models.load_lens(session=session, mv=mv)
    dim = int(lens.dim_)
    if embeddings is not None:
        if rep.source != "embeddings":
            raise Invalid(f"embeddings: the project's base is {rep.source!r}, which encodes images: send images")
        Z = _embeddings(embeddings, dim)
    else:
        if rep.source == "embeddings":
            raise Invalid("images: the project's base is embeddings, which cannot encode images: send embeddings")
        from ml.steps import encoder_of

        encode, shape = encoder_of(rep.source, models.load_base_model(session=session, rep=rep))
        shape = shape or _items_image_shape(session, project)
        if shape is None:
            raise Conflict(f"project {project.id} has no images to tell the base model's image size")
        Z = np.asarray(encode(decode_images(images or [], tuple(shape))), dtype=np.float32)
        if Z.shape[1] != dim:
            raise Conflict(f"the base model gives z of dimension {Z.shape[1]}, the lens was fitted on {dim}")
    Zs, pred = lens.transform_and_predict(Z)
    return {
        "model_version": mv.version,
        "model_id": mv.id,
        "representation_id": rep.id,
        "source": rep.source,
        "n": len(Z),
        "attribute_dims": {
            k: np.asarray(v).astype(int).ravel().tolist() for k, v in dict(getattr(lens, "attribute_dims_", {})).items()
        },
        "z": Z.astype(np.float64).tolist(),
        "z_star": np.asarray(Zs, dtype=np.float64).tolist(),
        "predictions": predictions_out(pred, project.attributes),
    }
