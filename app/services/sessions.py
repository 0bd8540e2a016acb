"""Browser sessions: a random id in a signed cookie, its SHA-256 and a CSRF token in the database."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import security
from app.db.base import utcnow
from app.db.models import User, WebSession


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
