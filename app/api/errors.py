"""Error handlers: every failure answers ``{"detail": ...}`` with the right status, never a bare 500 for bad input."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from app.services.errors import ServiceError

log = logging.getLogger("lenslab.api")


def _describe(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Keep loc/msg/type (they name the field); drop echoed input so secrets are not reflected back.
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        out.append(
            {
                "loc": loc,
                "field": ".".join(loc[1:]) or (loc[0] if loc else ""),
                "msg": e.get("msg"),
                "type": e.get("type"),
            }
        )
    return out


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": jsonable_encoder(_describe(list(exc.errors())))}, status_code=422)


async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
    return JSONResponse({"detail": jsonable_encoder(exc.detail)}, status_code=exc.status_code)


async def database_unavailable(request: Request, exc: sa_exc.OperationalError) -> JSONResponse:
    # A locked SQLite file past busy_timeout, PostgreSQL away, or a full disk: the request may be retried.
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
    if "full" in str(exc.orig).lower():  # SQLITE_FULL / PostgreSQL's "No space left on device"
        return JSONResponse(
            {"detail": "database storage is full; nothing was written, retry once space is freed"},
            status_code=503,
            headers={"Retry-After": "30"},
        )
    return JSONResponse(
        {"detail": "database temporarily unavailable; retry shortly"}, status_code=503, headers={"Retry-After": "2"}
    )


async def integrity_error(request: Request, exc: sa_exc.IntegrityError) -> JSONResponse:
    # Services check rules first; a constraint firing here means a concurrent request won a race.
    log.info("integrity conflict on %s %s: %s", request.method, request.url.path, exc.orig)
    return JSONResponse({"detail": "conflict with a concurrent change; retry the request"}, status_code=409)


def _document_error_shapes(app: FastAPI) -> None:
    # FastAPI documents 422 as a list of field errors only, but rule checks in the services answer
    # 422 with one sentence or a list of them (ServiceError); the published schema must admit both, or it lies to
    # clients.
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        body = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
        if body is not None:
            body["properties"]["detail"] = {
                "title": "Detail",
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
                    {"type": "array", "items": {"type": "string"}},
                ],
            }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    """Register lenslab's handlers on ``app``."""
    _document_error_shapes(app)
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, service_error)  # type: ignore[arg-type]
    app.add_exception_handler(sa_exc.OperationalError, database_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(sa_exc.IntegrityError, integrity_error)  # type: ignore[arg-type]
