"""Jobs (pretrain, retrain, ...) and model versions: list, queue, cancel, activate."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, status

from app.api.deps import AdminUser, ProjectDep, SessionDep, ViewerUser
from app.schemas import JobIn
from app.services import jobs, models

router = APIRouter(prefix="/api/v1", tags=["jobs"])


@router.get("/projects/{pid}/jobs")
def list_jobs(user: ViewerUser, project: ProjectDep, session: SessionDep,
              status_: str | None = Query(None, alias="status", pattern="^(queued|running|succeeded|failed|cancelled)$"),
              limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    """The project's jobs, newest first."""
    rows = jobs.list_for_project(session=session, project_id=project.id, status=status_, limit=limit)
    return {"jobs": [jobs.job_out(j) for j in rows]}


@router.post("/projects/{pid}/jobs", status_code=status.HTTP_202_ACCEPTED)
def create_job(user: AdminUser, project: ProjectDep, body: JobIn, session: SessionDep) -> dict[str, Any]:
    """Queue a job (or get the one of that kind already queued for the project)."""
    job = jobs.enqueue(session=session, project_id=project.id, kind=body.kind, params=body.params,
                       created_by=user.id)
    return jobs.job_out(job)


@router.get("/jobs/{jid}")
def get_job(user: ViewerUser, jid: int, session: SessionDep) -> dict[str, Any]:
    """A job's status, progress, stage and message."""
    return jobs.job_out(jobs.get_or_raise(session=session, job_id=jid))


@router.post("/jobs/{jid}/cancel")
def cancel_job(user: AdminUser, jid: int, session: SessionDep) -> dict[str, Any]:
    """Cancel a queued job, or ask a running one to stop."""
    return jobs.job_out(jobs.cancel(session=session, job=jobs.get_or_raise(session=session, job_id=jid)))


@router.get("/projects/{pid}/models")
def list_models(user: ViewerUser, project: ProjectDep, session: SessionDep) -> dict[str, Any]:
    """The project's model versions, newest first."""
    return {"models": [models.version_out(m) for m in models.list_versions(session=session, project_id=project.id)]}


@router.get("/models/{mid}")
def get_model(user: ViewerUser, mid: int, session: SessionDep) -> dict[str, Any]:
    """One model version (metrics, stats, config; never the checkpoint)."""
    return models.version_out(models.get_or_raise(session=session, model_id=mid))


@router.post("/models/{mid}/activate")
def activate_model(user: AdminUser, mid: int, session: SessionDep) -> dict[str, Any]:
    """Make this version the project's active model (queue, scores, traversals follow it)."""
    mv = models.get_or_raise(session=session, model_id=mid)
    return models.version_out(models.activate(session=session, model=mv))
