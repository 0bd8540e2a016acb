"""ASGI middleware: security headers on every response, the upload size limit (413), request admission."""

from __future__ import annotations

import asyncio
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
# FastAPI's interactive docs load their own inline bootstrap script; they get a looser policy.
DOCS_PATHS = ("/docs", "/redoc")


class SecurityHeadersMiddleware:
    """Adds CSP, nosniff, frame denial and a referrer policy to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_docs = scope.get("path", "").startswith(DOCS_PATHS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [
                    (k, v)
                    for k, v in SECURITY_HEADERS
                    if k not in present and not (is_docs and k == b"content-security-policy")
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTooLarge(HTTPException):
    """Raised while the body streams in, so the app answers 413 instead of buffering the excess."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, detail=f"request body exceeds the upload limit of {limit / 2**20:g} MB (LENSLAB_MAX_UPLOAD_MB)"
        )


class BodyLimitMiddleware:
    """Refuses bodies above ``limit`` bytes: by Content-Length up front, and by counting streamed bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    body = json.dumps({"detail": BodyTooLarge(self.limit).detail}).encode()
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 413,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counting_receive, send)


# Requests whose length is the client's network, not the server's work: uploads and streamed downloads,
# and the batch transform. They take slots of a lane of their own, so that a few slow transfers never
# hold every slot the labelling traffic needs.
BULK_PATHS = ("/export", "/import", ":import", "/transform")
BULK_BODY_BYTES = 1 << 20


def is_bulk(scope: Scope) -> bool:
    """Whether a request goes to the bulk lane: a bulk path, a multipart body, or a declared body over 1 MiB."""
    if scope.get("path", "").endswith(BULK_PATHS):
        return True
    for name, value in scope.get("headers", []):
        if name == b"content-type" and value.startswith(b"multipart/"):
            return True
        if name == b"content-length" and value.isdigit() and int(value) > BULK_BODY_BYTES:
            return True
    return False


class AdmissionMiddleware:
    """Admits at most ``limit`` requests into the app at a time, and ``bulk_limit`` more in the bulk lane
    (``is_bulk``; None: bulk requests share the one lane); the rest wait on the event loop, holding nothing.

    Why a bound: a request checks out a database connection (and, on SQLite, a writing request takes the
    single writer lock) in a sync dependency on one worker thread, and keeps it through the route handler
    on another. With more requests inside than connections (or than worker threads), every thread can end
    up waiting for a connection or the lock while their holders wait for a thread: a stall broken only by
    the pool or lock timeout. Measured with 50 simultaneous experts: 10 s stalls and 503s on SQLite, a
    stall of every request on PostgreSQL. Fewer requests inside than connections and threads rules it out.
    Why lower still on SQLite: see ``app.main.SQLITE_CONCURRENCY``.
    Event streams are exempt: they hold no connection while they wait.
    """

    def __init__(self, app: ASGIApp, limit: int, bulk_limit: int | None = None) -> None:
        self.app = app
        self.slots = asyncio.Semaphore(limit)
        self.bulk_slots = asyncio.Semaphore(bulk_limit) if bulk_limit else self.slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").endswith("/events"):
            await self.app(scope, receive, send)
            return
        async with self.bulk_slots if is_bulk(scope) else self.slots:
            await self.app(scope, receive, send)
