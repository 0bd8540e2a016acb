"""``lenslab serve``: upgrade the schema, then serve the app with uvicorn."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="upgrade the database and serve the web app and API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="web processes (PostgreSQL for more than one)")
    p.add_argument("--log-level", default="info")
    w = p.add_mutually_exclusive_group()
    w.add_argument(
        "--worker",
        dest="worker",
        action="store_true",
        default=None,
        help="run a job worker thread inside the web process (default on SQLite)",
    )
    w.add_argument(
        "--no-worker",
        dest="worker",
        action="store_false",
        help="no in-process worker: run `lenslab worker` processes instead",
    )
    p.set_defaults(func=run)


def serve(host: str, port: int, *, workers: int = 1, log_level: str = "info", worker: bool | None = None) -> None:
    """Upgrade the schema and run uvicorn on the app factory until interrupted.

    ``worker``: run a job worker thread in the web process (None: yes on SQLite, where a separate
    worker process would compete for the single write lock anyway, and no on PostgreSQL).
    """
    import os

    import uvicorn

    from app.config import get_settings
    from app.db.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    if worker is None:
        worker = settings.is_sqlite
    # The app factory reads its settings from the environment (also in uvicorn's child processes).
    os.environ["LENSLAB_SERVE_WORKER"] = "true" if worker else "false"
    get_settings.cache_clear()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        proxy_headers=False,
    )


def run(args: argparse.Namespace) -> int:
    from app.cli import CommandError
    from app.config import get_settings
    from app.worker.runner import prefer_passive_omp

    prefer_passive_omp()  # the in-process worker's torch threads share the cores with the web

    if args.workers > 1 and get_settings().is_sqlite:
        raise CommandError("--workers > 1 needs PostgreSQL (LENSLAB_DATABASE_URL); SQLite allows one writer")
    serve(args.host, args.port, workers=args.workers, log_level=args.log_level, worker=args.worker)
    return 0
