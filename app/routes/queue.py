"""The labelling queue: pull leased items, release (skip) a lease."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from app.api.deps import ExpertUser, ProjectDep, SessionDep, SettingsDep
from app.services import projects, queue

router = APIRouter(prefix="/api/v1", tags=["queue"])


@router.post("/projects/{pid}/queue/next")
def queue_next(user: ExpertUser, project: ProjectDep, session: SessionDep, settings: SettingsDep,
               n: int = Query(1, ge=1, le=queue.MAX_BATCH)) -> dict[str, Any]:
    """Up to ``n`` items leased to you (your live leases first), by the active model's acquisition score."""
    eff = projects.effective_settings(project, settings)
    items = queue.next_items(session=session, project=project, user=user, n=n,
                             lease_seconds=float(eff["lease_seconds"]), eval_fraction=float(eff["eval_fraction"]))
    return {"items": items}


@router.post("/leases/{lease_id}/release")
def release_lease(user: ExpertUser, lease_id: str, session: SessionDep) -> dict[str, Any]:
    """Skip an item: end your lease so the item returns to the pool."""
    lease = queue.release(session=session, lease_id=lease_id, user=user)
    return {"lease_id": lease.id, "item_id": lease.item_id, "ended_at": lease.ended_at, "end_reason": lease.end_reason}
