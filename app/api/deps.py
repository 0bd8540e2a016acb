"""FastAPI dependencies: the database session, the authenticated user and role checks, look-ups or 404."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.orm import Session, lazyload

from app import security
from app.config import Settings
from app.db.models import Item, Project, User, WebSession
from app.db.session import SAFE_METHODS, Database, get_db
from app.services import sessions as session_service
from app.services import tokens as token_service
from app.services.users import has_role

SessionDep = Annotated[Session, Depends(get_db)]


async def get_app_settings(request: Request) -> Settings:
    """The settings the running app was built with."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_database(request: Request) -> Database:
    return request.app.state.db


DatabaseDep = Annotated[Database, Depends(get_database)]


@dataclass
class Principal:
    """Who is calling, and how: ``via`` is "token" (Bearer) or "session" (browser cookie)."""

    user: User
    via: str
    web_session: WebSession | None = None


async def _csrf_from_form(request: Request) -> str | None:
    """The csrf_token field of a browser form post (HTML forms cannot set headers)."""
    if request.method in SAFE_METHODS or request.headers.get(security.CSRF_HEADER):
        return None
    if "authorization" in request.headers or security.SESSION_COOKIE not in request.cookies:
        return None
    ctype = request.headers.get("content-type", "")
    if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(security.CSRF_FORM_FIELD)
        return value if isinstance(value, str) else None
    return None


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _before_write_lock(request: Request) -> bool:
    # A write request on SQLite holds the database's one write lock from its first statement to its
    # commit. Its dependencies look things up in a short read session instead, so that the lock is
    # not held across their thread hops (each one a wait for the event loop): under 32 concurrent
    # experts the lock's queue, not the work, made the slowest hand-outs slow.
    db: Database = request.app.state.db
    return db.is_sqlite and request.method not in SAFE_METHODS


def _get(request: Request, session: Session, entity: type[Any], ident: int, **kw: Any) -> Any:
    """``session.get``; on SQLite write requests read outside the write lock and merged into ``session``."""
    if not _before_write_lock(request):
        return session.get(entity, ident, **kw)
    db: Database = request.app.state.db
    with db.session(write=False) as lookup:
        found = lookup.get(entity, ident, **kw)
    return None if found is None else session.merge(found, load=False)


def get_principal(
    request: Request, session: SessionDep, form_csrf: Annotated[str | None, Depends(_csrf_from_form)]
) -> Principal:
    """Authenticate by Bearer token or session cookie; cookie-authenticated writes need the CSRF token."""
    if not _before_write_lock(request):
        principal = _authenticate(request, session, form_csrf, touch_in=session)
    else:
        db: Database = request.app.state.db
        with db.session(write=False) as lookup:
            principal = _authenticate(request, lookup, form_csrf, touch_in=session)
        principal.user = session.merge(principal.user, load=False)
        if principal.web_session is not None:
            principal.web_session = session.merge(principal.web_session, load=False)
    request.state.user = principal.user
    return principal


def _authenticate(request: Request, session: Session, form_csrf: str | None, *, touch_in: Session) -> Principal:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, credential = auth.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise _unauthorized("Authorization header must be 'Bearer <token>'")
        token = token_service.lookup(session=session, plaintext=credential.strip())
        if token is None:
            raise _unauthorized("invalid or revoked API token")
        token_service.touch(session=touch_in, token=token)
        return Principal(user=token.user, via="token")
    cookie = request.cookies.get(security.SESSION_COOKIE)
    if not cookie:
        raise _unauthorized("not authenticated: log in or send 'Authorization: Bearer <token>'")
    sid = request.app.state.signer.loads(cookie)
    web_session = session_service.resolve(session=session, session_id=sid) if sid else None
    if web_session is None:
        raise _unauthorized("session expired or invalid: log in again")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(security.CSRF_HEADER) or form_csrf
        if not security.tokens_equal(sent, web_session.csrf_token):
            raise HTTPException(403, detail="missing or wrong CSRF token (X-CSRF-Token header or csrf_token field)")
    return Principal(user=web_session.user, via="session", web_session=web_session)


get_principal.min_role = "viewer"  # type: ignore[attr-defined]  (any authenticated user)
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _role_dependency(role: str) -> Callable[[Principal], Awaitable[User]]:
    # async: a pure check, so FastAPI runs it on the event loop instead of hopping to a worker thread.
    async def dependency(principal: PrincipalDep) -> User:
        if not has_role(principal.user, role):
            raise HTTPException(403, detail=f"this needs the {role} role; you are {principal.user.role}")
        return principal.user

    dependency.__name__ = f"require_{role}"
    dependency.min_role = role  # type: ignore[attr-defined]  (read by the authorization-matrix test)
    return dependency


require_viewer = _role_dependency("viewer")
require_expert = _role_dependency("expert")
require_admin = _role_dependency("admin")

CurrentUser = Annotated[User, Depends(require_viewer)]
ViewerUser = CurrentUser
ExpertUser = Annotated[User, Depends(require_expert)]
AdminUser = Annotated[User, Depends(require_admin)]


# Ids are SQL BIGINTs: a larger path id is a 422 naming the parameter, not a driver overflow (a 500).
MAX_ROW_ID = 2**63 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="row id")]


_ATTRIBUTES_ON_USE = (lazyload(Project.attributes),)


ProjectId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="project id")]


def project_or_404(request: Request, session: SessionDep, pid: ProjectId) -> Project:
    """The project named in the path, or 404 (its attributes load when first used: the queue never needs them)."""
    project = _get(request, session, Project, pid, options=_ATTRIBUTES_ON_USE)
    if project is None:
        raise HTTPException(404, detail=f"no project {pid}")
    return project


def project_in_hop(session: Session, pid: int) -> Project:
    """``project_or_404`` for a route that reads the project in its own thread hop: straight from its
    session, since whatever lock that takes is held for this hop only."""
    project = session.get(Project, pid, options=_ATTRIBUTES_ON_USE)
    if project is None:
        raise HTTPException(404, detail=f"no project {pid}")
    return project


def item_or_404(session: SessionDep, iid: Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="item id")]) -> Item:
    """The item named in the path, or 404."""
    item = session.get(Item, iid)
    if item is None:
        raise HTTPException(404, detail=f"no item {iid}")
    return item


ProjectDep = Annotated[Project, Depends(project_or_404)]
ItemDep = Annotated[Item, Depends(item_or_404)]


def sign_in(
    request: Request, session: Session, settings: Settings, username: str, password: str
) -> tuple[User, WebSession, str]:
    """``sessions.sign_in`` with what the request carries (the app's throttle, the client, the old cookie).

    The API login and the sign-in page both call this; SignInRefused propagates for each to answer.
    """
    old = request.cookies.get(security.SESSION_COOKIE)
    return session_service.sign_in(
        session=session,
        throttle=request.app.state.throttle,
        username=username,
        password=password,
        client=request.client.host if request.client else "?",
        days=settings.session_days,
        replaces=request.app.state.signer.loads(old) if old else None,
    )
