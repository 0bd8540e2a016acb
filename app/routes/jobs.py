"""Jobs (pretrain, retrain, ...) and model versions: list, queue, follow (SSE), cancel, activate."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, File, Query, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.api.deps import AdminUser, ProjectDep, RowId, SessionDep, ViewerUser
from app.db.models import Representation
from app.db.session import Database
from app.schemas import JobIn
from app.services import jobs, models
from app.services.errors import Conflict, Invalid

# The events stream re-reads the job row this often; the worker writes it at most once a second.
EVENTS_POLL_S = 0.25
KEEPALIVE_S = 15.0

router = APIRouter(prefix="/api/v1", tags=["jobs"])


@router.get("/projects/{pid}/jobs")
def list_jobs(
    user: ViewerUser,
    project: ProjectDep,
    session: SessionDep,
    status_: str | None = Query(None, alias="status", pattern="^(queued|running|succeeded|failed|cancelled)$"),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """The project's jobs, newest first."""
    rows = jobs.list_for_project(session=session, project_id=project.id, status=status_, limit=limit)
    return {"jobs": [jobs.job_out(j) for j in rows]}


@router.post("/projects/{pid}/jobs", status_code=status.HTTP_202_ACCEPTED)
def create_job(user: AdminUser, project: ProjectDep, body: JobIn, session: SessionDep) -> dict[str, Any]:
    """Queue a job (or get the one of that kind already queued for the project)."""
    job = jobs.enqueue(session=session, project_id=project.id, kind=body.kind, params=body.params, created_by=user.id)
    return jobs.job_out(job)


@router.get("/jobs/{jid}")
def get_job(user: ViewerUser, jid: RowId, session: SessionDep) -> dict[str, Any]:
    """A job's status, progress, stage and message, and every run of it (attempt, worker, outcome)."""
    out = jobs.job_out(jobs.get_or_raise(session=session, job_id=jid))
    out["runs"] = jobs.runs(session=session, job_id=jid)
    return out


def _snapshot(db: Database, jid: int) -> dict[str, Any] | None:
    with db.session(write=False) as s:
        return jobs.event_snapshot(session=s, job_id=jid)


@router.get(
    "/jobs/{jid}/events", response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}}
)
async def job_events(user: ViewerUser, jid: RowId, request: Request, session: SessionDep) -> StreamingResponse:
    """Server-sent events: one ``data: {json}`` event per change of the job, the last one terminal, then close."""
    await run_in_threadpool(jobs.get_or_raise, session=session, job_id=jid)  # 404 before the stream starts
    # The stream may last minutes: give the request's connection back now and read with short sessions.
    await run_in_threadpool(session.close)
    db: Database = request.app.state.db

    async def stream() -> AsyncIterator[str]:
        last: str | None = None
        sent = time.monotonic()
        while True:
            snap = await run_in_threadpool(_snapshot, db, jid)
            if snap is None:
                yield f"data: {json.dumps({'id': jid, 'status': 'deleted'})}\n\n"
                return
            body = json.dumps(snap, default=str, sort_keys=True)
            if body != last:
                yield f"data: {body}\n\n"
                last, sent = body, time.monotonic()
            elif time.monotonic() - sent >= KEEPALIVE_S:
                yield ": keep-alive\n\n"  # a comment line keeps proxies from closing an idle stream
                sent = time.monotonic()
            if snap["status"] in jobs.TERMINAL_STATUSES or await request.is_disconnected():
                return
            await asyncio.sleep(EVENTS_POLL_S)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


@router.post("/jobs/{jid}/cancel")
def cancel_job(user: AdminUser, jid: RowId, session: SessionDep) -> dict[str, Any]:
    """Cancel a queued job, or ask a running one to stop."""
    return jobs.job_out(jobs.cancel(session=session, job=jobs.get_or_raise(session=session, job_id=jid)))


@router.get("/projects/{pid}/models")
def list_models(user: ViewerUser, project: ProjectDep, session: SessionDep) -> dict[str, Any]:
    """The project's model versions, newest first."""
    return {"models": [models.version_out(m) for m in models.list_versions(session=session, project_id=project.id)]}


@router.get("/models/{mid}")
def get_model(user: ViewerUser, mid: RowId, session: SessionDep) -> dict[str, Any]:
    """One model version (metrics, stats, config; never the checkpoint)."""
    return models.version_out(models.get_or_raise(session=session, model_id=mid))


@router.post("/models/{mid}/activate")
def activate_model(user: AdminUser, mid: RowId, session: SessionDep) -> dict[str, Any]:
    """Make this version the project's active model (queue, scores, traversals follow it)."""
    mv = models.get_or_raise(session=session, model_id=mid)
    return models.version_out(models.activate(session=session, model=mv))


@router.post("/projects/{pid}/representation/encoder", status_code=status.HTTP_202_ACCEPTED)
def upload_encoder(
    user: AdminUser,
    project: ProjectDep,
    session: SessionDep,
    file: UploadFile = File(..., description="a TorchScript encoder (torch.jit.save)"),
) -> dict[str, Any]:
    """Upload a TorchScript encoder for a 'torchscript' project and queue the pretrain that computes z with it."""
    if (project.representation or {}).get("source") != "torchscript":
        raise Conflict(
            f"project {project.id} has representation source "
            f"{(project.representation or {}).get('source')!r}; encoders go with 'torchscript'"
        )
    blob = file.file.read()
    if not blob.startswith(b"PK"):
        raise Invalid("file: not a TorchScript archive (expected the zip written by torch.jit.save)")
    rep = Representation(
        project_id=project.id,
        source="torchscript",
        checkpoint=blob,
        active=False,
        config={"uploaded_by": user.id, "bytes": len(blob), "filename": file.filename},
    )
    session.add(rep)
    session.flush()
    job = jobs.enqueue(
        session=session,
        project_id=project.id,
        kind="pretrain",
        params={"reason": f"encoder uploaded (representation {rep.id})"},
        created_by=user.id,
        commit=False,
    )
    session.commit()
    return {"representation_id": rep.id, "job": jobs.job_out(job)}
