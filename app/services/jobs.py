"""Background jobs: enqueue (at most one queued job per kind and project), list, cancel, and the retrain rule."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import JOB_KINDS, STRATEGIES, Job, JobRun, Label, ModelVersion
from app.services.errors import Conflict, Invalid, NotFound
from ml.steps import lens_params

ACTIVE_STATUSES = ("queued", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
# Kinds a worker runs today; "experiment" is reserved for the experiments feature.
RUNNABLE_KINDS = ("pretrain", "retrain", "score", "evaluate")


def get_or_raise(*, session: Session, job_id: int) -> Job:
    """The job with this id; NotFound otherwise."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def list_for_project(*, session: Session, project_id: int, status: str | None = None, limit: int = 100) -> list[Job]:
    """The project's jobs, newest first."""
    q = sa.select(Job).where(Job.project_id == project_id)
    if status:
        q = q.where(Job.status == status)
    return list(session.scalars(q.order_by(Job.id.desc()).limit(limit)))


def _queued(session: Session, project_id: int, kind: str) -> Job | None:
    return session.scalar(sa.select(Job).where(Job.project_id == project_id, Job.kind == kind, Job.status == "queued"))


# The parameters each job kind reads (app/worker/tasks.py); anything else is refused when queued,
# not ignored when run. "since_label_id" is the retrain's bookmark for counting new labels.
JOB_PARAMS: dict[str, tuple[str, ...]] = {
    "pretrain": ("reason",),
    "retrain": ("reason", "lens", "strategy", "since_label_id"),
    "score": ("reason", "model_id", "strategy"),
    "evaluate": ("reason", "model_id"),
}


def check_params(*, session: Session, project_id: int, kind: str, params: Any) -> None:
    """Refuse (Invalid, naming the key, the value and what is allowed) parameters a job would not honour."""
    if not isinstance(params, dict):
        raise Invalid(f"params: must be an object, got {type(params).__name__}")
    allowed = JOB_PARAMS.get(kind, ())
    for key, value in params.items():
        if key not in allowed:
            raise Invalid(
                f"params.{key}: not a parameter of {kind} jobs (value {value!r}); allowed: {list(allowed) or 'none'}"
            )
        if key == "reason" and not (isinstance(value, str) and len(value) <= 200):
            raise Invalid(f"params.reason: must be a string of at most 200 characters, got {value!r}")
        if key == "strategy" and value not in STRATEGIES:
            raise Invalid(f"params.strategy: must be one of {list(STRATEGIES)}, got {value!r}")
        if key in ("model_id", "since_label_id") and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise Invalid(f"params.{key}: must be a non-negative integer, got {value!r}")
        if (
            key == "model_id"
            and session.scalar(
                sa.select(ModelVersion.id).where(ModelVersion.id == value, ModelVersion.project_id == project_id)
            )
            is None
        ):
            raise Invalid(f"params.model_id: no model version {value} in project {project_id}")
        if key == "lens" and value is not None:
            try:
                lens_params(value, where="params.lens")
            except ValueError as exc:
                raise Invalid(str(exc)) from None


def enqueue(
    *,
    session: Session,
    project_id: int,
    kind: str,
    params: dict[str, Any] | None = None,
    created_by: int | None = None,
    commit: bool = True,
) -> Job:
    """Queue a job, or return the already-queued job of the same kind for this project."""
    if kind not in JOB_KINDS:
        raise Invalid(f"kind: must be one of {list(RUNNABLE_KINDS)}, got {kind!r}")
    if kind not in RUNNABLE_KINDS:
        raise Invalid(f"kind: {kind!r} jobs are not available yet; runnable kinds: {list(RUNNABLE_KINDS)}")
    check_params(session=session, project_id=project_id, kind=kind, params=params or {})
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
    return {
        "id": job.id,
        "project_id": job.project_id,
        "kind": job.kind,
        "status": job.status,
        "params": job.params,
        "result": job.result,
        "progress": job.progress,
        "stage": job.stage,
        "message": job.message,
        "eta_seconds": job.eta_seconds,
        "loss": job.loss,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "heartbeat_at": job.heartbeat_at,
        "worker_id": job.worker_id,
        "created_by": job.created_by,
    }


def runs(*, session: Session, job_id: int) -> list[dict[str, Any]]:
    """Every claim of the job by a worker, in order: attempt, worker, start, end, outcome, message."""
    rows = session.scalars(sa.select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.attempt))
    return [
        {
            "attempt": r.attempt,
            "worker_id": r.worker_id,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "outcome": r.outcome,
            "message": r.message,
        }
        for r in rows
    ]


def event_snapshot(*, session: Session, job_id: int) -> dict[str, Any] | None:
    """The fields a progress event carries, read fresh (None when the job is gone)."""
    row = session.execute(
        sa.select(
            Job.id,
            Job.kind,
            Job.status,
            Job.progress,
            Job.stage,
            Job.message,
            Job.eta_seconds,
            Job.loss,
            Job.attempts,
            Job.result,
        ).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return None
    return {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "progress": row.progress,
        "stage": row.stage,
        "message": row.message,
        "eta_seconds": row.eta_seconds,
        "loss": row.loss,
        "attempts": row.attempts,
        "result": row.result if row.status in TERMINAL_STATUSES else None,
    }


def cancel(*, session: Session, job: Job) -> Job:
    """Cancel a queued job at once, or ask a running one to stop (the worker honours cancel_requested)."""
    # Conditional updates: a worker may finish (or claim) the job between our read and our write.
    now = utcnow()
    res = session.execute(
        sa.update(Job)
        .where(Job.id == job.id, Job.status == "queued")
        .values(status="cancelled", finished_at=now, cancel_requested=True, message="cancelled before it started")
        .execution_options(synchronize_session=False)
    )
    if res.rowcount == 0:
        res = session.execute(
            sa.update(Job)
            .where(Job.id == job.id, Job.status == "running")
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    session.refresh(job)
    if res.rowcount == 0:
        raise Conflict(f"job {job.id} is already {job.status}")
    return job


# The retrain check runs on every label submit: its statements are built once, values bound per call.
_LAST_RETRAIN = (
    sa.select(Job)
    .where(
        Job.project_id == sa.bindparam("pid"),
        Job.kind == "retrain",
        Job.status.in_(("queued", "running", "succeeded")),
    )
    .order_by(Job.id.desc())
    .limit(1)
)
_NEW_TRAINING_LABELS = (
    sa.select(sa.func.count())
    .select_from(Label)
    .where(
        Label.project_id == sa.bindparam("pid"),
        Label.eval.is_(False),
        Label.kind == "label",
        Label.id > sa.bindparam("since"),
    )
)
_LAST_LABEL_ID = sa.select(sa.func.max(Label.id)).where(Label.project_id == sa.bindparam("pid"))


def maybe_enqueue_retrain(
    *, session: Session, project_id: int, retrain_every: int, created_by: int | None = None
) -> Job | None:
    """Queue a retrain when ``retrain_every`` new training (non-eval) labels arrived since the last one.

    "Since" counts label rows with an id above the ``since_label_id`` recorded by the latest retrain
    that is queued, running or succeeded. The caller commits.
    """
    last = session.scalar(_LAST_RETRAIN, {"pid": project_id})
    if last is not None and last.status == "queued":
        return None
    since = int((last.params or {}).get("since_label_id", 0)) if last is not None else 0
    new = session.scalar(_NEW_TRAINING_LABELS, {"pid": project_id, "since": since}) or 0
    if new < retrain_every:
        return None
    top = session.scalar(_LAST_LABEL_ID, {"pid": project_id}) or 0
    return enqueue(
        session=session,
        project_id=project_id,
        kind="retrain",
        params={"since_label_id": int(top), "reason": f"{new} new labels"},
        created_by=created_by,
        commit=False,
    )
