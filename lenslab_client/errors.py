"""The client's exceptions: one per kind of refusal, each carrying the server's own message."""

from __future__ import annotations

from typing import Any


class LenslabError(Exception):
    """A request the server refused (or could not answer): ``status`` and the server's ``detail``."""

    def __init__(self, status: int, detail: Any, method: str = "", path: str = "") -> None:
        self.status, self.detail, self.method, self.path = status, detail, method, path
        super().__init__(f"{method} {path}: {status} {describe(detail)}".strip())


class AuthError(LenslabError):
    """401 / 403: no valid token, or the token's user may not do this."""


class NotFound(LenslabError):
    """404: no such project, item, job or model."""


class Conflict(LenslabError):
    """409: the request does not fit the current state (e.g. no active model yet)."""


class Invalid(LenslabError):
    """400 / 413 / 415 / 422: bad input; ``detail`` names the field and value."""


class Unavailable(LenslabError):
    """429 / 503 still answered after every retry."""


def describe(detail: Any) -> str:
    """A validation error list as "field: message; …"; any other detail as it is."""
    if isinstance(detail, list):
        return "; ".join(
            f"{d.get('field') or '.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
            if isinstance(d, dict)
            else str(d)
            for d in detail
        )
    return str(detail)


def error_for(status: int, detail: Any, method: str, path: str) -> LenslabError:
    """The exception class that matches an HTTP status."""
    cls: type[LenslabError] = LenslabError
    if status in (401, 403):
        cls = AuthError
    elif status == 404:
        cls = NotFound
    elif status == 409:
        cls = Conflict
    elif status in (400, 413, 415, 422):
        cls = Invalid
    elif status in (429, 503):
        cls = Unavailable
    return cls(status, detail, method, path)
