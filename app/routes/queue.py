"""The labelling queue: pull leased items, release (skip) a lease."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from app.api.deps import AdminUser, ExpertUser, ProjectDep, ProjectId, SessionDep, SettingsDep, project_in_hop
from app.services import projects, queue

router = APIRouter(prefix="/api/v1", tags=["queue"])


@router.post("/projects/{pid}/queue/next")
def queue_next(
    user: ExpertUser,
    pid: ProjectId,
    session: SessionDep,
    settings: SettingsDep,
    n: int = Query(1, ge=1, le=queue.MAX_BATCH),
) -> dict[str, Any]:
    """Up to ``n`` items leased to you (your live leases first), by the active model's acquisition score."""
    # Looked up here rather than by a dependency, which would run in a worker-thread hop of its own:
    # this is the busiest request of all.
    project = project_in_hop(session, pid)
    eff = projects.effective_settings(project, settings)
    items, order = queue.next_batch(
        session=session,
        project=project,
        user=user,
        n=n,
        lease_seconds=float(eff["lease_seconds"]),
        eval_fraction=float(eff["eval_fraction"]),
        overlap=int(eff["overlap"]),
    )
    out: dict[str, Any] = {"items": items, **order}
    if len(items) < n:
        # Fewer than asked: say whether items you skipped are held back, and until when.
        out.update(queue.my_skips(session=session, project=project, user=user))
    return out


@router.post("/leases/{lease_id}/release")
def release_lease(user: ExpertUser, lease_id: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Skip an item: end your lease; the item goes to other experts and comes back to you only after the
    project's ``skip_hours`` (default: the rest of the day, UTC)."""
    lease = queue.release(session=session, lease_id=lease_id, user=user, settings=settings)
    return {"lease_id": lease.id, "item_id": lease.item_id, "ended_at": lease.ended_at, "end_reason": lease.end_reason}


@router.get("/projects/{pid}/items/skipped")
def skipped_items(
    user: AdminUser, project: ProjectDep, session: SessionDep, limit: int = Query(100, ge=1, le=1000)
) -> dict[str, Any]:
    """Unlabelled items every active expert of the project has skipped (admins): candidates to review."""
    return queue.skipped_by_all(session=session, project=project, limit=limit)
