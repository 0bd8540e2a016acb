"""Faults: the web process killed mid-submit, the database away or restarted, a full disk during a checkpoint.

After each: nothing acknowledged is lost, retries with the same idempotency key land exactly once, no
half-written model is active, jobs fail with a reason or resume, and clients get 503 + Retry-After
(never a 500) while the database is away. A worker killed mid-retrain is covered by
tests/app/test_worker_processes.py::test_a_killed_worker_s_retrain_is_requeued_and_finished_by_another_without_duplicates.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.app.worker_support import embeddings_project
from tests.conftest import count

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 6


def _arrange(app: Any, settings: Any, n: int = 400) -> tuple[int, list[dict[str, str]]]:
    """A shapes project and CLIENTS experts with tokens, written straight to the database."""
    from app.services import imports, projects, tokens, users

    with app.state.db.session() as s:
        admin = users.create(session=s, username="admin", password="admin password", role="admin")
        p = projects.create(
            session=s,
            name="faults",
            attributes=[{"name": "shape", "levels": ["a", "b", "c"]}],
            representation={"source": "vae"},
            strategy="bald",
            settings={"eval_fraction": 0.0},
            created_by_id=admin.id,
            loaded=imports.load_spec({"source": "shapes", "n": n, "size": 16}, settings),
        )
        heads = []
        for k in range(CLIENTS):
            u = users.create(session=s, username=f"e{k}", password="expert password", role="expert")
            heads.append({"Authorization": f"Bearer {tokens.create(session=s, user=u, name='t')[1]}"})
        return p.id, heads


def _server_env(settings: Any) -> dict[str, str]:
    return {
        "LENSLAB_DATABASE_URL": settings.database_url,
        "LENSLAB_SECRET_KEY": settings.secret_key,
        "LENSLAB_DATA_DIR": str(settings.data_dir),
        "LENSLAB_ENV": "development",
    }


def _start_server(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """A uvicorn process on 127.0.0.1:port; returns once /healthz answers."""
    log = open(log_path, "ab")  # noqa: SIM115  (the child holds it; the tmp dir goes with the test)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text(errors="replace")[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("uvicorn did not start")


class Labeller:
    """An expert thread that pulls and labels until stopped, remembering what was acknowledged and what
    was in flight (sent, no answer) when the connection broke."""

    def __init__(self, base: str, headers: dict[str, str], pid: int, k: int) -> None:
        self.base, self.headers, self.pid, self.k = base, headers, pid, k
        self.acked: dict[int, dict[str, Any]] = {}
        self.unanswered: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=10) as c:
            while not self.stop.is_set():
                try:
                    r = c.post(f"/api/v1/projects/{self.pid}/queue/next")
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                self.statuses.append(r.status_code)
                if r.status_code != 200 or not r.json()["items"]:
                    time.sleep(0.05)
                    continue
                it = r.json()["items"][0]
                n += 1
                body = {
                    "values": {"shape": "abc"[n % 3]},
                    "lease_id": it["lease_id"],
                    "idempotency_key": f"k{self.k}-{n}",
                }
                try:
                    r = c.post(f"/api/v1/items/{it['item_id']}/labels", json=body)
                except httpx.HTTPError:
                    self.unanswered.append({"item_id": it["item_id"], "body": body})
                    continue
                self.statuses.append(r.status_code)
                if r.status_code in (200, 201):
                    self.acked[r.json()["id"]] = {"item_id": it["item_id"], "body": body}
                elif r.status_code == 503:
                    self.unanswered.append({"item_id": it["item_id"], "body": body})

    def __enter__(self) -> Labeller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def _wait_for_labels(db: Any, at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while count(db, "labels") < at_least:
        assert time.monotonic() < deadline, "the clients stored too few labels"
        time.sleep(0.05)


def _check_acknowledged(db: Any, labellers: list[Labeller]) -> int:
    """Every acknowledged label is stored once with its values; returns how many there were."""
    db.rollback()
    rows = {r.id: r for r in db.execute(sa.text("SELECT id, item_id, idempotency_key FROM labels")).all()}
    n = 0
    for lab in labellers:
        for lid, want in lab.acked.items():
            assert lid in rows and rows[lid].item_id == want["item_id"], f"acknowledged label {lid} lost"
            assert rows[lid].idempotency_key == want["body"]["idempotency_key"]
            n += 1
    dupes = db.execute(
        sa.text(
            "SELECT user_id, idempotency_key FROM labels WHERE idempotency_key IS NOT NULL "
            "GROUP BY user_id, idempotency_key HAVING count(*) > 1"
        )
    ).all()
    assert dupes == []
    return n


def test_web_process_killed_mid_submit_loses_no_acknowledged_label_and_retries_land_once(app, settings, db, tmp_path):
    from app.bench.server import free_port

    pid, heads = _arrange(app, settings)
    port = free_port()
    env = _server_env(settings)
    proc = _start_server(env, port, tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    labellers = [Labeller(base, heads[k], pid, k) for k in range(CLIENTS)]
    try:
        for lab in labellers:
            lab.__enter__()
        _wait_for_labels(db, 40)
        proc.send_signal(signal.SIGKILL)  # kill -9: no shutdown hooks, requests cut mid-flight
        proc.wait(10)
        time.sleep(0.3)
    finally:
        for lab in labellers:
            lab.__exit__()
    proc = _start_server(env, port, tmp_path / "server.log")
    try:
        acked = _check_acknowledged(db, labellers)
        # 40 were stored before the kill; each client may still have been waiting for the answer to
        # its last one (stored, not yet acknowledged), so at least 40 − CLIENTS were acknowledged.
        assert acked >= 40 - CLIENTS
        # Each request that got no answer is retried as a client would: same key, same body.
        retried = []
        with httpx.Client(base_url=base, timeout=10) as c:
            for k, lab in enumerate(labellers):
                for u in lab.unanswered:
                    r = c.post(f"/api/v1/items/{u['item_id']}/labels", json=u["body"], headers=heads[k])
                    assert r.status_code in (200, 201), r.text
                    retried.append(r.json()["id"])
                    lab.acked[r.json()["id"]] = u
        assert len(retried) == len(set(retried))
        total = _check_acknowledged(db, labellers)
        print(
            f"\nkill -9 mid-submit: {acked} acknowledged before the kill, {len(retried)} unanswered and retried, "
            f"{total} stored exactly once"
        )
        assert 500 not in [s for lab in labellers for s in lab.statuses]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg://lenslab@127.0.0.1:{port}/lenslab", "sqlite:///{missing}"],
    ids=["postgres-down", "sqlite-unopenable"],
)
def test_database_away_answers_503_with_retry_after_on_api_and_pages(url, tmp_path):
    from fastapi.testclient import TestClient

    from app import security
    from app.bench.server import free_port
    from app.config import Settings
    from app.main import create_app

    if url.startswith("postgresql"):
        pytest.importorskip("psycopg")
    missing = tmp_path / "a-directory.db"
    missing.mkdir()  # SQLite cannot open a directory as its database file
    url = url.format(port=free_port(), missing=missing)
    settings = Settings(
        _env_file=None,
        env="development",
        database_url=url,
        data_dir=tmp_path / "data",
        secret_key="test-secret-key-0123456789abcdef",
    )
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            cookie = {security.SESSION_COOKIE: app.state.signer.dumps("some-session-id")}
            bearer = {"Authorization": f"Bearer {security.new_api_token()}"}  # well-formed, so it is looked up
            for method, path, kw in [
                ("GET", "/api/v1/projects", {"headers": bearer}),
                ("POST", "/api/v1/auth/login", {"json": {"username": "a", "password": "b"}}),
                ("POST", "/api/v1/items/1/labels", {"json": {"values": {}}, "headers": bearer}),
                ("GET", "/projects", {"cookies": cookie}),
            ]:
                r = c.request(method, path, **kw)
                assert r.status_code == 503, (path, r.status_code, r.text[:300])
                assert int(r.headers["retry-after"]) >= 1
                assert "database" in r.json()["detail"]
    finally:
        app.state.db.dispose()


# --- PostgreSQL restarted under load ----------------------------------------------------------


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(cmd)] if os.getuid() == 0 else cmd


@contextmanager
def private_postgres() -> Iterator[tuple[str, Path]]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 that the test may stop and restart."""
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pytest.importorskip("psycopg")
    from app.bench.server import free_port

    d = Path(tempfile.mkdtemp(prefix="lenslab-pgfault-"))
    if os.getuid() == 0:
        shutil.chown(d, "postgres")
    port = free_port()
    data = d / "data"
    ok = (
        subprocess.run(
            _as_postgres(["initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]), capture_output=True
        ).returncode
        == 0
    )
    if not ok:
        shutil.rmtree(d, ignore_errors=True)
        pytest.skip("initdb failed (no postgres user?)")
    ctl = [
        "pg_ctl",
        "-D",
        str(data),
        "-l",
        str(d / "server.log"),
        "-w",
        "-o",
        f"'-h 127.0.0.1 -p {port} -k {d} -c fsync=off'",
    ]
    subprocess.run(_as_postgres([*ctl, "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", d
    finally:
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.postgres
def test_postgres_restarted_under_load_gives_503_not_500_and_loses_nothing(tmp_path):
    from app.bench.server import free_port
    from app.config import Settings
    from app.db.migrate import upgrade
    from app.main import create_app

    with private_postgres() as (url, pgdir):
        upgrade(url)
        settings = Settings(
            _env_file=None,
            env="development",
            database_url=url,
            data_dir=tmp_path / "data",
            secret_key="test-secret-key-0123456789abcdef",
            eval_fraction=0.0,
        )
        app = create_app(settings)
        pid, heads = _arrange(app, settings)
        port = free_port()
        proc = _start_server(_server_env(settings), port, tmp_path / "server.log")
        labellers = [Labeller(f"http://127.0.0.1:{port}", heads[k], pid, k) for k in range(CLIENTS)]
        try:
            with app.state.db.session(write=False) as db:
                for lab in labellers:
                    lab.__enter__()
                _wait_for_labels(db, 30)
                db.close()
                app.state.db.dispose()
                # -m immediate: a crash stop, connections cut, then the server comes back on the same port.
                ctl = ["pg_ctl", "-D", str(pgdir / "data"), "-l", str(pgdir / "server.log"), "-w"]
                subprocess.run(_as_postgres([*ctl, "-m", "immediate", "stop"]), check=True, capture_output=True)
                time.sleep(2.0)  # load continues against a database that is away
                during = sum(len(lab.statuses) for lab in labellers)
                subprocess.run(
                    _as_postgres([*ctl, "-o", f"'-h 127.0.0.1 -p {sa.make_url(url).port} -k {pgdir}'", "start"]),
                    check=True,
                    capture_output=True,
                )
                time.sleep(3.0)  # and after it is back
                for lab in labellers:
                    lab.__exit__()
                statuses = [s for lab in labellers for s in lab.statuses]
                assert 503 in statuses, "no request met the database away"
                assert 500 not in statuses and set(statuses) <= {200, 201, 503}, sorted(set(statuses))
                assert sum(len(lab.statuses) for lab in labellers) > during, "no request succeeded after the restart"
                assert statuses[-1] in (200, 201)
                total = _check_acknowledged(db, labellers)
                print(
                    f"\npostgres restart: {len(statuses)} responses, {statuses.count(503)} × 503, "
                    f"{statuses.count(500)} × 500, {total} acknowledged labels all stored"
                )
        finally:
            for lab in labellers:
                lab.stop.set()
            proc.terminate()
            proc.wait(10)
            app.state.db.dispose()
        log = (tmp_path / "server.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]


# --- a full disk during a checkpoint write ----------------------------------------------------


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    """A 24 MB tmpfs mounted for the test; skipped where mounting is not permitted."""
    d = Path(tempfile.mkdtemp(prefix="lenslab-full-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        d.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def test_a_full_disk_during_a_retrain_checkpoint_fails_the_job_with_a_reason_and_keeps_the_active_model(
    small_tmpfs, sqlite_template, tmp_path
):
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app
    from app.worker.runner import Worker
    from tests.conftest import Accounts

    shutil.copy(sqlite_template, small_tmpfs / "lenslab.db")
    settings = Settings(
        _env_file=None,
        env="development",
        database_url=f"sqlite:///{small_tmpfs / 'lenslab.db'}",
        data_dir=small_tmpfs / "data",
        import_roots=[tmp_path / "imports"],
        secret_key="test-secret-key-0123456789abcdef",
        eval_fraction=0.0,
        job_max_attempts=2,
        heartbeat_timeout_s=1.0,
    )
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            accounts = Accounts(app)
            admin = accounts.add("admin", "admin")
            expert = accounts.add("expert", "expert")
            p = embeddings_project(client, admin, tmp_path / "imports", "full", n=300, n_train=100, n_eval=40)
            worker = Worker(app.state.db, settings, worker_id="disk", threads=1)
            assert worker.run(once=True) == 1  # the pretrain
            r = client.post(f"/api/v1/projects/{p['id']}/jobs", json={"kind": "retrain"}, headers=admin)
            assert r.status_code == 202, r.text
            assert worker.run(once=True) >= 1  # the retrain (and what it queues), until no job is left
            with app.state.db.session(write=False) as db:
                assert count(db, "model_versions", "active") == 1
                v1 = db.execute(sa.text("SELECT id FROM model_versions WHERE active")).scalar()
            # Fill the disk, leaving less room than a checkpoint plus its scores needs.
            filler = small_tmpfs / "filler"
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            os.truncate(filler, max(0, filler.stat().st_size - 40_000))
            r = client.post(f"/api/v1/projects/{p['id']}/jobs", json={"kind": "retrain"}, headers=admin)
            assert r.status_code in (202, 503), r.text
            if r.status_code == 503:  # even the job row did not fit: the refusal must say so, and be retryable
                assert "retry-after" in r.headers
                os.truncate(filler, max(0, filler.stat().st_size - 200_000))
                r = client.post(f"/api/v1/projects/{p['id']}/jobs", json={"kind": "retrain"}, headers=admin)
                assert r.status_code == 202, r.text
            jid = r.json()["id"]
            worker.run(once=True)  # the checkpoint (and even the job's own status) cannot be written
            job = client.get(f"/api/v1/jobs/{jid}", headers=admin).json()
            # Not even the failure could be recorded; the job stays "running" without heartbeats.
            assert job["status"] == "running", job
            # Writes while the disk is full are refused as retryable, never a 500.
            r = client.post(f"/api/v1/projects/{p['id']}/queue/next", headers=expert)
            assert r.status_code == 503 and "full" in r.json()["detail"] and int(r.headers["retry-after"]) > 0, r.text
            with app.state.db.session(write=False) as db:
                assert db.execute(sa.text("SELECT id FROM model_versions WHERE active")).all() == [(v1,)]
                assert count(db, "model_versions") == 1  # no half-written version row either
            # Room again: a job left "running" by the failed writes is requeued by the stale-heartbeat
            # sweep and resumes; it activates a new, complete model.
            filler.unlink()
            time.sleep(settings.heartbeat_timeout_s * 1.5)
            worker.run(once=True)
            job = client.get(f"/api/v1/jobs/{jid}", headers=admin).json()
            assert job["status"] == "succeeded", job
            assert [run["outcome"] for run in job["runs"]] == ["lost", "succeeded"], job["runs"]
            assert "stopped heartbeating" in job["runs"][0]["message"]
            with app.state.db.session(write=False) as db:
                active = db.execute(sa.text("SELECT id, checkpoint IS NOT NULL FROM model_versions WHERE active")).all()
                assert len(active) == 1 and active[0][0] != v1 and active[0][1]
                statuses = dict(db.execute(sa.text("SELECT status, count(*) FROM jobs GROUP BY status")).all())
                assert "running" not in statuses and "queued" not in statuses, statuses
            r = client.post(f"/api/v1/projects/{p['id']}/queue/next", headers=expert)
            assert r.status_code == 200, r.text
    finally:
        app.state.db.dispose()
