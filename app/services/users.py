"""Accounts: create, look up and authenticate users (roles viewer < expert < admin)."""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import security
from app.db.models import ROLES, User
from app.services.errors import Conflict, Invalid, NotFound

ROLE_RANK = {r: i for i, r in enumerate(ROLES)}
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD_LENGTH = 8


def has_role(user: User, role: str) -> bool:
    """Whether ``user``'s role is at least ``role`` (an admin can do what an expert can)."""
    return ROLE_RANK[user.role] >= ROLE_RANK[role]


def get(*, session: Session, user_id: int) -> User | None:
    """The user with this id, or None."""
    return session.get(User, user_id)


def get_by_username(*, session: Session, username: str) -> User | None:
    """The user with this username, or None."""
    return session.scalar(sa.select(User).where(User.username == username))


def get_or_raise(*, session: Session, username: str) -> User:
    """The user with this username; NotFound otherwise."""
    user = get_by_username(session=session, username=username)
    if user is None:
        raise NotFound(f"no user named {username!r}")
    return user


def list_all(*, session: Session) -> list[User]:
    """Every user, by name."""
    return list(session.scalars(sa.select(User).order_by(User.username)))


def create(*, session: Session, username: str, password: str, role: str) -> User:
    """A new active user with an argon2-hashed password; committed."""
    if not USERNAME_RE.match(username or ""):
        raise Invalid(f"username {username!r}: use 1-64 letters, digits or _.@-")
    if role not in ROLES:
        raise Invalid(f"role {role!r}: must be one of {list(ROLES)}")
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise Invalid(f"password: at least {MIN_PASSWORD_LENGTH} characters")
    if get_by_username(session=session, username=username) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, password_hash=security.hash_password(password), role=role, active=True)
    session.add(user)
    session.commit()
    return user


def set_password(*, session: Session, user: User, password: str) -> User:
    """Replace the user's password; committed."""
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise Invalid(f"password: at least {MIN_PASSWORD_LENGTH} characters")
    user.password_hash = security.hash_password(password)
    session.commit()
    return user


def authenticate(*, session: Session, username: str, password: str) -> User | None:
    """The active user whose password matches, or None (same work whether or not the user exists)."""
    user = get_by_username(session=session, username=username)
    ok = security.verify_password(user.password_hash if user else None, password)
    return user if ok and user is not None and user.active else None
