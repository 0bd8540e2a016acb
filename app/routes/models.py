"""Reads of the active model: acquisition scores, the metric curve, traversal images."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from app.api.deps import DatabaseDep, ProjectDep, SessionDep, ViewerUser
from app.schemas import Strategy, TransformIn
from app.services import export, models, transform
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


@router.post("/transform")
def post_transform(user: ViewerUser, project: ProjectDep, body: TransformIn, session: SessionDep) -> dict[str, Any]:
    """A model version (default: the active one) applied to data you send, without importing it.

    Send ``embeddings`` (rows of the project's base dimension) or ``images`` (base64 PNGs of the
    project's image size and mode), at most 10,000 per request. Returns, row for row, z, z*
    (``z_star``) and per attribute the predicted distribution: ``levels``, ``probs`` and the most
    probable ``level``, or ``mean`` and ``var`` for a continuous attribute.
    """
    return transform.transform(
        session=session,
        project=project,
        embeddings=body.embeddings,
        images=body.images,
        version=body.model_version,
    )


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
def get_export(
    user: ViewerUser,
    project: ProjectDep,
    session: SessionDep,
    db: DatabaseDep,
    format: str = Query("jsonl", pattern="^(jsonl|csv)$"),
    include: str | None = Query(
        None, max_length=200, description="comma-separated: z, z_star, predictions, score (default: all there are)"
    ),
) -> StreamingResponse:
    """Every item of the pool with its z, z*, predictions and score under the active model, streamed
    (JSON Lines or CSV) in constant memory; values rounded to 6 decimals, missing ones null / empty."""
    p = export.plan(session=session, project=project, include=include)
    headers = {
        "Content-Disposition": f'attachment; filename="project-{project.id}-export.{format}"',
        "X-Lenslab-Fields": ",".join(p.fields),
    }
    if p.model is not None:
        headers["X-Lenslab-Model-Version"] = str(p.model.version)
        headers["X-Lenslab-Score-Strategy"] = str(p.strategy)
    if format == "csv":
        return StreamingResponse(export.csv_lines(db, p), media_type="text/csv", headers=headers)
    return StreamingResponse(export.jsonl(db, p), media_type="application/x-ndjson", headers=headers)
