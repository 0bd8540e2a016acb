"""Projects and their items: create (with a dataset), list, read, update, import items, browse items."""

from __future__ import annotations

import base64
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import UploadFile

from app.api.deps import AdminUser, ProjectDep, SessionDep, SettingsDep, ViewerUser
from app.api.item_out import item_out
from app.config import Settings
from app.db.models import Item, Job, Project
from app.schemas import ImportIn, ProjectIn, ProjectPatch
from app.services import imports, jobs, labels, projects
from app.services.errors import Invalid
from app.services.imports import Loaded
from app.services.jobs import job_out
from ml.strategies import strategy_in_effect

router = APIRouter(prefix="/api/v1", tags=["projects"])


def project_out(project: Project, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The public fields of a project."""
    return {
        "id": project.id,
        "name": project.name,
        "strategy": project.strategy,
        # What the queue follows: "auto" resolved to the rule that measured best.
        "strategy_in_effect": strategy_in_effect(project.strategy),
        "representation": project.representation,
        "settings": project.settings,
        "attributes": [
            {
                "name": a.name,
                "kind": a.kind,
                **({"levels": a.levels} if a.levels is not None else {"low": a.low, "high": a.high}),
            }
            for a in project.attributes
        ],
        "created_at": project.created_at,
        **(extra or {}),
    }


@router.get("/projects")
def list_projects(user: ViewerUser, session: SessionDep) -> dict[str, Any]:
    """Every project with its counts."""
    return {
        "projects": [
            project_out(p, projects.summary(session=session, project=p)) for p in projects.list_all(session=session)
        ]
    }


@router.post("/projects", status_code=status.HTTP_201_CREATED)
def create_project(user: AdminUser, body: ProjectIn, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Create a project (attributes, representation, strategy, settings), import its dataset, queue its pretrain."""
    project, loaded = projects.create_with_dataset(session=session, settings=settings, body=body, created_by_id=user.id)
    pretrain = session.scalar(sa.select(Job).where(Job.project_id == project.id, Job.kind == "pretrain"))
    return project_out(
        project,
        {
            **projects.summary(session=session, project=project),
            "import": {"imported": len(loaded), "errors": loaded.errors} if loaded is not None else None,
            "job": job_out(pretrain) if pretrain else None,
        },
    )


@router.get("/projects/{pid}")
def get_project(user: ViewerUser, project: ProjectDep, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """One project with its counts and effective settings."""
    return project_out(
        project,
        {
            **projects.summary(session=session, project=project),
            "effective_settings": projects.effective_settings(project, settings),
        },
    )


@router.patch("/projects/{pid}")
def patch_project(
    user: AdminUser, project: ProjectDep, body: ProjectPatch, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Change name, strategy, settings, representation or attributes (labelled attributes stay as they are)."""
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if "settings" in changes:
        changes["settings"] = body.settings.model_dump(exclude_none=True)  # type: ignore[union-attr]
    if "attributes" in changes:
        changes["attributes"] = [a.model_dump(exclude_none=True) for a in body.attributes or []]
    project = projects.update(session=session, project=project, changes=changes, default_overlap=settings.overlap)
    return project_out(project, projects.summary(session=session, project=project))


_import_adapter = TypeAdapter(ImportIn)


def _store(session: Any, project_id: int, loaded: Loaded, user_id: int) -> dict[str, Any]:
    project = projects.get_or_raise(session=session, project_id=project_id)
    n = imports.store(session=session, project=project, loaded=loaded, commit=False)
    job = jobs.enqueue(session=session, project_id=project_id, kind="pretrain", created_by=user_id, commit=False)
    session.commit()
    return {"imported": n, "errors": loaded.errors, "job": job_out(job)}


async def _load_upload(request: Request, settings: Settings) -> Loaded:
    form = await request.form(max_files=2, max_fields=10)
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise Invalid("file: a multipart field 'file' (zip of images, or .npy/.npz embeddings) is required")
    images = form.get("images")
    if images is not None and not isinstance(images, UploadFile):
        raise Invalid("images: must be a file (zip of images)")
    kind = await run_in_threadpool(imports.sniff_upload, file.file)
    return await run_in_threadpool(imports.load_upload, kind, file.file, images.file if images else None, settings)


@router.post(
    "/projects/{pid}/items:import",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ImportIn"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": "zip of images, or .npy/.npz",
                            },
                            "images": {
                                "type": "string",
                                "format": "binary",
                                "description": "zip of images for embeddings",
                            },
                        },
                    }
                },
            }
        }
    },
)
async def import_items(
    user: AdminUser, project: ProjectDep, request: Request, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Add items from a server-side dataset spec (JSON) or an upload (multipart: zip of images, or embeddings)."""
    user_id, project_id, representation = user.id, project.id, dict(project.representation)
    # Loading can take seconds: end the read transaction (and SQLite's write lock) first.
    await run_in_threadpool(session.rollback)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            payload = await request.json()
        except ValueError:
            raise RequestValidationError(
                [{"loc": ("body",), "msg": "malformed JSON", "type": "json_invalid"}]
            ) from None
        try:
            spec = _import_adapter.validate_python(payload)
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        projects.check_dataset(representation, spec.dataset.source)
        loaded = await run_in_threadpool(imports.load_spec, spec.dataset.model_dump(), settings)
    elif ctype.startswith("multipart/form-data"):
        loaded = await _load_upload(request, settings)
        projects.check_dataset(representation, "embeddings" if loaded.embeddings is not None else "images")
    else:
        raise HTTPException(415, detail="send application/json {\"dataset\": {...}} or multipart/form-data with 'file'")
    return await run_in_threadpool(_store, session, project_id, loaded, user_id)


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return int(base64.urlsafe_b64decode(cursor.encode() + b"==").decode())
    except (ValueError, UnicodeDecodeError):
        raise Invalid("cursor: not a cursor returned by this endpoint") from None


def _encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(str(last_id).encode()).decode().rstrip("=")


@router.get("/projects/{pid}/items")
def list_items(
    user: ViewerUser,
    project: ProjectDep,
    session: SessionDep,
    split: str | None = Query(None, pattern="^(pool|eval)$"),
    labelled: bool | None = None,
    cursor: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """A page of the project's items in id order; pass ``next_cursor`` back as ``cursor`` for the next page."""
    q = sa.select(Item).where(Item.project_id == project.id, Item.id > _decode_cursor(cursor))
    if split:
        q = q.where(Item.split == split)
    if labelled is not None:
        q = q.where(Item.labelled.is_(labelled))
    rows = list(session.scalars(q.order_by(Item.id).limit(limit + 1)))
    page = rows[:limit]
    current = labels.current_values(session=session, item_ids=[i.id for i in page]) if page else {}
    return {
        "items": [item_out(i, current.get(i.id)) for i in page],
        "next_cursor": _encode_cursor(page[-1].id) if len(rows) > limit else None,
    }
