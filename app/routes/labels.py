"""Label history: retract (undo), export (json, jsonl, csv), bulk import."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Query, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import StreamingResponse

from app.api.deps import AdminUser, ExpertUser, ItemDep, ProjectDep, RowId, SessionDep, SettingsDep, ViewerUser
from app.db.models import Item
from app.schemas import LabelImportIn, ResolveIn
from app.services import agreement, labels, projects

router = APIRouter(prefix="/api/v1", tags=["labels"])


@router.post("/labels/{label_id}/retract", status_code=status.HTTP_201_CREATED)
def retract_label(user: ExpertUser, label_id: RowId, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Undo a label: appends a retraction row; the item's current values fall back to earlier labels."""
    label = labels.get_or_raise(session=session, label_id=label_id)
    project = projects.get_or_raise(session=session, project_id=label.project_id)
    overlap = int(projects.effective_settings(project, settings)["overlap"])
    return labels.label_out(labels.retract(session=session, label=label, user=user, overlap=overlap))


@router.get("/projects/{pid}/labels", response_model=None)
def export_labels(
    user: ViewerUser,
    project: ProjectDep,
    session: SessionDep,
    format: str = Query("json", pattern="^(json|jsonl|csv)$"),
    history: bool = Query(False, description="every label and retraction row instead of current values"),
) -> Any:
    """The project's labels: current values per labelled item (or the full history) as json, jsonl or csv."""
    attr_names = [a.name for a in project.attributes]
    if history:
        rows = [jsonable_encoder(labels.label_out(r)) for r in labels.history(session=session, project_id=project.id)]
    else:
        current = labels.current_values(session=session, project_id=project.id)
        meta = {
            i.id: i
            for i in session.execute(
                sa.select(Item.id, Item.source_index, Item.external_id, Item.split).where(
                    Item.project_id == project.id, Item.label_count > 0
                )
            ).all()
        }
        rows = [
            {
                "item_id": iid,
                "source_index": meta[iid].source_index,
                "external_id": meta[iid].external_id,
                "split": meta[iid].split,
                "values": vals,
            }
            for iid, vals in sorted(current.items())
            if iid in meta
        ]
    if format == "json":
        return {"project_id": project.id, "attributes": attr_names, "labels": rows}
    if format == "jsonl":
        return StreamingResponse((json.dumps(r) + "\n" for r in rows), media_type="application/x-ndjson")

    def csv_lines() -> Iterator[str]:
        buf = io.StringIO()
        w = csv.writer(buf)
        if history:
            w.writerow(["id", "item_id", "user_id", "kind", "retracts_id", "eval", "created_at", *attr_names])
            for r in rows:
                w.writerow(
                    [
                        r["id"],
                        r["item_id"],
                        r["user_id"],
                        r["kind"],
                        r["retracts_id"],
                        r["eval"],
                        r["created_at"],
                        *[r["values"].get(a, "") for a in attr_names],
                    ]
                )
        else:
            w.writerow(["item_id", "source_index", "external_id", "split", *attr_names])
            for r in rows:
                w.writerow(
                    [
                        r["item_id"],
                        r["source_index"],
                        r["external_id"] or "",
                        r["split"],
                        *[r["values"].get(a, "") for a in attr_names],
                    ]
                )
        yield buf.getvalue()

    return StreamingResponse(
        csv_lines(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="project-{project.id}-labels.csv"'},
    )


@router.post("/projects/{pid}/labels:import", status_code=status.HTTP_201_CREATED)
def import_labels(
    user: AdminUser, project: ProjectDep, body: LabelImportIn, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Append many labels (by item_id or source_index), all or nothing; ``eval: true`` rows join the eval split."""
    eff = projects.effective_settings(project, settings)
    return labels.import_bulk(
        session=session,
        project=project,
        attrs=projects.schema(project),
        rows=[r.model_dump() for r in body.labels],
        user=user,
        retrain_every=int(eff["retrain_every"]),
        overlap=int(eff["overlap"]),
    )


@router.get("/projects/{pid}/agreement")
def get_agreement(user: ViewerUser, project: ProjectDep, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Inter-annotator agreement per attribute: Krippendorff's α (nominal for categorical, ordinal, interval
    for continuous) on items labelled by two or more experts, a 95% bootstrap interval over items, and
    per expert α and exact agreement with the others' consensus (lowest first)."""
    overlap = int(projects.effective_settings(project, settings)["overlap"])
    return agreement.project_agreement(session=session, project=project, overlap=overlap)


@router.get("/projects/{pid}/disagreements")
def get_disagreements(
    user: AdminUser,
    project: ProjectDep,
    session: SessionDep,
    attribute: str | None = Query(None, max_length=64),
    limit: int = Query(50, ge=1, le=1000),
    include_resolved: bool = False,
) -> dict[str, Any]:
    """Items on which experts disagree, most split first: the labels, who gave them, and any resolution."""
    return agreement.disagreements(
        session=session, project=project, attribute=attribute, limit=limit, include_resolved=include_resolved
    )


@router.post("/items/{iid}/resolve", status_code=status.HTTP_201_CREATED)
def resolve_item(user: AdminUser, item: ItemDep, body: ResolveIn, session: SessionDep) -> dict[str, Any]:
    """Resolve a disagreement: a new label, marked adjudicated, becomes the item's target for the lens;
    the experts' labels stay in the history and in the agreement."""
    project = projects.get_or_raise(session=session, project_id=item.project_id)
    return labels.label_out(
        agreement.resolve(session=session, project=project, item=item, user=user, values=body.values)
    )
