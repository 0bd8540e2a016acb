"""The FastAPI application factory."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.pool import QueuePool

from app import __doc__ as app_doc
from app import security
from app.api import errors
from app.api.middleware import AdmissionMiddleware, BodyLimitMiddleware, SecurityHeadersMiddleware
from app.config import Settings, get_settings
from app.db.session import Database
from app.routes import ROUTERS, pages

# Worker threads that run sync dependencies and routes (anyio's default thread limiter).
THREADPOOL_SIZE = 40


# SQLite's requests inside at once by default. One process runs Python one thread at a time and SQLite
# writes one at a time: a request inside competes for both with every other one, so with 13 inside
# (the pool's bound) each burst of arrivals shared the interpreter round-robin, a writer holding the
# lock waited its turn among readers, and all of the burst finished late. Measured with 32 experts
# (the bench api harness, 4 interleaved runs each, hand-out p99): 33-93 ms with 13 inside, 37-57 with
# 4, 32-46 with 2; the spread is the shared machine's, and the gap widest when it ran slow. 4 keeps
# room for a slow request (a page, a large label listing) beside the labelling traffic.
SQLITE_CONCURRENCY = 4


def admission_limits(db: Database, settings: Settings | None = None) -> tuple[int, int | None]:
    """How many requests may be inside the app at once: (interactive lane, bulk lane or None for one lane).

    Both lanes together stay below the pooled connections and worker threads, less two for the in-process
    worker (job claims, heartbeats) and event streams; the bulk lane (uploads, exports: ``is_bulk``) gets
    a quarter of that. The interactive lane is at most ``settings.request_concurrency``, by default
    ``SQLITE_CONCURRENCY`` on SQLite and the rest of the bound on PostgreSQL.
    """
    pool = db.engine.pool
    # NullPool, or one connection per thread (in-memory SQLite): the threads are the bound.
    capacity = pool.size() + max(0, pool._max_overflow) if isinstance(pool, QueuePool) else THREADPOOL_SIZE
    bound = max(1, min(capacity, THREADPOOL_SIZE) - 2)
    if bound < 2:
        return bound, None
    bulk = max(1, bound // 4)
    wanted = settings.request_concurrency if settings is not None else None
    if wanted is None and db.is_sqlite:
        wanted = SQLITE_CONCURRENCY
    interactive = bound - bulk if wanted is None else min(bound - bulk, wanted)
    return interactive, bulk


def create_app(settings: Settings | None = None) -> FastAPI:
    """A lenslab app bound to ``settings`` (default: the environment's); the schema must already exist."""
    settings = settings or get_settings()
    db = Database(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker = None
        if settings.serve_worker:
            from app.worker.runner import WorkerThread

            worker = WorkerThread(db, settings).start()
        _app.state.worker = worker
        # Everything imported and built so far lives as long as the server: set it aside from the
        # garbage collector. Otherwise each full collection walks it (~120k objects, 50 ms on a slow
        # core) with every request paused behind the GIL, which made the slowest 1% of queue hand-outs.
        gc.collect()
        gc.freeze()
        yield
        if worker is not None:
            worker.stop()
        db.dispose()

    app = FastAPI(
        title="lenslab",
        version="1",
        description=(app_doc or "").strip(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.db = db
    app.state.signer = security.CookieSigner(settings.secret_key)
    app.state.throttle = security.LoginThrottle(settings.login_max_failures, settings.login_window_seconds)
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)
    interactive, bulk = admission_limits(db, settings)
    app.add_middleware(AdmissionMiddleware, limit=interactive, bulk_limit=bulk)
    app.add_middleware(SecurityHeadersMiddleware)
    for router in ROUTERS:
        app.include_router(router)
    pages.install(app)  # browser UI: /static, pages, htmx partials

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        # Swagger UI from static/vendor (no CDN): the docs render on a machine without internet.
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="lenslab API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> RedirectResponse:
        # Browsers ask for /favicon.ico on pages that name no icon (JSON, the docs' assets): no 404s.
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @app.get("/healthz", tags=["meta"], include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
