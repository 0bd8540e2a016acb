"""Browser sessions: a random id in a signed cookie, its SHA-256 and a CSRF token in the database."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import security
from app.db.base import utcnow
from app.db.models import User, WebSession
from app.services import users as user_service
from app.services.errors import ServiceError


class SignInRefused(ServiceError):
    """Wrong username or password (401), or too many failures from this client (429, ``retry_after`` set)."""

    def __init__(self, detail: str, status_code: int = 401, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.retry_after = retry_after


def sign_in(
    *,
    session: Session,
    throttle: security.LoginThrottle,
    username: str,
    password: str,
    client: str,
    days: float,
    replaces: str | None,
) -> tuple[User, WebSession, str]:
    """Check a password under the failed-login throttle and open a session (the one API and sign-in page use).

    Returns the user, the session row (its CSRF token) and the plaintext session id for the cookie.
    """
    wait = throttle.retry_after(username, client)
    if wait is not None:
        raise SignInRefused(f"too many failed logins; retry in {wait:.0f} s", 429, retry_after=int(wait) + 1)
    user = user_service.authenticate(session=session, username=username, password=password)
    if user is None:
        throttle.failed(username, client)
        raise SignInRefused("wrong username or password")
    throttle.succeeded(username, client)
    row, sid = create(session=session, user=user, days=days, replaces=replaces)
    return user, row, sid


def create(*, session: Session, user: User, days: float, replaces: str | None = None) -> tuple[WebSession, str]:
    """A new session for ``user`` (the old one, if any, is deleted: ids rotate at login); committed.

    Returns the row and the plaintext session id for the cookie.
    """
    if replaces:
        session.execute(sa.delete(WebSession).where(WebSession.id == security.hash_token(replaces)))
    # Expired sessions of this user are cleared here, where the user is writing anyway.
    now = utcnow()
    session.execute(sa.delete(WebSession).where(WebSession.user_id == user.id, WebSession.expires_at < now))
    sid = security.new_session_id()
    row = WebSession(
        id=security.hash_token(sid),
        user_id=user.id,
        csrf_token=security.new_csrf_token(),
        created_at=now,
        expires_at=now + timedelta(days=days),
    )
    session.add(row)
    session.commit()
    return row, sid


def resolve(*, session: Session, session_id: str) -> WebSession | None:
    """The live session with this id whose user is active, or None."""
    row = session.get(WebSession, security.hash_token(session_id))
    if row is None or row.expires_at < utcnow() or not row.user.active:
        return None
    return row


def delete(*, session: Session, session_id: str) -> None:
    """End a session (logout); committed."""
    session.execute(sa.delete(WebSession).where(WebSession.id == security.hash_token(session_id)))
    session.commit()
