"""Background jobs: enqueue (at most one queued job per kind and project), list, cancel, and the retrain rule."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import JOB_KINDS, Job, Label
from app.services.errors import Conflict, Invalid, NotFound

ACTIVE_STATUSES = ("queued", "running")


def get_or_raise(*, session: Session, job_id: int) -> Job:
    """The job with this id; NotFound otherwise."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def list_for_project(*, session: Session, project_id: int, status: str | None = None,
                     limit: int = 100) -> list[Job]:
    """The project's jobs, newest first."""
    q = sa.select(Job).where(Job.project_id == project_id)
    if status:
        q = q.where(Job.status == status)
    return list(session.scalars(q.order_by(Job.id.desc()).limit(limit)))


def _queued(session: Session, project_id: int, kind: str) -> Job | None:
    return session.scalar(sa.select(Job).where(Job.project_id == project_id, Job.kind == kind,
                                               Job.status == "queued"))


def enqueue(*, session: Session, project_id: int, kind: str, params: dict[str, Any] | None = None,
            created_by: int | None = None, commit: bool = True) -> Job:
    """Queue a job, or return the already-queued job of the same kind for this project."""
    if kind not in JOB_KINDS:
        raise Invalid(f"kind: must be one of {list(JOB_KINDS)}, got {kind!r}")
    existing = _queued(session, project_id, kind)
    if existing is not None:
        return existing
    job = Job(project_id=project_id, kind=kind, status="queued", params=dict(params or {}), created_by=created_by)
    try:
        # A savepoint: when a concurrent request queued the same kind first, the partial unique index
        # refuses this row and the caller's other writes survive.
        with session.begin_nested():
            session.add(job)
    except sa_exc.IntegrityError:
        existing = _queued(session, project_id, kind)
        if existing is None:
            raise
        return existing
    if commit:
        session.commit()
    return job


def job_out(job: Job) -> dict[str, Any]:
    """The public fields of a job."""
    return {"id": job.id, "project_id": job.project_id, "kind": job.kind, "status": job.status,
            "params": job.params, "result": job.result, "progress": job.progress, "stage": job.stage,
            "message": job.message, "eta_seconds": job.eta_seconds, "loss": job.loss, "attempts": job.attempts,
            "max_attempts": job.max_attempts, "cancel_requested": job.cancel_requested,
            "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
            "heartbeat_at": job.heartbeat_at, "created_by": job.created_by}


def cancel(*, session: Session, job: Job) -> Job:
    """Cancel a queued job at once, or ask a running one to stop (the worker honours cancel_requested)."""
    if job.status == "queued":
        job.status = "cancelled"
        job.finished_at = utcnow()
        job.cancel_requested = True
    elif job.status == "running":
        job.cancel_requested = True
    else:
        raise Conflict(f"job {job.id} is already {job.status}")
    session.commit()
    return job


def maybe_enqueue_retrain(*, session: Session, project_id: int, retrain_every: int,
                          created_by: int | None = None) -> Job | None:
    """Queue a retrain when ``retrain_every`` new training (non-eval) labels arrived since the last one.

    "Since" counts label rows with an id above the ``since_label_id`` recorded by the latest retrain
    that is queued, running or succeeded. The caller commits.
    """
    last = session.scalar(
        sa.select(Job).where(Job.project_id == project_id, Job.kind == "retrain",
                             Job.status.in_(("queued", "running", "succeeded")))
        .order_by(Job.id.desc()).limit(1)
    )
    if last is not None and last.status == "queued":
        return None
    since = int((last.params or {}).get("since_label_id", 0)) if last is not None else 0
    new = session.scalar(
        sa.select(sa.func.count()).select_from(Label)
        .where(Label.project_id == project_id, Label.eval.is_(False), Label.kind == "label", Label.id > since)
    ) or 0
    if new < retrain_every:
        return None
    top = session.scalar(sa.select(sa.func.max(Label.id)).where(Label.project_id == project_id)) or 0
    return enqueue(session=session, project_id=project_id, kind="retrain",
                   params={"since_label_id": int(top), "reason": f"{new} new labels"},
                   created_by=created_by, commit=False)
