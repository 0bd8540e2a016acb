"""Login, logout and who-am-I: browser sessions in a signed HttpOnly cookie plus a CSRF token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field

from app import security
from app.api.deps import CurrentUser, PrincipalDep, SessionDep, SettingsDep, sign_in
from app.db.models import User
from app.services import sessions as session_service

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


def user_out(user: User) -> dict[str, Any]:
    """The public fields of a user."""
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "active": user.active,
        "created_at": user.created_at,
    }


@router.post("/login")
def login(
    body: LoginIn, request: Request, response: Response, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Check a username and password; set the session cookie and return the user and CSRF token."""
    try:
        user, row, sid = sign_in(request, session, settings, body.username, body.password)
    except session_service.SignInRefused as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        raise HTTPException(exc.status_code, detail=exc.detail, headers=headers) from None
    security.set_session_cookie(
        response, request.app.state.signer, sid, days=settings.session_days, secure=settings.cookie_secure
    )
    return {"user": user_out(user), "csrf_token": row.csrf_token}


@router.post("/logout")
def logout(principal: PrincipalDep, request: Request, response: Response, session: SessionDep) -> dict[str, Any]:
    """End the browser session (Bearer tokens are revoked through /api/v1/tokens instead)."""
    cookie = request.cookies.get(security.SESSION_COOKIE)
    sid = request.app.state.signer.loads(cookie) if cookie else None
    if principal.via == "session" and sid:
        session_service.delete(session=session, session_id=sid)
    response.delete_cookie(security.SESSION_COOKIE, path="/")
    return {"ok": True}


@router.get("/me")
def me(user: CurrentUser, principal: PrincipalDep) -> dict[str, Any]:
    """The caller, and the CSRF token of a cookie session (for pages that post with fetch)."""
    ws = principal.web_session
    return {"user": user_out(user), "via": principal.via, "csrf_token": ws.csrf_token if ws else None}
