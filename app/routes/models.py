"""Reads of the active model: acquisition scores, the metric curve, traversal images."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from app.api.deps import ProjectDep, SessionDep, ViewerUser
from app.schemas import Strategy
from app.services import models
from app.services.errors import Invalid

router = APIRouter(prefix="/api/v1/projects/{pid}", tags=["models"])


@router.get("/scores")
def get_scores(
    user: ViewerUser,
    project: ProjectDep,
    session: SessionDep,
    strategy: Strategy | None = Query(None),
    order: str = Query("desc", pattern="^(asc|desc)$"),
    limit: int = Query(100, ge=1, le=100_000),
    unlabelled: bool = False,
) -> dict[str, Any]:
    """The active model's acquisition score per item (409 before the first model)."""
    return models.scores(
        session=session, project=project, strategy=strategy, order=order, limit=limit, unlabelled_only=unlabelled
    )


@router.get("/metrics")
def get_metrics(user: ViewerUser, project: ProjectDep, session: SessionDep) -> dict[str, Any]:
    """The interpretability curve: per evaluation n_labels, per-attribute score/accuracy, overall, test LL.

    With k > 1 designated z* dims per attribute (``dims_per_attribute``), each point also carries the
    metric on k dims: ``overall_k`` / ``overall_accuracy_k`` and per attribute ``score_k`` / ``accuracy_k``
    (the one-dimension ``score`` stays the paper's headline).
    """
    return {"points": models.metric_points(session=session, project_id=project.id)}


def _ids(raw: str | None) -> list[int] | None:
    if not raw:
        return None
    try:
        return [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise Invalid("items: a comma-separated list of item ids") from None


@router.get("/traversals/{attribute}.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def get_traversal(
    user: ViewerUser,
    project: ProjectDep,
    attribute: str,
    session: SessionDep,
    items: str | None = Query(None, description="comma-separated item ids (default: 4 items; 2 for a 2-D grid)"),
    steps: int = Query(7, ge=2, le=models.MAX_TRAVERSAL_STEPS),
    scale: int = Query(2, ge=1, le=8),
) -> Response:
    """Latent traversal of one attribute's z* dimension under the active model, decoded to an image grid.

    One designated dimension: rows are items, columns the dimension's steps. Two or more (a lens with
    ``dims_per_attribute`` ≥ 2): per item a steps × steps grid over the first two dimensions (rows the
    first, columns the second), items' grids stacked top to bottom with a wider gap (default: 2 items).
    """
    png = models.traversal_png(
        session=session, project=project, attribute=attribute, item_ids=_ids(items), steps=steps, scale=scale
    )
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})
