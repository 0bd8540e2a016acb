"""Claiming, running and recovering jobs: the worker loop behind ``lenslab worker`` and ``serve``'s thread.

Lifecycle of a job row::

    queued ──claim──▶ running ──▶ succeeded | failed | cancelled
      ▲                  │
      └── heartbeat older than HEARTBEAT_TIMEOUT (attempts < max) ── else failed with the reason

A claim is one transaction that flips ``queued → running``, counts the attempt and inserts a
``job_runs`` row, so every run of a job is on record. PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED``
lets any number of workers claim different jobs at once. SQLite: the claim runs under
``BEGIN IMMEDIATE`` (one writer at a time) and its conditional UPDATE's row count says who won.
Jobs of one project run one at a time, oldest first (a retrain waits for the pretrain before it).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import aliased

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Job, JobRun
from app.db.session import Database
from app.worker.progress import JobContext
from ml.control import Stopped

log = logging.getLogger("lenslab.worker")


@dataclass
class Claimed:
    """A job this worker now runs: the row's id, kind, project, params and the attempt number."""

    job_id: int
    kind: str
    project_id: int
    params: dict[str, Any]
    attempt: int


def prefer_passive_omp() -> None:
    """Make OpenMP threads sleep, not spin, while waiting; call before torch is imported.

    Measured on this 2-core machine with other processes busy: a lens fit with 2 torch threads took
    50–75 s instead of 2 s under OpenMP's default spin-waiting (threads spin on a core another process
    needs, then are descheduled mid-barrier); with OMP_WAIT_POLICY=PASSIVE it took 2.3 s. A worker
    shares its machine (with the web, a database, other workers), so passive waiting is the default.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_worker_id() -> str:
    """host:pid:random, unique per worker process (two threads of one process get different suffixes)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def claim(db: Database, worker_id: str, *, max_attempts: int) -> Claimed | None:
    """Take the oldest runnable queued job (none of its project's jobs running), or None; one transaction."""
    busy = aliased(Job)
    # Runnable: no job of the project is running, and none queued before it. Testing "queued before"
    # too keeps one project's jobs in order on PostgreSQL, where a sibling being claimed right now is
    # still "queued" to this statement (its claim is not committed) rather than "running".
    blocked = sa.exists().where(
        busy.project_id == Job.project_id,
        sa.or_(
            busy.status == "running",
            sa.and_(
                busy.status == "queued",
                sa.or_(busy.created_at < Job.created_at, sa.and_(busy.created_at == Job.created_at, busy.id < Job.id)),
            ),
        ),
    )
    q = sa.select(Job.id).where(Job.status == "queued", ~blocked).order_by(Job.created_at, Job.id).limit(1)
    with db.session() as s:
        if not db.is_sqlite:
            q = q.with_for_update(skip_locked=True, of=Job)
        job_id = s.scalar(q)
        if job_id is None:
            s.rollback()
            return None
        now = utcnow()
        res = s.execute(
            sa.update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(
                status="running",
                attempts=Job.attempts + 1,
                worker_id=worker_id,
                heartbeat_at=now,
                started_at=sa.func.coalesce(Job.started_at, now),
                stage="claimed",
                progress=0.0,
                eta_seconds=None,
                loss=None,
                max_attempts=max_attempts,
            )
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:  # SQLite never gets here (one writer); kept for any other engine
            s.rollback()
            return None
        row = s.execute(sa.select(Job.kind, Job.project_id, Job.params, Job.attempts).where(Job.id == job_id)).one()
        s.add(JobRun(job_id=job_id, attempt=row.attempts, worker_id=worker_id, started_at=now))
        s.commit()
        return Claimed(job_id, row.kind, row.project_id, dict(row.params or {}), row.attempts)


def _refresh_statistics(db: Database) -> None:
    """After a successful job (new scores, ranks or items): what the queue's queries should walk first may have changed.

    The job has already succeeded; statistics that cannot be refreshed now (the database busy) are
    refreshed after the next job, so a failure here is logged, never raised.
    """
    try:
        db.refresh_statistics()
    except Exception as exc:
        log.warning("refreshing the query planner's statistics failed: %s", exc)


def _end_run(s: Any, job_id: int, attempt: int, outcome: str, message: str | None) -> None:
    s.execute(
        sa.update(JobRun)
        .where(JobRun.job_id == job_id, JobRun.attempt == attempt)
        .values(outcome=outcome, finished_at=utcnow(), message=message)
        .execution_options(synchronize_session=False)
    )


def requeue_stale(db: Database, *, timeout_s: float) -> list[tuple[int, str]]:
    """Requeue (or fail, after max_attempts) running jobs whose heartbeat is older than ``timeout_s``.

    Returns (job id, new status) per job handled. A cancel requested of a lost job is honoured
    (cancelled); a lost job whose twin of the same kind is already queued is failed as superseded,
    since the project allows one queued job per kind and the twin will do the same work.
    """
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    with db.session(write=False) as s:
        stale = s.execute(
            sa.select(
                Job.id, Job.attempts, Job.max_attempts, Job.worker_id, Job.cancel_requested, Job.project_id, Job.kind
            ).where(Job.status == "running", sa.or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
        ).all()
    handled: list[tuple[int, str]] = []
    for job in stale:
        lost = f"worker {job.worker_id} stopped heartbeating for over {timeout_s:g} s during attempt {job.attempts}"
        if job.cancel_requested:
            status, message, outcome = "cancelled", f"cancelled ({lost})", "lost"
        elif job.attempts >= job.max_attempts:
            status, message, outcome = "failed", f"{lost}; gave up after {job.attempts} attempts", "lost"
        else:
            status, message, outcome = "queued", f"requeued: {lost}", "lost"
        with db.session() as s:
            twin = None
            if status == "queued":
                twin = s.scalar(
                    sa.select(Job.id).where(
                        Job.project_id == job.project_id, Job.kind == job.kind, Job.status == "queued"
                    )
                )
                if twin is not None:
                    status, message = "failed", f"{lost}; superseded by queued job {twin}"
            values: dict[str, Any] = {"status": status, "message": message, "heartbeat_at": None}
            if status == "queued":
                values.update(worker_id=None, stage=None, progress=0.0, eta_seconds=None)
            else:
                values.update(finished_at=utcnow())
            try:
                res = s.execute(
                    sa.update(Job)
                    .where(
                        Job.id == job.id,
                        Job.status == "running",
                        Job.attempts == job.attempts,
                        sa.or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff),
                    )
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
                if res.rowcount != 1:
                    s.rollback()  # it heartbeated (or finished) meanwhile
                    continue
                _end_run(s, job.id, job.attempts, "superseded" if twin is not None else outcome, message)
                s.commit()
            except sa_exc.IntegrityError:
                s.rollback()  # a twin was queued between the check and the update; the next sweep fails it
                continue
        log.warning("job %s: %s", job.id, message)
        handled.append((job.id, status))
    return handled


def _finish(db: Database, ctx: JobContext, status: str, message: str, *, requeue: bool = False) -> bool:
    """Write a run's end that is not success (failed / cancelled / handed back), fenced to this run."""
    with db.session() as s:
        values: dict[str, Any] = {"status": status, "message": message[:4000], "heartbeat_at": None}
        if requeue:
            values.update(
                worker_id=None, stage=None, progress=0.0, eta_seconds=None, attempts=Job.attempts - 1
            )  # a clean hand-back is not a failed attempt
        else:
            values.update(finished_at=utcnow())
        try:
            res = s.execute(
                sa.update(Job).where(ctx.fenced()).values(**values).execution_options(synchronize_session=False)
            )
        except sa_exc.IntegrityError:
            s.rollback()
            return _finish(db, ctx, "failed", f"{message}; a job of the same kind is queued and supersedes it")
        if res.rowcount != 1:
            s.rollback()
            return False
        outcome = "interrupted" if requeue else status
        _end_run(s, ctx.job_id, ctx.attempt, outcome, message[:4000])
        s.commit()
        return True


class Worker:
    """Claims and runs jobs until stopped; ``run_one`` does one sweep + claim + run (tests drive it)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        worker_id: str | None = None,
        threads: int | None = None,
        shutdown: threading.Event | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.shutdown = shutdown or threading.Event()
        self.threads = threads
        self.jobs_run = 0

    def configure_torch(self) -> None:
        """Set torch's thread count (intra-op) for this process, and keep freed tensor memory in the heap."""
        import torch

        from ml.device import retain_freed_memory

        n = self.threads or self.settings.worker_threads or os.cpu_count() or 1
        torch.set_num_threads(int(n))
        retain_freed_memory()

    def run_one(self) -> bool:
        """Requeue stale jobs, then claim and run one job; whether a job was run."""
        requeue_stale(self.db, timeout_s=self.settings.heartbeat_timeout_s)
        job = claim(self.db, self.worker_id, max_attempts=self.settings.job_max_attempts)
        if job is None:
            return False
        self.execute(job)
        self.jobs_run += 1
        return True

    def execute(self, job: Claimed) -> str:
        """Run a claimed job to its end; returns the status written (or "lost")."""
        from app.worker import tasks

        ctx = JobContext(
            self.db,
            job_id=job.job_id,
            attempt=job.attempt,
            worker_id=self.worker_id,
            project_id=job.project_id,
            kind=job.kind,
            params=job.params,
            heartbeat_interval=self.settings.heartbeat_interval_s,
            device=self.settings.device,
            shutdown=self.shutdown,
        ).start()
        log.info(
            "job %s (%s, project %s): attempt %s on %s",
            job.job_id,
            job.kind,
            job.project_id,
            job.attempt,
            self.worker_id,
        )
        try:
            tasks.run(ctx, self.settings)
            _refresh_statistics(self.db)
            return "succeeded"
        except Stopped:
            reason = ctx.stop_reason or ("shutdown" if self.shutdown.is_set() else "cancel")
            if reason == "cancel":
                _finish(self.db, ctx, "cancelled", "cancelled on request")
                return "cancelled"
            if reason == "shutdown":
                _finish(self.db, ctx, "queued", f"requeued: worker {self.worker_id} shut down", requeue=True)
                return "queued"
            log.warning("job %s: no longer this worker's (requeued or finished elsewhere); dropped", job.job_id)
            return "lost"
        except tasks.TaskError as exc:
            _finish(self.db, ctx, "failed", str(exc))
            return "failed"
        except (ValueError, FileNotFoundError) as exc:  # bad data or settings, named by ml
            _finish(self.db, ctx, "failed", f"{type(exc).__name__}: {exc}")
            return "failed"
        except Exception as exc:
            log.error("job %s failed:\n%s", job.job_id, traceback.format_exc())
            _finish(self.db, ctx, "failed", f"internal error: {type(exc).__name__}: {exc}")
            return "failed"
        finally:
            ctx.close()

    def run(self, *, once: bool = False, max_jobs: int | None = None) -> int:
        """Loop until ``shutdown`` is set (or, with ``once``, until no job is left); returns jobs run."""
        while not self.shutdown.is_set():
            try:
                ran = self.run_one()
            except sa_exc.OperationalError as exc:  # the database is away: wait and try again
                log.warning("worker %s: database unavailable (%s); retrying", self.worker_id, exc.orig)
                ran = False
            if max_jobs is not None and self.jobs_run >= max_jobs:
                break
            if not ran:
                if once:
                    break
                self.shutdown.wait(self.settings.worker_poll_s)
        return self.jobs_run


class WorkerThread:
    """A worker inside the web process (``lenslab serve`` on SQLite): one daemon thread, whose torch
    threads are ``worker_threads`` (default: every core)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.shutdown = threading.Event()
        self.worker = Worker(db, settings, shutdown=self.shutdown)
        self.thread = threading.Thread(target=self._run, name="lenslab-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except Exception:
            log.exception("in-process worker stopped")

    def start(self) -> WorkerThread:
        import torch

        # Every core by default: a pretrain on one of two cores took 31 minutes on 10,000 MNIST images.
        # The web's request handlers wait on the database and the network, not on torch; with OpenMP's
        # passive wait policy (``prefer_passive_omp``) idle torch threads do not spin against them.
        self._saved_threads = torch.get_num_threads()
        self.worker.configure_torch()
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Hand the running job (if any) back to the queue and wait for the thread to end."""
        import torch

        self.shutdown.set()
        self.thread.join(timeout)
        torch.set_num_threads(self._saved_threads)


def run_forever(
    settings: Settings,
    *,
    threads: int | None = None,
    worker_id: str | None = None,
    once: bool = False,
    max_jobs: int | None = None,
) -> int:
    """The ``lenslab worker`` process: SIGTERM/SIGINT hand the running job back and exit."""
    db = Database(settings)
    worker = Worker(db, settings, worker_id=worker_id, threads=threads)
    worker.configure_torch()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("worker %s: signal %s, stopping", worker.worker_id, signum)
        worker.shutdown.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info(
        "worker %s: polling %s every %.1f s", worker.worker_id, db.engine.url.render_as_string(), settings.worker_poll_s
    )
    t0 = time.monotonic()
    try:
        n = worker.run(once=once, max_jobs=max_jobs)
    finally:
        db.dispose()
    log.info("worker %s: %d job(s) in %.0f s", worker.worker_id, n, time.monotonic() - t0)
    return n
