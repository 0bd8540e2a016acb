"""``lenslab bench export``: the streaming pool export (items/s, the server's added memory) and the bulk
transform (items/s), through a real uvicorn server.

The project holds ``n`` 10-d embeddings in clusters with 500 training and 200 eval labels; its lens
is fitted on a 20,000-item sample of z (the bench measures serving, not training) and the worker's
``score`` job scores the whole pool, so the export writes every field. The server's memory is read
from /proc while the export streams: its peak minus its resident size just before (after a warm-up
request that loaded the lens) is the export's added memory.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

DEFAULT_OUT = Path("benchmarks/results/export.json")
TARGET_ADDED_RSS_MB = 300.0  # for 1M items
LEVELS = [str(k) for k in range(10)]
DIM = 10
LENS_SAMPLE = 20_000


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


class _Sampler:
    """The peak of a process's resident memory, sampled every ``every`` seconds in a thread."""

    def __init__(self, pid: int, every: float = 0.01) -> None:
        self.pid, self.every, self.peak = pid, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb(self.pid))
            time.sleep(self.every)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb(self.pid))


def _arrange(db: Any, worker: Any, n: int) -> tuple[int, str, np.ndarray]:
    """The project (items, labels, active lens, scores) and a viewer token; returns (pid, token, Z)."""
    import sqlalchemy as sa

    from app.bench.load import clustered_embeddings
    from app.bench.train import _run_job
    from app.db.models import Item, ModelVersion, Representation
    from app.services import imports, jobs, labels, projects, tokens, users
    from ml.steps import fit_lens

    Z, truth = clustered_embeddings(n, dim=DIM, n_clusters=len(LEVELS))
    attrs = [{"name": "cluster", "kind": "categorical", "levels": LEVELS}]
    with db.session() as s:
        admin = users.create(session=s, username="bench", password="bench-password-123", role="admin")
        p = projects.create(
            session=s,
            name="export",
            attributes=attrs,
            representation={"source": "embeddings"},
            strategy="bald",
            settings={"retrain_every": 10**9},
            loaded=imports.with_embeddings(Z, None, name="bench"),
            created_by_id=admin.id,
        )
        pid = p.id
        pretrain = jobs.list_for_project(session=s, project_id=pid)[0].id
        rows = [{"source_index": i, "values": {"cluster": LEVELS[truth[i]]}, "eval": i >= 500} for i in range(700)]
        labels.import_bulk(session=s, project=p, attrs=projects.schema(p), rows=rows, user=admin, retrain_every=10**9)
        token = tokens.create(session=s, user=admin, name="bench")[1]
    _run_job(worker, db, pretrain)
    rng = np.random.default_rng(1)
    sample = np.concatenate([np.arange(500), rng.choice(np.arange(700, n), min(LENS_SAMPLE, n - 700), replace=False)])
    y = np.full(len(sample), -1)
    y[:500] = truth[:500]
    blob, stats = fit_lens(Z[sample], {"cluster": y}, attrs, params={"epochs": 20}, device="cpu")
    with db.session() as s:
        rep_id = s.scalar(sa.select(Representation.id).where(Representation.project_id == pid, Representation.active))
        mv = ModelVersion(
            project_id=pid, version=1, representation_id=rep_id, checkpoint=blob, active=True, stats=stats
        )
        s.add(mv)
        s.flush()
        job = jobs.enqueue(session=s, project_id=pid, kind="score", params={"model_id": mv.id}, commit=False)
        s.commit()
        jid = job.id
        assert s.scalar(sa.select(sa.func.count()).select_from(Item).where(Item.project_id == pid)) == n
    _run_job(worker, db, jid)
    return pid, token, Z


def _export(c: httpx.Client, pid: int, fmt: str, server_pid: int) -> dict[str, Any]:
    before = _rss_mb(server_pid)
    lines = size = 0
    t0 = time.perf_counter()
    with (
        _Sampler(server_pid) as sampler,
        c.stream("GET", f"/api/v1/projects/{pid}/export", params={"format": fmt}) as r,
    ):
        r.raise_for_status()
        for chunk in r.iter_bytes():
            size += len(chunk)
            lines += chunk.count(b"\n")
    seconds = time.perf_counter() - t0
    items = lines - (1 if fmt == "csv" else 0)
    return {
        "format": fmt,
        "items": items,
        "seconds": round(seconds, 2),
        "items_per_s": round(items / seconds),
        "mb": round(size / 2**20, 1),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(sampler.peak, 1),
        "added_rss_mb": round(sampler.peak - before, 1),
    }


def _transform(c: httpx.Client, pid: int, Z: np.ndarray, n: int, repeats: int) -> dict[str, Any]:
    body = {"embeddings": Z[:n].tolist()}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = c.post(f"/api/v1/projects/{pid}/transform", json=body)
        r.raise_for_status()
        times.append(time.perf_counter() - t0)
        assert r.json()["n"] == n
    best = min(times)
    return {
        "items": n,
        "seconds_best": round(best, 3),
        "seconds_median": round(statistics.median(times), 3),
        "items_per_s": round(n / best),
    }


def run_export_bench(
    *, n: int = 1_000_000, transform_n: int = 10_000, repeats: int = 3, out: Path | None = DEFAULT_OUT
) -> dict[str, Any]:
    """Arrange the project, serve it, export it as JSON Lines and CSV, transform ``transform_n`` rows."""
    from app.bench.server import publish, uvicorn_process
    from app.bench.train import _bench_worker
    from ml.bench.common import machine, table

    with _bench_worker("lenslab-bench-export-", device="cpu", eval_fraction=0.0) as (db, settings, worker):
        t0 = time.perf_counter()
        pid, token, Z = _arrange(db, worker, n)
        arrange_s = time.perf_counter() - t0
        env = {
            "LENSLAB_DATABASE_URL": settings.database_url,
            "LENSLAB_DATA_DIR": str(settings.data_dir),
            "LENSLAB_SECRET_KEY": "export-bench-secret-0123456789abcdef",
            "LENSLAB_ENV": "development",
            "LENSLAB_SERVE_WORKER": "false",
        }
        with (
            uvicorn_process(env, log_path=settings.data_dir.parent / "server.log") as (base, proc),
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=600) as c,
        ):
            transform = _transform(c, pid, Z, transform_n, repeats)  # also the warm-up: the lens is loaded
            idle = _rss_mb(proc.pid)
            exports = [_export(c, pid, fmt, proc.pid) for fmt in ("jsonl", "csv")]
    rows = [
        {
            "run": f"export {e['format']}",
            "items": e["items"],
            "seconds": e["seconds"],
            "items_per_s": e["items_per_s"],
            "MB": e["mb"],
            "added_rss_mb": e["added_rss_mb"],
            "target": f"< {TARGET_ADDED_RSS_MB:g} MB",
            "ok": e["added_rss_mb"] < TARGET_ADDED_RSS_MB,
        }
        for e in exports
    ]
    rows.append(
        {
            "run": "transform (one request)",
            "items": transform["items"],
            "seconds": transform["seconds_best"],
            "items_per_s": transform["items_per_s"],
        }
    )
    result = {
        "machine": machine(),
        "n_items": n,
        "arrange_seconds": round(arrange_s, 1),
        "server_idle_rss_mb": round(idle, 1),
        "exports": exports,
        "transform": transform,
        "target_added_rss_mb": TARGET_ADDED_RSS_MB,
        "ok": all(r["ok"] for r in rows if "ok" in r),
    }
    publish(result, table(rows, ["run", "items", "seconds", "items_per_s", "MB", "added_rss_mb", "target", "ok"]), out)
    return result
