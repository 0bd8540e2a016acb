"""A running job's link to its row: throttled progress writes, heartbeats, and the stop signal.

One background thread per running job does all of the job row's traffic: it writes progress (at most
once a second), refreshes the heartbeat, and polls ``cancel_requested`` (about every 0.5 s). The
training code only calls ``progress()`` (memory only) and ``should_stop()`` (an Event), so a fit's
inner loop never waits on the database. Every write is fenced by (status running, attempt, worker):
a worker whose job was requeued behind its back notices at its next beat and stops writing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import sqlalchemy as sa

from app.db.base import utcnow
from app.db.models import Job
from app.db.session import Database

log = logging.getLogger("lenslab.worker")

PROGRESS_INTERVAL_S = 1.0
CANCEL_POLL_S = 0.5
TICK_S = 0.05


class JobContext:
    """What a task sees of its job: id, attempt, params, progress reporting and the stop flag."""

    def __init__(
        self,
        db: Database,
        *,
        job_id: int,
        attempt: int,
        worker_id: str,
        project_id: int,
        kind: str,
        params: dict[str, Any],
        heartbeat_interval: float,
        device: str,
        shutdown: threading.Event | None = None,
    ) -> None:
        self.db = db
        self.job_id = job_id
        self.attempt = attempt
        self.worker_id = worker_id
        self.project_id = project_id
        self.kind = kind
        self.params = dict(params or {})
        self.device = device
        self.heartbeat_interval = heartbeat_interval
        self.shutdown = shutdown or threading.Event()
        self.stop_reason: str | None = None  # "cancel" | "lost" | "shutdown"
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"progress": 0.0, "stage": "starting", "eta_seconds": None, "loss": None}
        self._dirty = True
        self._range = (0.0, 1.0)
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._beat, name=f"job-{job_id}-beat", daemon=True)
        self.writes = 0  # progress writes made, for tests of the rate limit

    # -- what the task calls ---------------------------------------------------------------
    def fenced(self) -> sa.ColumnElement[bool]:
        """The condition every write of this run is made under: the job is still this run's."""
        return sa.and_(
            Job.id == self.job_id,
            Job.status == "running",
            Job.attempts == self.attempt,
            Job.worker_id == self.worker_id,
        )

    def stage(self, name: str, lo: float, hi: float) -> None:
        """Enter a stage that spans [lo, hi] of the job's overall progress."""
        with self._lock:
            self._range = (lo, hi)
            self._state["stage"] = name
            self._state["progress"] = max(self._state["progress"], lo)
            self._dirty = True

    def progress(self, fraction: float, info: dict[str, Any] | None = None) -> None:
        """The current stage is ``fraction`` done (``info`` may carry "loss"); written by the beat thread."""
        lo, hi = self._range
        overall = lo + (hi - lo) * min(max(float(fraction), 0.0), 1.0)
        with self._lock:
            if overall >= self._state["progress"]:
                self._state["progress"] = overall
            elapsed = time.monotonic() - self._t0
            p = self._state["progress"]
            self._state["eta_seconds"] = round(elapsed * (1 - p) / p, 1) if p > 0.02 else None
            loss = (info or {}).get("loss")
            if isinstance(loss, int | float) and loss == loss:
                self._state["loss"] = float(loss)
            self._dirty = True

    def should_stop(self) -> bool:
        """True once the job was cancelled, taken from this worker, or the worker is shutting down."""
        if self.shutdown.is_set() and self.stop_reason is None:
            self.stop_reason = "shutdown"
            self._stop.set()
        return self._stop.is_set()

    # -- the beat thread -------------------------------------------------------------------
    def start(self) -> JobContext:
        self._thread.start()
        return self

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _halt(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def _beat(self) -> None:
        last_write = last_hb = last_poll = time.monotonic()
        while not self._done.wait(TICK_S):
            now = time.monotonic()
            try:
                if self.shutdown.is_set():
                    self._halt("shutdown")
                with self._lock:
                    due = self._dirty and now - last_write >= PROGRESS_INTERVAL_S
                    state = dict(self._state) if due else None
                    if due:
                        self._dirty = False
                if state is not None or now - last_hb >= self.heartbeat_interval:
                    values: dict[str, Any] = {"heartbeat_at": utcnow()}
                    if state is not None:
                        values.update(
                            progress=round(state["progress"], 4),
                            stage=state["stage"],
                            eta_seconds=state["eta_seconds"],
                            loss=state["loss"],
                        )
                    if not self._write(values):
                        self._halt("lost")
                        return
                    last_hb = now
                    if state is not None:
                        last_write = now
                        self.writes += 1
                if now - last_poll >= CANCEL_POLL_S:
                    last_poll = now
                    with self.db.session(write=False) as s:
                        row = s.execute(
                            sa.select(Job.cancel_requested, Job.status, Job.attempts, Job.worker_id).where(
                                Job.id == self.job_id
                            )
                        ).one_or_none()
                    if (
                        row is None
                        or row.status != "running"
                        or row.attempts != self.attempt
                        or row.worker_id != self.worker_id
                    ):
                        self._halt("lost")
                        return
                    if row.cancel_requested:
                        self._halt("cancel")
            except Exception:  # a database hiccup must not kill the beat: the next tick tries again
                log.exception("job %s: heartbeat/progress write failed", self.job_id)

    def _write(self, values: dict[str, Any]) -> bool:
        with self.db.session() as s:
            res = s.execute(
                sa.update(Job).where(self.fenced()).values(**values).execution_options(synchronize_session=False)
            )
            s.commit()
            return res.rowcount == 1
