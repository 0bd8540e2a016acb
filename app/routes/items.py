"""Single items: details with current labels, the image (PNG, ETag), the representation, label submission."""

from __future__ import annotations

import io
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse

from app.api.deps import ExpertUser, ItemDep, RowId, SessionDep, SettingsDep, ViewerUser
from app.api.item_out import item_out
from app.db.models import Item, Project
from app.schemas import LabelIn
from app.services import labels, models, projects
from app.services.errors import NotFound

router = APIRouter(prefix="/api/v1/items", tags=["items"])

MAX_SCALE = 16
MAX_IMAGE_SIDE = 2048


@router.get("/{iid}")
def get_item(user: ViewerUser, item: ItemDep, session: SessionDep) -> dict[str, Any]:
    """An item with its current label values."""
    current = labels.current_values(session=session, item_ids=[item.id]).get(item.id)
    return item_out(item, current)


def _scaled_png(png: bytes, scale: int) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    w, h = img.size
    scale = max(1, min(scale, MAX_IMAGE_SIDE // max(w, h, 1)))
    if scale == 1:
        return png
    buf = io.BytesIO()
    # Nearest neighbour keeps pixels crisp: experts judge strokes, not interpolation blur.
    img.resize((w * scale, h * scale), Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


@router.get(
    "/{iid}/image.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 304: {"description": "not modified"}},
)
def get_image(
    user: ViewerUser, iid: RowId, request: Request, session: SessionDep, scale: int = Query(1, ge=1, le=MAX_SCALE)
) -> Response:
    """The item's image as PNG, upscaled ``scale`` times with nearest neighbour; cacheable by ETag."""
    row = session.execute(sa.select(Item.content_hash).where(Item.id == iid)).one_or_none()
    if row is None:
        raise NotFound(f"no item {iid}")
    if row.content_hash is None:
        raise NotFound(f"item {iid} has no image")
    etag = f'"{row.content_hash[:32]}-{scale}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    png = session.scalar(sa.select(Item.image_png).where(Item.id == iid))
    return Response(_scaled_png(png, scale), media_type="image/png", headers=headers)


@router.get("/{iid}/representation")
def get_representation(user: ViewerUser, item: ItemDep, session: SessionDep) -> dict[str, Any]:
    """z of the item; with an active model also z* and per-attribute predictions."""
    project = session.get(Project, item.project_id)
    return models.representation_of(session=session, item=item, project=project)  # type: ignore[arg-type]


@router.post(
    "/{iid}/labels",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "replay of an earlier request with the same idempotency_key"}},
)
def submit_label(user: ExpertUser, iid: RowId, body: LabelIn, session: SessionDep, settings: SettingsDep) -> Any:
    """Label an item (level names / numbers per attribute; leave out what you don't know); ends your lease."""
    # The item is read here, not by a dependency: its read takes SQLite's write lock, which is then
    # held only for this one thread hop (a dependency runs in a hop of its own).
    item = session.get(Item, iid)
    if item is None:
        raise NotFound(f"no item {iid}")
    project = session.get(Project, item.project_id)
    assert project is not None
    eff = projects.effective_settings(project, settings)
    result = labels.submit(
        session=session,
        item=item,
        project=project,
        attrs=projects.schema(project),
        user=user,
        values=body.values,
        idempotency_key=body.idempotency_key,
        lease_id=body.lease_id,
        retrain_every=int(eff["retrain_every"]),
        project_id=body.project_id,
        overlap=int(eff["overlap"]),
    )
    out = {**labels.label_out(result.label), "replayed": result.replayed}
    if result.replayed:
        return JSONResponse(content=_jsonable(out), status_code=200)
    return out


def _jsonable(d: dict[str, Any]) -> Any:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(d)
