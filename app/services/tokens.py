"""API tokens: created for a user, shown once, stored as SHA-256, revocable, with a last-used time."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import security
from app.db.base import utcnow
from app.db.models import ApiToken, User
from app.services.errors import Conflict, Forbidden, Invalid, NotFound
from app.services.users import has_role

# last_used_at is refreshed at most this often, so a busy client does not turn every read into a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def create(*, session: Session, user: User, name: str) -> tuple[ApiToken, str]:
    """A new token for ``user``: the row and the plaintext (returned only here); committed."""
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise Invalid("name: 1-100 characters")
    plaintext = security.new_api_token()
    token = ApiToken(user_id=user.id, name=name, token_hash=security.hash_token(plaintext), prefix=plaintext[:10])
    session.add(token)
    session.commit()
    return token, plaintext


def list_for_user(*, session: Session, user: User) -> list[ApiToken]:
    """The user's tokens, newest first (revoked ones included, marked)."""
    return list(session.scalars(sa.select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())))


def revoke(*, session: Session, token_id: int, actor: User) -> ApiToken:
    """Revoke a token; its owner or an admin may. Committed."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no token {token_id}")
    if token.user_id != actor.id and not has_role(actor, "admin"):
        raise Forbidden("only the token's owner or an admin may revoke it")
    if token.revoked_at is not None:
        raise Conflict(f"token {token_id} is already revoked")
    token.revoked_at = utcnow()
    session.commit()
    return token


# Every API request resolves its token: the statement is built once.
_BY_HASH = sa.select(ApiToken).where(ApiToken.token_hash == sa.bindparam("hash"))


def lookup(*, session: Session, plaintext: str) -> ApiToken | None:
    """The live token with this plaintext whose user is active, or None; reads only."""
    if not plaintext.startswith(security.TOKEN_PREFIX):
        return None
    token = session.scalar(_BY_HASH, {"hash": security.hash_token(plaintext)})
    if token is None or token.revoked_at is not None or not token.user.active:
        return None
    return token


def touch(*, session: Session, token: ApiToken) -> None:
    """Refresh the token's last-used time when it is older than ``LAST_USED_RESOLUTION``; committed."""
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        session.execute(sa.update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
        session.commit()
