"""Helpers for the worker tests: small projects with known labels, waiting on jobs, worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DIGIT_ATTR = [{"name": "digit", "kind": "categorical", "levels": [str(i) for i in range(10)]}]
# A tiny lens: the tests check the worker's behaviour, not the lens's quality.
TINY_LENS = {"epochs": 5, "n_flows": 4, "hidden": 32}
# ... so every version goes live however it measures against raw z (tests of the gate set their own margin).
ALWAYS_ACTIVATE = -100.0


def digits_pca(n: int, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The first n digits as dim-d PCA embeddings, and their digit labels."""
    from sklearn.decomposition import PCA

    from ml.data import load_digits

    ds = load_digits()
    X = ds.images.reshape(len(ds.images), -1)[:n]
    return PCA(dim, random_state=0).fit_transform(X).astype(np.float32), ds.factors["digit"][:n]


def embeddings_project(
    client: Any,
    headers: dict[str, str],
    imports_dir: Path,
    name: str,
    *,
    n: int = 300,
    n_train: int = 100,
    n_eval: int = 40,
    lens: dict[str, Any] | None = None,
    activation_margin: float = ALWAYS_ACTIVATE,
) -> dict[str, Any]:
    """An embeddings project of n digits (PCA z) with n_train training and n_eval eval labels imported."""
    Z, y = digits_pca(n)
    imports_dir.mkdir(parents=True, exist_ok=True)
    path = imports_dir / f"{name}.npy"
    np.save(path, Z)
    body = {
        "name": name,
        "dataset": {"source": "embeddings", "path": str(path)},
        "attributes": DIGIT_ATTR,
        "representation": {"source": "embeddings"},
        "settings": {"retrain_every": 100_000, "lens": lens or TINY_LENS, "activation_margin": activation_margin},
    }
    r = client.post("/api/v1/projects", json=body, headers=headers)
    assert r.status_code == 201, r.text
    project = r.json()
    rows = [{"source_index": i, "values": {"digit": str(int(y[i]))}, "eval": False} for i in range(n_train)]
    rows += [
        {"source_index": i, "values": {"digit": str(int(y[i]))}, "eval": True} for i in range(n_train, n_train + n_eval)
    ]
    r = client.post(f"/api/v1/projects/{project['id']}/labels:import", json={"labels": rows}, headers=headers)
    assert r.status_code in (200, 201), r.text
    return project


def wait_job(
    client: Any,
    headers: dict[str, str],
    jid: int,
    statuses: tuple[str, ...] = ("succeeded",),
    timeout: float = 120.0,
    where: Any = None,
) -> dict[str, Any]:
    """Poll GET /jobs/{jid} until its status is one of ``statuses`` (and ``where(job)`` holds)."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{jid}", headers=headers).json()
        if job["status"] in statuses and (where is None or where(job)):
            return job
        if job["status"] in ("failed", "cancelled", "succeeded") and job["status"] not in statuses:
            raise AssertionError(f"job {jid} ended {job['status']}: {job.get('message')}")
        time.sleep(0.05)
    raise AssertionError(f"job {jid} did not reach {statuses} within {timeout} s: {job}")


def worker_process(
    database_url: str, log_path: Path, *, worker_id: str, heartbeat_timeout: float = 30.0
) -> subprocess.Popen[bytes]:
    """A `lenslab worker` subprocess on the database (1 torch thread, fast polling), logging to log_path."""
    env = {
        **os.environ,
        "LENSLAB_DATABASE_URL": database_url,
        "LENSLAB_WORKER_POLL_S": "0.1",
        "LENSLAB_HEARTBEAT_TIMEOUT_S": str(heartbeat_timeout),
        "LENSLAB_DEVICE": "cpu",
        "LENSLAB_DATA_DIR": str(log_path.parent),
    }
    log = open(log_path, "wb")  # noqa: SIM115  (the child writes it; closed when the test's tmp dir goes)
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--threads", "1", "--id", worker_id],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_log(path: Path, text: str, timeout: float = 60.0) -> None:
    """Wait until a worker's log contains ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path.name} never said {text!r}:\n{path.read_text(errors='replace')[-2000:]}")
