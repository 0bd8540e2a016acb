"""The browser UI: server-rendered pages and htmx partials (login, projects, labelling, admin, insights).

Pages call the same services as the REST API (or the API's route functions themselves); htmx
requests (``HX-Request``) get only the partial they swap. ``install(app)`` mounts ``/static``,
adds these routers and the handlers that turn page failures into redirects and HTML error pages.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import FormData, UploadFile

from app import security
from app.api.deps import ProjectDep, RowId, SessionDep, SettingsDep, ViewerUser, sign_in
from app.db.models import ROLES, STRATEGIES, Item, Job, MetricPoint, ModelVersion, Project, Representation, User
from app.services import agreement, imports, jobs, metric_reasons, models, projects, queue
from app.services import sessions as session_service
from app.services import tokens as token_service
from app.services import users as user_service
from app.services.errors import ServiceError
from app.web import forms, insights, labelling
from app.web.auth import (
    LOGIN_NONCE_COOKIE,
    AdminPage,
    ExpertPage,
    LoginForm,
    LoginRequired,
    PageError,
    ViewerPage,
    safe_next,
)
from app.web.templating import STATIC_DIR, is_htmx, render
from ml.steps import DECODING_SOURCES, REPRESENTATION_SOURCES
from ml.strategies import AUTO_STRATEGY

router = APIRouter(include_in_schema=False)
api_router = APIRouter(prefix="/api/v1", tags=["insights"])

JOB_KINDS_STARTABLE = ("pretrain", "retrain", "score", "evaluate")


async def form_data(request: Request) -> FormData:
    """The posted form (parsed once; the CSRF check reads the same cached copy)."""
    return await request.form()


FormDep = Annotated[FormData, Depends(form_data)]


def _project(session: Any, pid: int) -> Project:
    project = session.get(Project, pid)
    if project is None:
        raise PageError(404, f"There is no project {pid}.")
    return project


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- sign in and out ------------------------------------------------------------------------------


def _login_form(request: Request) -> LoginForm:
    return LoginForm(request.app.state.settings.secret_key)


def _render_login(
    request: Request, *, next_url: str, error: str | None = None, username: str = "", status_code: int = 200
) -> Response:
    nonce = LoginForm.new_nonce()
    resp = render(
        request,
        "login.html",
        {"next": next_url, "error": error, "username": username, "login_token": _login_form(request).field_for(nonce)},
        status_code=status_code,
    )
    settings = request.app.state.settings
    resp.set_cookie(
        LOGIN_NONCE_COOKIE,
        nonce,
        max_age=3600,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/login",
    )
    return resp


@router.get("/")
def home() -> RedirectResponse:
    return _see_other("/projects")


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    """The sign-in form."""
    return _render_login(request, next_url=safe_next(next))


@router.post("/login")
def login_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    login_token: Annotated[str, Form(max_length=512)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/projects",
) -> Response:
    """Check the form's CSRF pair and the password (the same sign-in as the API's login); set the session cookie."""
    next_url = safe_next(next)
    if not _login_form(request).check(login_token, request.cookies.get(LOGIN_NONCE_COOKIE)):
        return _render_login(
            request,
            next_url=next_url,
            username=username,
            status_code=403,
            error="The sign-in form expired or was not sent from this site; please try again.",
        )
    if not username or not password:
        return _render_login(
            request, next_url=next_url, username=username, status_code=422, error="Enter your username and password."
        )
    try:
        _user, _row, sid = sign_in(request, session, settings, username, password)
    except session_service.SignInRefused as exc:
        resp = _render_login(
            request,
            next_url=next_url,
            username=username,
            status_code=exc.status_code,
            error=str(exc.detail).capitalize() + ".",
        )
        if exc.retry_after:
            resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    resp = _see_other(next_url)
    security.set_session_cookie(
        resp, request.app.state.signer, sid, days=settings.session_days, secure=settings.cookie_secure
    )
    resp.delete_cookie(LOGIN_NONCE_COOKIE, path="/login")
    return resp


@router.post("/logout")
def logout(request: Request, principal: ViewerPage, session: SessionDep) -> Response:
    """End the browser session: the session row is deleted and the cookie cleared."""
    cookie = request.cookies.get(security.SESSION_COOKIE)
    sid = request.app.state.signer.loads(cookie) if cookie else None
    if sid:
        session_service.delete(session=session, session_id=sid)
    resp = _see_other("/login")
    resp.delete_cookie(security.SESSION_COOKIE, path="/")
    return resp


# -- projects ---------------------------------------------------------------------------------------


def _project_rows(session: Any) -> list[dict[str, Any]]:
    rows = []
    for p in projects.list_all(session=session):
        s = projects.summary(session=session, project=p)
        last = session.execute(
            sa.select(MetricPoint.overall, MetricPoint.n_labels, MetricPoint.extra)
            .where(MetricPoint.project_id == p.id)
            .order_by(MetricPoint.id.desc())
            .limit(1)
        ).first()
        rows.append(
            {
                "project": p,
                **s,
                "n_pool": s["n_items"] - s["n_eval"],
                "last_metric": last.overall if last else None,
                "last_metric_labels": last.n_labels if last else None,
                "last_metric_why": metric_reasons.short_reason({"overall": last.overall, **(last.extra or {})})
                if last
                else None,
            }
        )
    return rows


@router.get("/projects")
def project_list(request: Request, principal: ViewerPage, session: SessionDep) -> Response:
    """Every project with its progress: labelled / pool / eval, the active model, the last metric."""
    return render(request, "projects.html", {"rows": _project_rows(session)})


# -- labelling --------------------------------------------------------------------------------------


@router.get("/projects/{pid}/label")
def label_page(
    request: Request, pid: RowId, principal: ExpertPage, session: SessionDep, settings: SettingsDep
) -> Response:
    """The keyboard-first labelling page (its script drives the REST API: queue, labels, retract)."""
    project = _project(session, pid)
    eff = projects.effective_settings(project, settings)
    config = {
        "project_id": project.id,
        "attributes": labelling.attribute_controls(project),
        "image": labelling.image_geometry(session, project),
        "lease_seconds": eff["lease_seconds"],
        "skip_hours": eff["skip_hours"],
        "counters_url": f"/projects/{project.id}/label/counters",
    }
    return render(
        request,
        "label.html",
        {
            "project": project,
            "config": config,
            "attributes": config["attributes"],
            "counters": labelling.counters(session=session, project=project, user=principal.user),
            "eval_every": metric_reasons.held_out_every(eff["eval_fraction"]),
        },
    )


@router.get("/projects/{pid}/label/counters")
def label_counters(pid: RowId, principal: ExpertPage, session: SessionDep) -> dict[str, int]:
    """The labelling page's counters: mine today, project labelled / items, eval labelled / eval items."""
    return labelling.counters(session=session, project=_project(session, pid), user=principal.user)


# -- insights ---------------------------------------------------------------------------------------


def _curve_empty_reason(points: list[dict[str, Any]], mv: ModelVersion | None, eff: dict[str, Any]) -> str:
    """Why the interpretability curve has no point to draw yet (shown only while it has none)."""
    if not points:
        if mv is None:
            return (
                f"No retrain has finished yet: the first starts after {eff['retrain_every']} labels "
                "(or when an admin starts one), and its evaluation adds the first point."
            )
        return "No evaluation has been stored for this project's models yet."
    return (
        metric_reasons.why_unscored(points[-1], eval_fraction=eff["eval_fraction"])
        or "No metric points with a score yet."
    )


def _insights_context(session: Any, project: Project, settings: Any) -> dict[str, Any]:
    mv = models.active(session=session, project_id=project.id)
    points = models.metric_points(session=session, project_id=project.id)
    eff = projects.effective_settings(project, settings)
    last = next((p for p in reversed(points) if mv is not None and p.get("model_id") == mv.id), None)
    rep_source = session.scalar(
        sa.select(Representation.source).where(Representation.project_id == project.id, Representation.active)
    )
    designated = insights.designated_dims(session=session, mv=mv)
    return {
        "project": project,
        "model": mv,
        "n_points": len(points),
        "has_representation": rep_source is not None,
        "can_traverse": mv is not None and rep_source in DECODING_SOURCES,
        "rep_source": rep_source,
        "table": insights.metric_table(mv, project, last, designated),
        "designated": designated,
        "has_grid": any(len(dims) >= 2 for dims in designated.values()),
        "curve_empty": _curve_empty_reason(points, mv, eff),
        # The latest measurement of the active model (a held-back retrain re-measures it), else its own.
        "unscored": metric_reasons.why_unscored(last or mv.metrics, eval_fraction=eff["eval_fraction"])
        if mv is not None
        else None,
        "versions": models.list_versions(session=session, project_id=project.id),
        "agreement": _agreement(session, project, int(eff["overlap"])),
    }


def _agreement(session: Any, project: Project, overlap: int) -> dict[str, Any] | None:
    """The experts' agreement, once two experts labelled one item (a bootstrap of 200 keeps the page quick)."""
    shared = session.scalar(sa.select(Item.id).where(Item.project_id == project.id, Item.labellers >= 2).limit(1))
    if shared is None:
        return None
    return agreement.project_agreement(session=session, project=project, overlap=overlap, n_boot=200)


@router.get("/projects/{pid}/insights")
def insights_page(
    request: Request,
    pid: RowId,
    principal: ViewerPage,
    session: SessionDep,
    settings: SettingsDep,
    since: int | None = Query(None, description="the active model id the page shows"),
) -> Response:
    """Traversals, metric curves, the z / z* scatter and the metric table of the active model.

    htmx polls with ``since``: 204 while the active model is unchanged, else the refreshed section.
    """
    project = _project(session, pid)
    if since is not None and is_htmx(request):
        mv = models.active(session=session, project_id=project.id)
        if (mv.id if mv else 0) == since:
            return Response(status_code=204)
    ctx = _insights_context(session, project, settings)
    if is_htmx(request):
        return render(request, "partials/insights_body.html", ctx)
    return render(request, "insights.html", ctx)


@api_router.get("/projects/{pid}/scatter")
def get_scatter(
    user: ViewerUser,
    project: ProjectDep,
    session: SessionDep,
    attribute: str | None = Query(None, description="the attribute that colours the points"),
    limit: int = Query(insights.MAX_POINTS, ge=2, le=10_000),
) -> dict[str, Any]:
    """Points for paper Figure 4: PCA (first two components) of z beside two attribute dimensions of z*."""
    return insights.scatter(session=session, project=project, attribute=attribute, limit=limit)


# -- admin: projects, import ------------------------------------------------------------------------


def _new_project_defaults() -> dict[str, Any]:
    return {
        "name": "",
        "source": "digits",
        "representation": "vae",
        "latent_dim": "10",
        "strategy": "auto",
        "retrain_every": "",
        "lease_seconds": "",
        "eval_fraction": "",
        "skip_hours": "",
        "overlap": "",
        "source_split": "train",
        "source_mode": "L",
        "attributes": [{"name": "", "kind": "categorical", "levels": "", "low": "", "high": ""}],
    }


def _admin_form_context(values: dict[str, Any], errors: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "values": values,
        "errors": errors or {},
        "strategies": STRATEGIES,
        "auto_strategy": AUTO_STRATEGY,
        "representations": REPRESENTATION_SOURCES,
        "sources": forms.DATASET_SOURCES,
    }


@router.get("/admin")
def admin_home(request: Request, principal: AdminPage, session: SessionDep) -> Response:
    """The admin console: projects to manage, shortcuts to users and a new project."""
    return render(request, "admin/index.html", {"rows": _project_rows(session)})


@router.get("/admin/projects/new")
def new_project_page(request: Request, principal: AdminPage) -> Response:
    """The project form: data source, attribute editor, representation, strategy, settings."""
    return render(request, "admin/project_new.html", _admin_form_context(_new_project_defaults()))


@router.post("/admin/projects")
def create_project(
    request: Request, principal: AdminPage, session: SessionDep, settings: SettingsDep, form: FormDep
) -> Response:
    """Create a project (the API's create: validation, import, queued pretrain) and show its import report."""
    body, errors, shown = forms.project_in(form)
    if body is None:
        return render(request, "admin/project_new.html", _admin_form_context(shown, errors), status_code=422)
    try:
        project, loaded = projects.create_with_dataset(
            session=session, settings=settings, body=body, created_by_id=principal.user.id
        )
    except ServiceError as exc:
        return render(
            request,
            "admin/project_new.html",
            _admin_form_context(shown, {"form": str(exc.detail)}),
            status_code=exc.status_code,
        )
    report = {"imported": len(loaded), "errors": loaded.errors} if loaded is not None else None
    return render(
        request,
        "admin/project.html",
        _project_admin_context(session, settings, project, report=report, created=True),
        status_code=201,
    )


def _project_admin_context(
    session: Any,
    settings: Any,
    project: Project,
    *,
    report: dict[str, Any] | None = None,
    created: bool = False,
    import_errors: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "project": project,
        "summary": projects.summary(session=session, project=project),
        "effective": projects.effective_settings(project, settings),
        "report": report,
        "created": created,
        "import_errors": import_errors or {},
        "sources": forms.DATASET_SOURCES,
        "auto_strategy": AUTO_STRATEGY,
        "skipped": queue.skipped_by_all(session=session, project=project),
        "values": {"source": "", "source_split": "train", "source_mode": "L"},
    }


@router.get("/admin/projects/{pid}")
def project_admin(
    request: Request, pid: RowId, principal: AdminPage, session: SessionDep, settings: SettingsDep
) -> Response:
    """A project's settings, attributes and the import form."""
    return render(request, "admin/project.html", _project_admin_context(session, settings, _project(session, pid)))


def _store_loaded(session: Any, project_id: int, loaded: imports.Loaded, user_id: int) -> dict[str, Any]:
    project = projects.get_or_raise(session=session, project_id=project_id)
    n = imports.store(session=session, project=project, loaded=loaded, commit=False)
    job = jobs.enqueue(session=session, project_id=project_id, kind="pretrain", created_by=user_id, commit=False)
    session.commit()
    return {"imported": n, "errors": loaded.errors, "job": jobs.job_out(job)}


def _load_spec(session: Any, spec: dict[str, Any], settings: Any) -> imports.Loaded:
    session.rollback()  # loading can take seconds: do not hold SQLite's write lock meanwhile
    return imports.load_spec(spec, settings)


@router.post("/admin/projects/{pid}/import")
async def import_items(
    request: Request, pid: RowId, principal: AdminPage, session: SessionDep, settings: SettingsDep
) -> Response:
    """Add items from an upload (zip of images, .npy/.npz) or a server-side source; report errors per file."""
    form = await request.form()
    project = await run_in_threadpool(_project, session, pid)
    user_id, project_id, representation = principal.user.id, project.id, dict(project.representation)
    upload, images = form.get("file"), form.get("images")
    report = None
    errors: dict[str, str] = {}
    try:
        if isinstance(upload, UploadFile) and upload.filename:
            images_file = images.file if isinstance(images, UploadFile) and images.filename else None
            await run_in_threadpool(session.rollback)
            kind = await run_in_threadpool(imports.sniff_upload, upload.file)
            loaded = await run_in_threadpool(imports.load_upload, kind, upload.file, images_file, settings)
            projects.check_dataset(representation, "embeddings" if loaded.embeddings is not None else "images")
        else:
            body, errors = forms.import_spec(form)
            loaded = None
            if body is not None:
                projects.check_dataset(representation, body.dataset.source)
                loaded = await run_in_threadpool(_load_spec, session, body.dataset.model_dump(), settings)
        if loaded is not None:
            report = await run_in_threadpool(_store_loaded, session, project_id, loaded, user_id)
    except ServiceError as exc:
        errors = {"form": str(exc.detail)}
    project = await run_in_threadpool(_project, session, pid)
    ctx = await run_in_threadpool(
        lambda: _project_admin_context(session, settings, project, report=report, import_errors=errors)
    )
    ctx["values"] = {
        **ctx["values"],
        **{k: str(v) for k, v in form.items() if isinstance(v, str) and k.startswith("source")},
    }
    return render(request, "admin/project.html", ctx, status_code=422 if errors else 200)


# -- admin: jobs and model versions -----------------------------------------------------------------


def _jobs_context(session: Any, project: Project) -> dict[str, Any]:
    rows = jobs.list_for_project(session=session, project_id=project.id, limit=50)
    versions = models.list_versions(session=session, project_id=project.id)
    active = next((v for v in versions if v.active), None)
    return {
        "project": project,
        "jobs": [jobs.job_out(j) for j in rows],
        "versions": versions,
        "lens_of": {v.id: models.lens_summary(v.stats) for v in versions},
        "unscored_of": {v.id: metric_reasons.short_reason(v.metrics) for v in versions},
        "active_version": active,
        "startable": JOB_KINDS_STARTABLE,
    }


@router.get("/admin/projects/{pid}/jobs")
def jobs_page(request: Request, pid: RowId, principal: AdminPage, session: SessionDep) -> Response:
    """Jobs with live progress (SSE) and cancel; model versions with metrics, activate and roll back."""
    ctx = _jobs_context(session, _project(session, pid))
    if is_htmx(request):
        return render(request, "partials/jobs_table.html", ctx)
    return render(request, "admin/jobs.html", ctx)


@router.post("/admin/projects/{pid}/jobs")
def start_job(
    request: Request, pid: RowId, principal: AdminPage, session: SessionDep, kind: Annotated[str, Form()] = "retrain"
) -> Response:
    """Queue a job (or find the queued one of that kind)."""
    project = _project(session, pid)
    if kind not in JOB_KINDS_STARTABLE:
        raise PageError(422, f"kind: one of {', '.join(JOB_KINDS_STARTABLE)}")
    jobs.enqueue(session=session, project_id=project.id, kind=kind, created_by=principal.user.id)
    if is_htmx(request):
        return render(request, "partials/jobs_table.html", _jobs_context(session, project))
    return _see_other(f"/admin/projects/{project.id}/jobs")


def _job(session: Any, jid: int) -> Job:
    job = session.get(Job, jid)
    if job is None:
        raise PageError(404, f"There is no job {jid}.")
    return job


@router.get("/admin/jobs/{jid}/row")
def job_row(
    request: Request,
    jid: RowId,
    principal: AdminPage,
    session: SessionDep,
    mode: str = Query("live", pattern="^(live|poll)$"),
) -> Response:
    """One job's table row: live (SSE) or polling while queued/running, static once finished."""
    return render(request, "partials/job_row.html", {"job": jobs.job_out(_job(session, jid)), "mode": mode})


@router.post("/admin/jobs/{jid}/cancel")
def cancel_job(request: Request, jid: RowId, principal: AdminPage, session: SessionDep) -> Response:
    """Cancel a queued job, or ask a running one to stop."""
    job = _job(session, jid)
    message = None
    try:
        job = jobs.cancel(session=session, job=job)
    except ServiceError as exc:
        message = str(exc.detail)
    if is_htmx(request):
        return render(request, "partials/job_row.html", {"job": jobs.job_out(job), "mode": "poll", "message": message})
    return _see_other(f"/admin/projects/{job.project_id}/jobs")


@router.get("/admin/projects/{pid}/models")
def models_partial(request: Request, pid: RowId, principal: AdminPage, session: SessionDep) -> Response:
    """The model versions table (htmx refreshes it when a job finishes)."""
    return render(request, "partials/models_table.html", _jobs_context(session, _project(session, pid)))


@router.post("/admin/models/{mid}/activate")
def activate_model(request: Request, mid: RowId, principal: AdminPage, session: SessionDep) -> Response:
    """Make a model version active (a newer one, or an older one to roll back)."""
    mv = session.get(ModelVersion, mid)
    if mv is None:
        raise PageError(404, f"There is no model version {mid}.")
    models.activate(session=session, model=mv)
    project = _project(session, mv.project_id)
    if is_htmx(request):
        return render(request, "partials/models_table.html", _jobs_context(session, project))
    return _see_other(f"/admin/projects/{project.id}/jobs")


# -- admin: disagreements between experts ----------------------------------------------------------


@router.get("/admin/projects/{pid}/disagreements")
def disagreements_page(
    request: Request, pid: RowId, principal: AdminPage, session: SessionDep, message: str | None = None
) -> Response:
    """Items on which experts disagree, most split first, each with a form that resolves it."""
    project = _project(session, pid)
    found = agreement.disagreements(session=session, project=project, attribute=None, limit=100)
    levels = {a.name: a.levels for a in project.attributes}
    return render(
        request,
        "admin/disagreements.html",
        {"project": project, "found": found, "levels": levels, "message": message},
    )


@router.post("/admin/items/{iid}/resolve")
def resolve_page(request: Request, iid: RowId, principal: AdminPage, session: SessionDep, form: FormDep) -> Response:
    """Write the admin's resolution (an adjudicated label); the experts' labels stay in the history."""
    item = session.get(Item, iid)
    if item is None:
        raise PageError(404, f"There is no item {iid}.")
    project = _project(session, item.project_id)
    values = {a.name: form.get(a.name) for a in project.attributes if form.get(a.name)}
    try:
        agreement.resolve(session=session, project=project, item=item, user=principal.user, values=values)
        message = f"Item {iid} resolved."
    except ServiceError as exc:
        session.rollback()
        message = f"Item {iid} not resolved: {exc.detail}"
    return _see_other(f"/admin/projects/{project.id}/disagreements?message={quote(message)}")


# -- admin: users and API tokens --------------------------------------------------------------------


def _users_context(session: Any, **extra: Any) -> dict[str, Any]:
    users = user_service.list_all(session=session)
    return {
        "users": users,
        "roles": ROLES,
        "tokens": {u.id: token_service.list_for_user(session=session, user=u) for u in users},
        "new_token": None,
        "errors": {},
        "values": {"role": "expert"},
        **extra,
    }


@router.get("/admin/users")
def users_page(request: Request, principal: AdminPage, session: SessionDep) -> Response:
    """Users with their roles; API tokens per user (create, shown once; revoke)."""
    return render(request, "admin/users.html", _users_context(session))


@router.post("/admin/users")
def create_user(
    request: Request,
    principal: AdminPage,
    session: SessionDep,
    username: Annotated[str, Form(max_length=64)] = "",
    role: Annotated[str, Form()] = "expert",
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Add a user (argon2-hashed password)."""
    try:
        user_service.create(session=session, username=username.strip(), password=password, role=role)
    except ServiceError as exc:
        session.rollback()
        return render(
            request,
            "admin/users.html",
            _users_context(session, errors={"user": str(exc.detail)}, values={"username": username, "role": role}),
            status_code=exc.status_code,
        )
    return _see_other("/admin/users")


@router.get("/admin/tokens")
def tokens_page(principal: AdminPage) -> Response:
    """Tokens are listed on the users page (reloading the page a new token was shown on lands here)."""
    return _see_other("/admin/users")


@router.post("/admin/tokens")
def create_token(
    request: Request,
    principal: AdminPage,
    session: SessionDep,
    user_id: Annotated[int, Form()],
    name: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """A new API token for a user (e.g. a REST client's account); its secret is shown on this page only."""
    owner = session.get(User, user_id)
    if owner is None:
        raise PageError(404, f"There is no user {user_id}.")
    try:
        row, plaintext = token_service.create(session=session, user=owner, name=name)
    except ServiceError as exc:
        return render(
            request,
            "admin/users.html",
            _users_context(session, errors={"token": str(exc.detail)}),
            status_code=exc.status_code,
        )
    return render(
        request,
        "admin/users.html",
        _users_context(session, new_token={"plaintext": plaintext, "name": row.name, "owner": owner.username}),
        status_code=201,
    )


@router.post("/admin/tokens/{tid}/revoke")
def revoke_token(request: Request, tid: int, principal: AdminPage, session: SessionDep) -> Response:
    """Revoke an API token."""
    try:
        token_service.revoke(session=session, token_id=tid, actor=principal.user)
    except ServiceError as exc:
        return render(
            request,
            "admin/users.html",
            _users_context(session, errors={"token": str(exc.detail)}),
            status_code=exc.status_code,
        )
    return _see_other("/admin/users")


# -- wiring -----------------------------------------------------------------------------------------


async def _login_required(request: Request, exc: LoginRequired) -> Response:
    if is_htmx(request):
        return Response(status_code=401, headers={"HX-Redirect": exc.next_url})
    return _see_other(exc.next_url)


async def _page_error(request: Request, exc: PageError) -> Response:
    accept = request.headers.get("accept", "")
    if request.url.path.startswith("/api/") or ("application/json" in accept and "text/html" not in accept):
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)
    template = "partials/error.html" if is_htmx(request) else "error.html"
    return render(request, template, {"status": exc.status_code, "message": exc.message}, status_code=exc.status_code)


def install(app: FastAPI) -> None:
    """Mount the static files, add the page routers and their error handlers."""
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.include_router(router)
    app.include_router(api_router)
    app.add_exception_handler(LoginRequired, _login_required)  # type: ignore[arg-type]
    app.add_exception_handler(PageError, _page_error)  # type: ignore[arg-type]
