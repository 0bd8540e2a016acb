"""``lenslab bench load``: simulated experts pull, label, skip and undo for a fixed time while retrains run.

A real uvicorn subprocess (one process, loopback only) serves a fresh SQLite file or the PostgreSQL
database given by ``database_url``; a ``lenslab worker`` subprocess runs the pretrain and the retrains
that the labels trigger. Each expert is a thread with its own keep-alive connection and token, looping:
pull one item; label it (80 %), skip it (10 %) or label it and undo the label (10 %); think. A request
answered 503, or lost on the wire, is retried with the same idempotency key, as a real client would.

Afterwards the database is reconciled against what the clients saw acknowledged: every acknowledged
label stored exactly once with its values, every acknowledged undo stored once, no item ever under two
live leases, at most one active model. Reports throughput, p50/p99 per endpoint, errors; writes JSON.

With ``overlap`` > 1 the project hands each item to that many different experts; the run ends once
every item counts as labelled (skips and undos stop first), expert 0 gives the wrong level for 30% of
its labels, and the
reconciliation adds: items whose live labels come from other than exactly ``overlap`` experts, items
handed twice to one expert, and the served agreement (Krippendorff's α) against the package's α of the
stored labels.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.bench.api import _percentile
from ml.bench.common import machine

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT_DIR = ROOT / "benchmarks" / "results"
LEVELS = ["a", "b", "c"]
# A small lens so that several retrains fit into a minute on a laptop-class CPU; quality is not measured here.
LOAD_LENS = {"epochs": 5, "n_flows": 4, "hidden": 32}
OPS = ("queue_next", "label_submit", "lease_release", "label_retract")
RETRIES = 4


@dataclass
class ExpertLog:
    """What one simulated expert saw: latencies, acknowledgements and errors."""

    lat: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    acked: dict[int, dict[str, Any]] = field(default_factory=dict)  # label id → {item_id, values, key}
    retracted: dict[int, int] = field(default_factory=dict)  # retraction id → retracted label id
    handed: list[str] = field(default_factory=list)  # lease ids received
    items: list[int] = field(default_factory=list)  # item ids of the new (not resumed) leases received
    # lease id → [item id, wall time the grant was received, expiry, wall time its end was requested]:
    # the span in which the lease was certainly live, as this client saw it.
    held: dict[str, list[Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    slow: list[tuple[float, str, float, int]] = field(default_factory=list)  # (wall time, op, ms, status) > 2 s
    retried_503: int = 0
    empty_queue: int = 0


def clustered_embeddings(
    n: int, seed: int = 0, dim: int = 8, n_clusters: int = len(LEVELS)
) -> tuple[np.ndarray, np.ndarray]:
    """n points in Gaussian clusters (centres N(0, 3²), spread 1), and each point's cluster (the
    simulated experts' ground truth)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_clusters, n)
    centres = rng.normal(0, 3, (n_clusters, dim))
    return (centres[truth] + rng.normal(0, 1, (n, dim))).astype(np.float32), truth


def _arrange(
    database_url: str, data_dir: Path, experts: int, n_items: int, retrain_every: int, tag: str, overlap: int = 1
) -> tuple[int, list[str], dict[int, str]]:
    """Migrate, create the project, its items and one token per expert; item id → true level."""
    import sqlalchemy as sa

    from app.config import Settings
    from app.db.migrate import upgrade
    from app.db.models import Item
    from app.db.session import Database
    from app.services import imports, projects, tokens, users

    settings = Settings(_env_file=None, database_url=database_url, data_dir=data_dir)
    upgrade(database_url)
    db = Database(settings)
    Z, truth = clustered_embeddings(n_items)
    try:
        with db.session() as s:
            admin = users.create(session=s, username=f"load-admin-{tag}", password="load password", role="admin")
            p = projects.create(
                session=s,
                name=f"load-{tag}",
                attributes=[{"name": "cluster", "kind": "categorical", "levels": LEVELS}],
                representation={"source": "embeddings"},
                strategy="bald",
                created_by_id=admin.id,
                settings={
                    "retrain_every": retrain_every,
                    "eval_fraction": 0.1,
                    "lease_seconds": 120,
                    "lens": LOAD_LENS,
                    "overlap": overlap,
                },
                loaded=imports.with_embeddings(Z, None, name="load"),
            )
            toks = []
            for k in range(experts):
                u = users.create(session=s, username=f"load-{tag}-{k}", password="load password", role="expert")
                toks.append(tokens.create(session=s, user=u, name="load")[1])
            rows = s.execute(sa.select(Item.id, Item.source_index).where(Item.project_id == p.id)).all()
            return p.id, toks, {int(i): LEVELS[int(truth[int(si)])] for i, si in rows}
    finally:
        db.dispose()


def _expert(
    k: int,
    base: str,
    token: str,
    pid: int,
    truth: dict[int, str],
    start: threading.Barrier,
    deadline_box: list[float],
    think_ms: float,
    log: ExpertLog,
    overlap: int = 1,
    draining: threading.Event | None = None,
) -> None:
    """One simulated expert's loop until the deadline; once ``draining`` is set it only labels (no skip,
    no undo), so the pool can be finished."""
    rng = random.Random(k)
    seq = itertools.count()

    def call(op: str, method: str, url: str, **kw: Any) -> httpx.Response | None:
        # Retries reuse the same body (and so the same idempotency key): exactly-once on the server.
        for attempt in range(RETRIES):
            t0 = time.perf_counter()
            try:
                r = c.request(method, url, **kw)
            except httpx.HTTPError as exc:
                log.errors.append(f"{op}: {type(exc).__name__}: {exc}")
                time.sleep(0.2 * (attempt + 1))
                continue
            ms = (time.perf_counter() - t0) * 1000
            log.lat[op].append(ms)
            if ms > 2000:
                log.slow.append((time.time(), op, round(ms), r.status_code))
            if r.status_code == 503:
                log.retried_503 += 1
                time.sleep(float(r.headers.get("retry-after", "1")))
                continue
            return r
        return None

    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        start.wait()
        while time.monotonic() < deadline_box[0]:
            r = call("queue_next", "POST", f"/api/v1/projects/{pid}/queue/next", params={"n": 1})
            if r is None or r.status_code != 200:
                if r is not None:
                    log.errors.append(f"queue_next {r.status_code}: {r.text[:200]}")
                continue
            items = r.json()["items"]
            if not items:
                log.empty_queue += 1
                time.sleep(0.5)
                continue
            it = items[0]
            log.handed.append(it["lease_id"])
            if not it.get("resumed"):
                log.items.append(it["item_id"])
            expires = _utc_timestamp(it["expires_at"])
            log.held[it["lease_id"]] = [it["item_id"], time.time(), expires, None]
            time.sleep(rng.uniform(0.5, 1.5) * think_ms / 1000)
            action = rng.random() if draining is None or not draining.is_set() else 1.0
            log.held[it["lease_id"]][3] = time.time()  # release or label: the lease ends after this
            if action < 0.1:
                r = call("lease_release", "POST", f"/api/v1/leases/{it['lease_id']}/release")
                if r is None or r.status_code != 200:
                    log.errors.append(
                        f"lease_release {getattr(r, 'status_code', None)}: {getattr(r, 'text', '')[:200]}"
                    )
                continue
            level = truth[it["item_id"]]
            if overlap > 1 and k == 0 and rng.random() < 0.3:  # the noisy expert
                level = LEVELS[(LEVELS.index(level) + 1) % len(LEVELS)]
            values = {"cluster": level}
            key = f"load-{k}-{next(seq)}"
            r = call(
                "label_submit",
                "POST",
                f"/api/v1/items/{it['item_id']}/labels",
                json={"values": values, "lease_id": it["lease_id"], "idempotency_key": key},
            )
            if r is None or r.status_code not in (200, 201):
                log.errors.append(f"label_submit {getattr(r, 'status_code', None)}: {getattr(r, 'text', '')[:200]}")
                continue
            label_id = int(r.json()["id"])
            log.acked[label_id] = {"item_id": it["item_id"], "values": values, "key": key}
            if action < 0.2:
                r = call("label_retract", "POST", f"/api/v1/labels/{label_id}/retract")
                if r is not None and r.status_code == 201:
                    log.retracted[int(r.json()["id"])] = label_id
                else:
                    log.errors.append(
                        f"label_retract {getattr(r, 'status_code', None)}: {getattr(r, 'text', '')[:200]}"
                    )


def _until_done(
    base: str, token: str, pid: int, n_items: int, deadline_box: list[float], draining: threading.Event
) -> None:
    """With overlap: once every item counts as labelled, stop skips and undos (drain), and end the run
    when it still does two seconds later (an undo in flight may have reopened an item meanwhile)."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        done_since = None
        while time.monotonic() < deadline_box[0]:
            r = c.get(f"/api/v1/projects/{pid}")
            done = r.status_code == 200 and r.json()["n_labelled"] == n_items
            if done:
                draining.set()
                done_since = done_since or time.monotonic()
                if time.monotonic() - done_since >= 2.0:
                    deadline_box[0] = time.monotonic()
                    return
            else:
                done_since = None
            time.sleep(0.5)


def reconcile(database_url: str, pid: int, logs: list[ExpertLog], overlap: int = 1) -> dict[str, Any]:
    """Compare the database with what the clients saw acknowledged; each count should be 0."""
    import sqlalchemy as sa

    from app.db.models import Job, Label, Lease, ModelVersion

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            labels = {
                row.id: row
                for row in conn.execute(
                    sa.select(
                        Label.id,
                        Label.item_id,
                        Label.values,
                        Label.kind,
                        Label.retracts_id,
                        Label.user_id,
                        Label.idempotency_key,
                    ).where(Label.project_id == pid)
                )
            }
            leases = conn.execute(
                sa.select(Lease.id, Lease.item_id, Lease.created_at, Lease.expires_at, Lease.ended_at).where(
                    Lease.project_id == pid
                )
            ).all()
            jobs = conn.execute(
                sa.select(Job.kind, Job.status, sa.func.count())
                .where(Job.project_id == pid)
                .group_by(Job.kind, Job.status)
            ).all()
            timeline = [
                f"job {i} {k} {st}: {a} → {b}"
                for i, k, st, a, b in conn.execute(
                    sa.select(Job.id, Job.kind, Job.status, Job.started_at, Job.finished_at)
                    .where(Job.project_id == pid)
                    .order_by(Job.id)
                )
            ]
            failed = [
                f"job {i} ({k}): {m}"
                for i, k, m in conn.execute(
                    sa.select(Job.id, Job.kind, Job.message).where(Job.project_id == pid, Job.status == "failed")
                )
            ]
            versions = conn.execute(
                sa.select(ModelVersion.id, ModelVersion.active).where(ModelVersion.project_id == pid)
            ).all()
    finally:
        engine.dispose()
    acked = {lid: a for log in logs for lid, a in log.acked.items()}
    retracted = {rid: lid for log in logs for rid, lid in log.retracted.items()}
    missing = [lid for lid in acked if lid not in labels]
    wrong = [
        lid
        for lid, a in acked.items()
        if lid in labels and (labels[lid].item_id != a["item_id"] or labels[lid].values != a["values"])
    ]
    keys = defaultdict(int)
    for row in labels.values():
        if row.idempotency_key is not None:
            keys[(row.user_id, row.idempotency_key)] += 1
    duplicated = sum(1 for n in keys.values() if n > 1)
    acked_keys = {a["key"] for a in acked.values()}
    stored_keys = {k for _, k in keys}
    missing_retractions = [rid for rid, lid in retracted.items() if rid not in labels or labels[rid].retracts_id != lid]
    handed = [lid for log in logs for lid in log.handed]
    out_overlap = _overlap_checks(labels, logs, overlap) if overlap > 1 else {}
    return {
        **out_overlap,
        "acknowledged_labels": len(acked),
        "acknowledged_undos": len(retracted),
        "stored_label_rows": sum(1 for r in labels.values() if r.kind == "label"),
        "stored_retraction_rows": sum(1 for r in labels.values() if r.kind != "label"),
        "acknowledged_missing": len(missing),
        "acknowledged_with_wrong_values": len(wrong),
        "idempotency_keys_stored_twice": duplicated,
        "acknowledged_keys_not_stored": len(acked_keys - stored_keys),
        "undos_missing": len(missing_retractions),
        "leases_handed_out": len(handed),
        "lease_rows": len(leases),
        "duplicate_lease_ids_handed": len(handed) - len(set(handed)),
        "items_under_two_live_leases": client_seen_overlaps(logs),
        "jobs": {f"{kind}:{status}": int(n) for kind, status, n in jobs},
        "failed_jobs": failed,
        "job_timeline": timeline,
        "model_versions": len(versions),
        "active_model_versions": sum(1 for v in versions if v.active),
    }


def _overlap_checks(labels: dict[int, Any], logs: list[ExpertLog], overlap: int) -> dict[str, Any]:
    """Per item the distinct experts of its live labels; items handed twice to one expert; α of the labels."""
    import krippendorff

    undone = {r.retracts_id for r in labels.values() if r.kind != "label"}
    live = sorted((r for r in labels.values() if r.kind == "label" and r.id not in undone), key=lambda r: r.id)
    by_item: dict[int, set[int]] = defaultdict(set)
    for r in live:
        by_item[r.item_id].add(r.user_id)
    users = sorted({r.user_id for r in live})
    items = sorted(by_item)
    m = np.full((len(users), len(items)), np.nan)
    for r in live:  # each expert's latest live label per item
        m[users.index(r.user_id), items.index(r.item_id)] = LEVELS.index(r.values["cluster"])
    return {
        "overlap": overlap,
        "items_labelled": len(by_item),
        "items_not_exactly_overlap": sum(1 for v in by_item.values() if len(v) != overlap),
        "items_above_overlap": sum(1 for v in by_item.values() if len(v) > overlap),
        "double_handouts_to_one_expert": sum(len(log.items) - len(set(log.items)) for log in logs),
        "alpha_of_stored_labels": float(
            krippendorff.alpha(reliability_data=m, level_of_measurement="nominal", value_domain=[0, 1, 2])
        ),
    }


def _utc_timestamp(iso: str) -> float:
    """Seconds since the epoch of the server's ISO time (UTC when it carries no offset)."""
    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def client_seen_overlaps(logs: list[ExpertLog]) -> int:
    """Items that two clients held at once, from the clients' own logs (not the server's lease rows).

    A lease is certainly live from the moment its grant reached the client until the client asked to
    end it (or it expired): the server granted it before the first and ended it after the second. Two
    such spans of one item that overlap are a double hand-out, whatever the server recorded.
    """
    spans: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for log in logs:
        for item_id, got, expires, ended in log.held.values():
            spans[item_id].append((got, min(expires, ended) if ended is not None else expires))
    overlaps = 0
    for rows in spans.values():
        rows.sort()
        for (_, end_a), (start_b, _) in itertools.pairwise(rows):
            overlaps += end_a > start_b
    return overlaps


def _wait_for_idle_worker(database_url: str, timeout: float = 120.0) -> None:
    """Wait (up to ``timeout`` s) until no job is running or queued, so that stopping the worker ends the
    run instead of a retrain: a retrain stopped midway is requeued and then superseded by the one queued
    behind it, which the reconciliation would count as a failed job."""
    import sqlalchemy as sa

    from app.db.models import Job
    from app.services.jobs import ACTIVE_STATUSES

    active = sa.select(sa.func.count()).select_from(Job).where(Job.status.in_(ACTIVE_STATUSES))
    engine = sa.create_engine(database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with engine.connect() as conn:
                    busy = conn.scalar(active)
            except sa.exc.SQLAlchemyError:
                return  # the run failed before the database was set up: nothing to wait for
            if not busy:
                return
            time.sleep(0.5)
    finally:
        engine.dispose()


def run_load_bench(
    *,
    experts: int = 50,
    seconds: float = 60.0,
    think_ms: float = 1000.0,
    retrain_every: int = 150,
    database_url: str | None = None,
    out: Path | None = None,
    quiet: bool = False,
    overlap: int = 1,
    n_items: int | None = None,
) -> dict[str, Any]:
    """Run the load benchmark and reconcile; returns (and writes to ``out``) the results as a dict."""
    from app.bench.server import publish, stop_process, uvicorn_server

    tag = datetime.now(UTC).strftime("%Y%m%d%H%M%S") + f"-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="lenslab-load-") as tmp:
        tmpdir = Path(tmp)
        url = database_url or f"sqlite:///{tmpdir / 'load.db'}"
        # Enough items that the queue never runs dry: at most one item per expert per think time.
        if n_items is None:
            n_items = int(experts * seconds / max(think_ms / 1000 * 0.5, 0.05) * 1.2) + 200
        pid, toks, truth = _arrange(url, tmpdir / "data", experts, n_items, retrain_every, tag, overlap)
        env = {
            "LENSLAB_DATABASE_URL": url,
            "LENSLAB_DATA_DIR": str(tmpdir / "data"),
            "LENSLAB_SECRET_KEY": "load-secret-key-0123456789abcdef",
            "LENSLAB_ENV": "development",
        }
        worker_log = open(tmpdir / "worker.log", "wb")  # noqa: SIM115  (closed below)
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--threads", "1", "--id", f"load-{tag}"],
            cwd=ROOT,
            env={**os.environ, **env, "LENSLAB_WORKER_POLL_S": "0.5", "LENSLAB_DEVICE": "cpu"},
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
        logs = [ExpertLog() for _ in range(experts)]
        draining = threading.Event()
        try:
            with uvicorn_server(env, log_path=tmpdir / "server.log") as base:
                start = threading.Barrier(experts + 1)
                deadline_box = [float("inf")]
                threads = [
                    threading.Thread(
                        target=_expert,
                        args=(k, base, toks[k], pid, truth, start, deadline_box, think_ms, logs[k], overlap, draining),
                        daemon=True,
                    )
                    for k in range(experts)
                ]
                for t in threads:
                    t.start()
                deadline_box[0] = time.monotonic() + seconds
                start.wait()
                t0 = time.perf_counter()
                if overlap > 1:
                    _until_done(base, toks[0], pid, n_items, deadline_box, draining)
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                served_alpha = None
                if overlap > 1:
                    r = httpx.get(
                        f"{base}/api/v1/projects/{pid}/agreement",
                        headers={"Authorization": f"Bearer {toks[1]}"},
                        timeout=120,
                    )
                    r.raise_for_status()
                    served_alpha = r.json()["attributes"]["cluster"]
                server_log = (tmpdir / "server.log").read_text(errors="replace")
        finally:
            _wait_for_idle_worker(url)
            stop_process(worker, timeout=30)
            worker_log.close()
        checks = reconcile(url, pid, logs, overlap)
        if served_alpha is not None:
            checks["served_agreement"] = served_alpha
        server_errors_logged = server_log.count("Traceback")
        lock_waits = server_log.count("database unavailable")
        worker_warnings = [
            line
            for line in (tmpdir / "worker.log").read_text(errors="replace").splitlines()
            if "WARNING" in line or "ERROR" in line
        ][:10]

    ops = {}
    for op in OPS:
        xs = [x for log in logs for x in log.lat[op]]
        ops[op] = {
            "n": len(xs),
            "per_s": round(len(xs) / wall, 1),
            "p50_ms": round(_percentile(xs, 50), 1),
            "p99_ms": round(_percentile(xs, 99), 1),
            "max_ms": round(max(xs), 1) if xs else None,
        }
    errors = [e for log in logs for e in log.errors]
    bad = {
        k: v
        for k, v in checks.items()
        if k
        in (
            "acknowledged_missing",
            "acknowledged_with_wrong_values",
            "idempotency_keys_stored_twice",
            "acknowledged_keys_not_stored",
            "undos_missing",
            "duplicate_lease_ids_handed",
            "items_under_two_live_leases",
            "items_not_exactly_overlap",
            "double_handouts_to_one_expert",
        )
        and v
    }
    if overlap > 1 and abs(checks["served_agreement"]["alpha"] - checks["alpha_of_stored_labels"]) > 1e-9:
        bad["served_alpha_differs"] = True
    result = {
        "benchmark": "load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": url.split(":", 1)[0],
        "experts": experts,
        "seconds": seconds,
        "think_ms": think_ms,
        "actions": {"label": 0.8, "skip": 0.1, "label_then_undo": 0.1},
        "retrain_every": retrain_every,
        "overlap": overlap,
        "items": n_items,
        "server": "uvicorn, 1 process, loopback; 1 `lenslab worker` process (1 thread)",
        "wall_s": round(wall, 2),
        "requests_per_s": round(sum(o["n"] for o in ops.values()) / wall, 1),
        "labels_per_s": round(checks["acknowledged_labels"] / wall, 1),
        "operations": ops,
        "errors": len(errors),
        "error_samples": errors[:5],
        "retried_503": sum(log.retried_503 for log in logs),
        "empty_queue": sum(log.empty_queue for log in logs),
        "slow_requests": sorted(
            (datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds"), op, ms, st)
            for log in logs
            for t, op, ms, st in log.slow
        )[:20],
        "server_tracebacks": server_errors_logged,
        "server_503_logged": lock_waits,
        "worker_warnings": worker_warnings,
        "reconciliation": checks,
        "reconciled": not bad and checks["active_model_versions"] <= 1,
        "machine": machine(),
    }
    publish(result, format_table(result), out, quiet=quiet)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The results as a fixed-width table."""
    c = result["reconciliation"]
    lines = [
        f"load bench: {result['experts']} experts × {result['seconds']:g} s, {result['database']}, "
        f"think {result['think_ms']:g} ms: {result['requests_per_s']} req/s, "
        f"{result['labels_per_s']} labels/s, errors {result['errors']}, 503 retried {result['retried_503']}",
        f"{'endpoint':<15}{'n':>7}{'per s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    for name, o in result["operations"].items():
        if o["n"]:
            lines.append(
                f"{name:<15}{o['n']:>7}{o['per_s']:>8}{o['p50_ms']:>9.1f}{o['p99_ms']:>9.1f}{o['max_ms']:>9.1f}"
            )
    lines.append(f"jobs: {c['jobs']}; model versions {c['model_versions']} ({c['active_model_versions']} active)")
    lines.append(
        f"reconciled: {c['acknowledged_labels']} acknowledged labels, {c['acknowledged_missing']} missing, "
        f"{c['idempotency_keys_stored_twice']} stored twice, {c['acknowledged_undos']} undos "
        f"({c['undos_missing']} missing), {c['leases_handed_out']} leases, "
        f"{c['items_under_two_live_leases']} items under two live leases: "
        f"{'OK' if result['reconciled'] else 'FAILED'}"
    )
    if result.get("overlap", 1) > 1:
        ag = c["served_agreement"]
        worst = ag["experts"][0]
        lines.append(
            f"overlap {c['overlap']}: {c['items_labelled']} items labelled, {c['items_not_exactly_overlap']} not by "
            f"exactly {c['overlap']} experts, {c['double_handouts_to_one_expert']} handed twice to one expert; "
            f"α {ag['alpha']:.3f} [{ag['low']:.3f}, {ag['high']:.3f}] (package on the stored labels: "
            f"{c['alpha_of_stored_labels']:.3f}); lowest expert {worst['username']} α {worst['alpha']:.3f}"
        )
    return "\n".join(lines)
