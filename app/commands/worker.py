"""``lenslab worker``: a background worker process; run any number, on any machine that reaches the database."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run jobs (pretrain, retrain, score, evaluate) from the database's queue")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: LENSLAB_WORKER_THREADS, else every core)"
    )
    p.add_argument("--id", dest="worker_id", default=None, help="worker id shown on jobs (default host:pid:random)")
    p.add_argument("--once", action="store_true", help="run queued jobs until none is left, then exit")
    p.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from app.cli import CommandError
    from app.config import get_settings
    from app.db.migrate import current, head
    from app.worker.runner import prefer_passive_omp, run_forever

    prefer_passive_omp()

    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be ≥ 1, got {args.threads}")
    if args.max_jobs is not None and args.max_jobs < 1:
        raise CommandError(f"--max-jobs must be ≥ 1, got {args.max_jobs}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    # Workers never migrate (several starting at once would race): the web (`lenslab serve`) or
    # `lenslab db upgrade` does, once.
    at, want = current(settings.database_url), head()
    if at != want:
        raise CommandError(
            f"the database schema is at {at or 'nothing'}, not {want}: "
            "run `lenslab db upgrade` (or start `lenslab serve`) first"
        )
    run_forever(settings, threads=args.threads, worker_id=args.worker_id, once=args.once, max_jobs=args.max_jobs)
    return 0
