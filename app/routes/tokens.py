"""API tokens of the caller: create (shown once), list, revoke."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from app.api.deps import CurrentUser, RowId, SessionDep
from app.db.models import ApiToken
from app.services import tokens as token_service

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)


def token_out(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "prefix": t.prefix,
        "user_id": t.user_id,
        "created_at": t.created_at,
        "last_used_at": t.last_used_at,
        "revoked_at": t.revoked_at,
    }


@router.post("", status_code=status.HTTP_201_CREATED)
def create_token(user: CurrentUser, body: TokenIn, session: SessionDep) -> dict[str, Any]:
    """A new token for the caller; ``token`` appears in this response only."""
    row, plaintext = token_service.create(session=session, user=user, name=body.name)
    return {**token_out(row), "token": plaintext}


@router.get("")
def list_tokens(user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    """The caller's tokens (never their secrets)."""
    return {"tokens": [token_out(t) for t in token_service.list_for_user(session=session, user=user)]}


@router.delete("/{token_id}")
def revoke_token(user: CurrentUser, token_id: RowId, session: SessionDep) -> dict[str, Any]:
    """Revoke a token (its owner or an admin)."""
    return token_out(token_service.revoke(session=session, token_id=token_id, actor=user))
