"""Credentials: argon2 password hashes, hashed API tokens, signed session cookies, CSRF tokens, login throttling."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeSerializer
from starlette.responses import Response

SESSION_COOKIE = "lenslab_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
TOKEN_PREFIX = "ll_"

_hasher = PasswordHasher()
# A fixed hash to verify against when the user does not exist, so timing does not reveal usernames.
_DUMMY_HASH = _hasher.hash("lenslab-no-such-user")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` for the users table."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (constant work when the hash is missing)."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def new_api_token() -> str:
    """A fresh high-entropy bearer token (shown to its owner once)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """SHA-256 of a token or session id: enough for 256-bit random secrets, and indexable."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_session_id() -> str:
    """A random session id for a browser login."""
    return secrets.token_urlsafe(32)


def new_csrf_token() -> str:
    """A random CSRF token bound to one session."""
    return secrets.token_urlsafe(24)


def tokens_equal(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two secrets (False if either is missing)."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


class CookieSigner:
    """Signs session ids for the cookie so a tampered cookie is refused before any database lookup."""

    def __init__(self, secret_key: str) -> None:
        self._s = URLSafeSerializer(secret_key, salt="lenslab-session")

    def dumps(self, session_id: str) -> str:
        return self._s.dumps(session_id)

    def loads(self, value: str) -> str | None:
        try:
            out = self._s.loads(value)
        except BadSignature:
            return None
        return out if isinstance(out, str) else None


def set_session_cookie(response: Response, signer: CookieSigner, session_id: str, *, days: float, secure: bool) -> None:
    """The session cookie, the same for the API login and the sign-in page: signed, HttpOnly, SameSite=Lax."""
    response.set_cookie(
        SESSION_COOKIE,
        signer.dumps(session_id),
        max_age=int(days * 86400),
        httponly=True,
        samesite="lax",
        secure=secure,
        path="/",
    )


class LoginThrottle:
    """A sliding window of failed logins per (username, client address), kept in process memory.

    Per process on purpose: it slows online guessing; several web processes each allow the limit.
    """

    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _prune(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._failures[key]
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def retry_after(self, username: str, client: str) -> float | None:
        """Seconds until another attempt is allowed, or None if allowed now."""
        now = time.monotonic()
        with self._lock:
            q = self._prune((username.lower(), client), now)
            if len(q) >= self.max_failures:
                return max(1.0, q[0] + self.window - now)
            return None

    def failed(self, username: str, client: str) -> None:
        with self._lock:
            self._failures[(username.lower(), client)].append(time.monotonic())

    def succeeded(self, username: str, client: str) -> None:
        with self._lock:
            self._failures.pop((username.lower(), client), None)
