"""Worker processes (`lenslab worker` subprocesses): crash recovery, and several workers sharing PostgreSQL."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.app.worker_support import embeddings_project, wait_job, wait_log, worker_process


def _drain(app: Any) -> None:
    """Run every queued job in this process (the projects' pretrains), so the test starts from a steady state."""
    from app.worker.runner import Worker

    Worker(app.state.db, app.state.settings.model_copy(update={"device": "cpu"}), worker_id="setup").run(once=True)


def _stop(proc: Any) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except Exception:
            proc.kill()
            proc.wait(5)


def test_a_killed_worker_s_retrain_is_requeued_and_finished_by_another_without_duplicates(
    client, admin, app, db_url, tmp_path: Path
):
    p = embeddings_project(client, admin, tmp_path / "imports", "crash")
    pid = p["id"]
    first = client.post(f"/api/v1/projects/{pid}/jobs", json={"kind": "retrain"}, headers=admin).json()["id"]
    _drain(app)
    wait_job(client, admin, first)
    jid = client.post(
        f"/api/v1/projects/{pid}/jobs",
        json={"kind": "retrain", "params": {"lens": {"warm_epochs": 300}}},
        headers=admin,
    ).json()["id"]

    a = worker_process(db_url, tmp_path / "a.log", worker_id="worker-a", heartbeat_timeout=2.0)
    b = None
    try:
        wait_job(
            client,
            admin,
            jid,
            ("running",),
            timeout=60,
            where=lambda j: j["worker_id"] == "worker-a" and j["stage"] == "fit",
        )
        os.kill(a.pid, signal.SIGKILL)
        a.wait(10)
        killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
        job = client.get(f"/api/v1/jobs/{jid}", headers=admin).json()
        assert job["status"] == "running" and job["attempts"] == 1
        models = client.get(f"/api/v1/projects/{pid}/models", headers=admin).json()["models"]
        assert [(m["version"], m["active"]) for m in models] == [(1, True)]

        b = worker_process(db_url, tmp_path / "b.log", worker_id="worker-b", heartbeat_timeout=2.0)
        # Until the second run commits, the active model stays version 1.
        seen_active = set()
        while (job := client.get(f"/api/v1/jobs/{jid}", headers=admin).json())["status"] in ("running", "queued"):
            assert time.monotonic() - killed_at < 120, job
            active = [
                m["version"]
                for m in client.get(f"/api/v1/projects/{pid}/models", headers=admin).json()["models"]
                if m["active"]
            ]
            # The run commits its version, the activation and the job's success in one transaction:
            # only a reading taken while the job was still unfinished afterwards must show version 1.
            if client.get(f"/api/v1/jobs/{jid}", headers=admin).json()["status"] in ("running", "queued"):
                seen_active.add((job["status"], job["attempts"], tuple(active)))
            time.sleep(0.1)
        assert all(active == (1,) for _, _, active in seen_active)
    finally:
        _stop(a)
        if b is not None:
            _stop(b)
    assert job["status"] == "succeeded", job
    # Requeued only once the heartbeat was 2 s old; the last beat came at most 2/6 s before the kill.
    assert job["attempts"] == 2
    b_claimed = datetime.fromisoformat(job["runs"][1]["started_at"])
    assert (b_claimed - killed_wall).total_seconds() >= 2.0 - 2.0 / 6
    assert [(r["attempt"], r["worker_id"], r["outcome"]) for r in job["runs"]] == [
        (1, "worker-a", "lost"),
        (2, "worker-b", "succeeded"),
    ]
    models = client.get(f"/api/v1/projects/{pid}/models", headers=admin).json()["models"]
    assert [(m["version"], m["active"], m["job_id"]) for m in models] == [(2, True, jid), (1, False, first)]


@pytest.mark.postgres
def test_two_worker_processes_share_five_retrains_and_each_runs_exactly_once(
    client, admin, app, db_url, tmp_path: Path
):
    if not db_url.startswith("postgresql"):
        pytest.skip("scale-out with several worker processes is a PostgreSQL deployment")
    from app.db.models import Job, JobRun

    # p0's retrain is long (4,000 epochs, many seconds): whichever worker claims it is busy while the
    # four short ones queue, so the other worker must take them. Both taking work then does not hang
    # on which process happens to poll first.
    pids = [
        embeddings_project(
            client,
            admin,
            tmp_path / "imports",
            f"p{i}",
            n=200,
            n_train=80,
            n_eval=20,
            lens={"epochs": 4000 if i == 0 else 60, "n_flows": 4, "hidden": 32},
        )["id"]
        for i in range(5)
    ]
    _drain(app)
    workers = [worker_process(db_url, tmp_path / f"w{i}.log", worker_id=f"w{i}") for i in range(2)]
    try:
        for i in range(2):
            wait_log(tmp_path / f"w{i}.log", "polling")
        with app.state.db.session() as s:  # queued together, in one transaction
            s.add_all([Job(project_id=pid, kind="retrain", status="queued", params={}) for pid in pids])
            s.commit()
            jids = list(s.scalars(sa.select(Job.id).where(Job.kind == "retrain")))
        jobs = [wait_job(client, admin, jid, timeout=120) for jid in jids]
    finally:
        for w in workers:
            _stop(w)
    with app.state.db.session(write=False) as s:
        runs = s.execute(
            sa.select(JobRun.job_id, JobRun.worker_id, JobRun.outcome).where(JobRun.job_id.in_(jids))
        ).all()
    assert sorted(r.job_id for r in runs) == sorted(jids)  # exactly one run per job
    assert all(r.outcome == "succeeded" for r in runs) and all(j["attempts"] == 1 for j in jobs)
    assert {r.worker_id for r in runs} == {"w0", "w1"}  # both processes took work
    for pid in pids:
        models = client.get(f"/api/v1/projects/{pid}/models", headers=admin).json()["models"]
        assert [(m["version"], m["active"]) for m in models] == [(1, True)]
