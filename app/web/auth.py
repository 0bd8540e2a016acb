"""Authentication of pages: the signed-in user or a redirect to the login page, role checks, login CSRF.

Pages reuse the API's principal resolution (session cookie + CSRF token on unsafe methods); what
differs is the answer to a failure: a 303 to ``/login`` (``HX-Redirect`` for htmx) instead of a
JSON 401, and an HTML page for 403/404.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, HTTPException, Request
from itsdangerous import BadSignature, URLSafeSerializer

from app.api import deps
from app.api.deps import Principal, SessionDep
from app.services.users import has_role

LOGIN_NONCE_COOKIE = "lenslab_login"


class LoginRequired(Exception):
    """No valid session: the browser goes to the login page and comes back to ``next_url``."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class PageError(Exception):
    """A page-level failure answered with an HTML error page (403 wrong role or CSRF, 404, 409...)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def safe_next(raw: str | None, default: str = "/projects") -> str:
    """A local path to return to after login; anything else (other hosts, '//x') becomes ``default``."""
    if not raw or not raw.startswith("/") or raw.startswith("//") or "\\" in raw:
        return default
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc:
        return default
    return raw


def _current_path(request: Request) -> str:
    path = request.url.path
    if request.url.query:
        path += "?" + request.url.query
    return path


def login_url(request: Request) -> str:
    """``/login?next=<this page>`` (only GET pages are worth returning to)."""
    if request.method != "GET" or request.headers.get("HX-Request") == "true":
        target = request.headers.get("HX-Current-URL")
        path = urlsplit(target).path if target else "/projects"
    else:
        path = _current_path(request)
    return "/login?next=" + quote(safe_next(path), safe="/")


def page_principal(min_role: str) -> Callable[..., Principal]:
    """A dependency: the signed-in principal with at least ``min_role``, else LoginRequired / PageError(403)."""

    def dependency(
        request: Request, session: SessionDep, form_csrf: Annotated[str | None, Depends(deps._csrf_from_form)]
    ) -> Principal:
        try:
            principal = deps.get_principal(request, session, form_csrf)
        except HTTPException as exc:
            if exc.status_code == 401:
                raise LoginRequired(login_url(request)) from None
            raise PageError(exc.status_code, str(exc.detail)) from None
        if principal.via != "session":
            # Pages are for browsers; REST clients with tokens use /api/v1.
            raise PageError(403, "pages need a browser login; API tokens work on /api/v1 only")
        if not has_role(principal.user, min_role):
            raise PageError(
                403,
                f"This page needs the {min_role} role; you are signed in as "
                f"{principal.user.username} ({principal.user.role}).",
            )
        request.state.csrf_token = principal.web_session.csrf_token if principal.web_session else None
        return principal

    dependency.__name__ = f"page_{min_role}"
    return dependency


ViewerPage = Annotated[Principal, Depends(page_principal("viewer"))]
ExpertPage = Annotated[Principal, Depends(page_principal("expert"))]
AdminPage = Annotated[Principal, Depends(page_principal("admin"))]


class LoginForm:
    """CSRF protection of the login form (double submit): a random nonce in a cookie, signed in the form.

    Login CSRF would sign a victim into the attacker's account; a cross-site form cannot read the
    cookie, so it cannot produce the matching signed field.
    """

    def __init__(self, secret_key: str) -> None:
        self._s = URLSafeSerializer(secret_key, salt="lenslab-login-form")

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_urlsafe(24)

    def field_for(self, nonce: str) -> str:
        return self._s.dumps(nonce)

    def check(self, field: str | None, cookie: str | None) -> bool:
        if not field or not cookie:
            return False
        try:
            value = self._s.loads(field)
        except BadSignature:
            return False
        return isinstance(value, str) and secrets.compare_digest(value, cookie)
