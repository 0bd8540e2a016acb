"""Worker behaviour on each backend: cancel, progress events (SSE), stale-heartbeat recovery, rollback."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from tests.app.worker_support import embeddings_project, wait_job
from tests.conftest import count


@contextmanager
def worker_thread(app: Any, **overrides: Any) -> Iterator[Any]:
    """A Worker polling the test's database from a thread, with one torch thread as `serve`'s worker has.

    One thread also keeps timings honest on a busy 2-core machine, where OpenMP's spin-waiting threads
    (this process did not set OMP_WAIT_POLICY=PASSIVE before torch loaded) slow a fit many-fold.
    """
    import torch

    from app.worker.runner import Worker

    settings = app.state.settings.model_copy(update={"worker_poll_s": 0.05, "device": "cpu", **overrides})
    worker = Worker(app.state.db, settings, worker_id="test-worker")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.shutdown.set()
        thread.join(30)
        torch.set_num_threads(saved)


def _retrain(client: Any, headers: dict[str, str], pid: int, **params: Any) -> int:
    r = client.post(f"/api/v1/projects/{pid}/jobs", json={"kind": "retrain", "params": params}, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _ready(client: Any, admin: dict[str, str], pid: int) -> None:
    jobs = client.get(f"/api/v1/projects/{pid}/jobs", headers=admin).json()["jobs"]
    wait_job(client, admin, next(j["id"] for j in jobs if j["kind"] == "pretrain"))


def test_cancel_stops_a_running_retrain_and_keeps_the_active_model(client, admin, app, db, tmp_path):
    # The retrain asks for 100,000 epochs (hours): it ends only because the cancel stopped its loop.
    # How fast a cancel lands is a benchmark figure (`lenslab bench train`, "cancel"), not an assert here.
    p = embeddings_project(client, admin, tmp_path / "imports", "cancel")
    with worker_thread(app):
        _ready(client, admin, p["id"])
        first = wait_job(client, admin, _retrain(client, admin, p["id"]))
        n_scores = count(db, "scores")
        jid = _retrain(client, admin, p["id"], lens={"warm_epochs": 100_000})
        wait_job(client, admin, jid, ("running",), where=lambda j: j["stage"] == "fit" and j["loss"] is not None)
        r = client.post(f"/api/v1/jobs/{jid}/cancel", headers=admin)
        assert r.status_code == 200 and r.json()["cancel_requested"] is True
        job = wait_job(client, admin, jid, ("cancelled",), timeout=60)  # a hang guard, not a speed target
    assert job["message"] == "cancelled on request" and job["runs"][-1]["outcome"] == "cancelled"
    models = client.get(f"/api/v1/projects/{p['id']}/models", headers=admin).json()["models"]
    assert [(m["id"], m["active"]) for m in models] == [(first["result"]["model_id"], True)]
    assert count(db, "scores") == n_scores and count(db, "metric_points") == 1


def test_job_events_stream_each_change_then_the_terminal_status_and_close(client, admin, viewer, app, tmp_path):
    # Long enough that the fit outlasts a few of the job row's once-a-second progress writes.
    p = embeddings_project(
        client, admin, tmp_path / "imports", "events", lens={"epochs": 800, "n_flows": 4, "hidden": 32}
    )
    assert client.get("/api/v1/jobs/999999/events", headers=viewer).status_code == 404
    assert client.get("/api/v1/jobs/1/events").status_code == 401
    with worker_thread(app):
        _ready(client, admin, p["id"])
        jid = _retrain(client, admin, p["id"])
        with client.stream("GET", f"/api/v1/jobs/{jid}/events", headers=viewer) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[len("data: ") :]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["status"] == "succeeded" and events[-1]["result"]["version"] == 1
    assert all(e["status"] in ("queued", "running") for e in events[:-1])
    assert any(e["stage"] == "fit" and e["status"] == "running" for e in events)
    progress = [e["progress"] for e in events if e["status"] == "running"]
    assert progress == sorted(progress)
    assert all(a != b for a, b in itertools.pairwise(events))  # one event per change


def test_a_job_whose_heartbeat_stops_is_requeued_then_failed_after_max_attempts(app, project):
    from app.db.base import utcnow
    from app.db.models import Job
    from app.worker.runner import claim, requeue_stale

    db = app.state.db

    def go_silent(jid: int) -> None:
        with db.session() as s:
            s.execute(sa.update(Job).where(Job.id == jid).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
            s.commit()

    first = claim(db, "w-a", max_attempts=2)
    assert first is not None and first.attempt == 1 and first.kind == "pretrain"
    assert requeue_stale(db, timeout_s=30) == []  # a fresh heartbeat is left alone
    go_silent(first.job_id)
    assert requeue_stale(db, timeout_s=30) == [(first.job_id, "queued")]
    second = claim(db, "w-b", max_attempts=2)
    assert second is not None and (second.job_id, second.attempt) == (first.job_id, 2)
    go_silent(second.job_id)
    assert requeue_stale(db, timeout_s=30) == [(first.job_id, "failed")]
    with db.session(write=False) as s:
        job = s.get(Job, first.job_id)
        assert job.status == "failed" and "gave up after 2 attempts" in job.message and "w-b" in job.message
    from app.services import jobs

    with db.session(write=False) as s:
        runs = jobs.runs(session=s, job_id=first.job_id)
    assert [(r["attempt"], r["worker_id"], r["outcome"]) for r in runs] == [(1, "w-a", "lost"), (2, "w-b", "lost")]
    assert claim(db, "w-c", max_attempts=2) is None


def test_experiment_jobs_are_refused_as_not_available_yet(client, admin, project):
    r = client.post(f"/api/v1/projects/{project['id']}/jobs", json={"kind": "experiment"}, headers=admin)
    assert r.status_code == 422 and "not available yet" in r.json()["detail"]


def test_activating_an_older_version_makes_its_scores_the_queue_order(client, admin, expert, app, tmp_path):
    p = embeddings_project(client, admin, tmp_path / "imports", "rollback")
    with worker_thread(app):
        _ready(client, admin, p["id"])
        v1 = wait_job(client, admin, _retrain(client, admin, p["id"]))["result"]
        v2 = wait_job(client, admin, _retrain(client, admin, p["id"], lens={"epochs": 8}))["result"]
    assert (v1["version"], v2["version"]) == (1, 2) and v2["warm_start"] is True
    r = client.post(f"/api/v1/models/{v1['model_id']}/activate", headers=admin)
    assert r.status_code == 200 and r.json()["active"] is True
    top = client.get(f"/api/v1/projects/{p['id']}/scores?unlabelled=true&limit=4", headers=admin).json()
    assert top["model_version"] == 1
    handed = client.post(f"/api/v1/projects/{p['id']}/queue/next?n=4", headers=expert).json()["items"]
    assert [h["item_id"] for h in handed] == [t["item_id"] for t in top["items"]]
    # Re-activating a scored version queues no scoring job.
    kinds = [j["kind"] for j in client.get(f"/api/v1/projects/{p['id']}/jobs", headers=admin).json()["jobs"]]
    assert "score" not in kinds


def test_progress_is_written_at_most_once_a_second(app, project):
    from app.worker.progress import JobContext
    from app.worker.runner import claim

    db = app.state.db
    job = claim(db, "w-p", max_attempts=3)
    ctx = JobContext(
        db,
        job_id=job.job_id,
        attempt=job.attempt,
        worker_id="w-p",
        project_id=job.project_id,
        kind=job.kind,
        params={},
        heartbeat_interval=10.0,
        device="cpu",
    ).start()
    ctx.stage("fit", 0.0, 1.0)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:
        ctx.progress((time.monotonic() - t0) / 2.5, {"loss": 1.0})
        time.sleep(0.001)
    ctx.close()
    assert 2 <= ctx.writes <= 3  # ~2,000 reports in 2.5 s → one write a second
    from app.db.models import Job

    with db.session(write=False) as s:
        row = s.get(Job, job.job_id)
        assert row.stage == "fit" and 0.3 < row.progress < 1.0 and row.loss == 1.0 and row.eta_seconds > 0


def test_an_uploaded_torchscript_encoder_gives_every_item_its_z(client, admin, app, tmp_path):
    import io

    import numpy as np
    import torch

    from tests.conftest import create_project

    p = create_project(client, admin, name="ts", representation={"source": "torchscript"})
    encoder = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6)))
    buf = io.BytesIO()
    torch.jit.save(encoder, buf)
    r = client.post(
        f"/api/v1/projects/{p['id']}/representation/encoder",
        headers=admin,
        files={"file": ("enc.pt", buf.getvalue(), "application/octet-stream")},
    )
    assert r.status_code == 202, r.text
    bad = client.post(
        f"/api/v1/projects/{p['id']}/representation/encoder",
        headers=admin,
        files={"file": ("enc.pt", b"not a model", "application/octet-stream")},
    )
    assert bad.status_code == 422 and "TorchScript" in bad.json()["detail"]
    with worker_thread(app):
        job = wait_job(client, admin, r.json()["job"]["id"])
    assert job["result"]["dim"] == 6 and job["result"]["n_items"] == 1797
    iid = client.get(f"/api/v1/projects/{p['id']}/items?limit=1", headers=admin).json()["items"][0]["id"]
    z = client.get(f"/api/v1/items/{iid}/representation", headers=admin).json()["z"]
    from PIL import Image

    png = client.get(f"/api/v1/items/{iid}/image.png", headers=admin).content
    x = torch.from_numpy(np.asarray(Image.open(io.BytesIO(png)), np.float32)[None, None] / 255.0)
    assert np.allclose(z, encoder(x).detach().numpy()[0], atol=1e-5)


def test_changing_the_strategy_scores_the_pool_for_it_and_the_queue_follows(client, admin, expert, app, tmp_path):
    p = embeddings_project(client, admin, tmp_path / "imports", "restrategy")
    with worker_thread(app):
        _ready(client, admin, p["id"])
        wait_job(client, admin, _retrain(client, admin, p["id"]))
        r = client.patch(f"/api/v1/projects/{p['id']}", json={"strategy": "max_entropy"}, headers=admin)
        assert r.status_code == 200, r.text
        jobs = client.get(f"/api/v1/projects/{p['id']}/jobs", headers=admin).json()["jobs"]
        score = next(j for j in jobs if j["kind"] == "score")
        assert "strategy changed to max_entropy" in score["params"]["reason"]
        wait_job(client, admin, score["id"])
    top = client.get(f"/api/v1/projects/{p['id']}/scores?unlabelled=true&limit=4", headers=admin).json()
    assert top["strategy"] == "max_entropy" and len(top["items"]) == 4
    handed = client.post(f"/api/v1/projects/{p['id']}/queue/next?n=4", headers=expert).json()["items"]
    assert [h["item_id"] for h in handed] == [t["item_id"] for t in top["items"]]
    # Back to a strategy whose scores exist: nothing more to compute.
    client.patch(f"/api/v1/projects/{p['id']}", json={"strategy": "bald"}, headers=admin)
    kinds = [j["kind"] for j in client.get(f"/api/v1/projects/{p['id']}/jobs", headers=admin).json()["jobs"]]
    assert kinds.count("score") == 1


def test_a_version_below_the_bar_is_kept_but_not_activated_and_the_curve_shows_what_is_served(
    client, admin, app, tmp_path
):
    # The bar is raw z's metric plus the margin: a margin of 100 points no lens can clear, -100 any lens clears.
    p = embeddings_project(client, admin, tmp_path / "imports", "gate", activation_margin=100.0)
    pid = p["id"]
    with worker_thread(app):
        _ready(client, admin, pid)
        first = wait_job(client, admin, _retrain(client, admin, pid))
        res = first["result"]
        assert res["activated"] is False and "below raw z's" in res["held_back"] and "margin 100" in res["held_back"]
        assert "kept but not activated" in first["message"] and "raw z is served" in first["message"]
        assert client.get(f"/api/v1/projects/{pid}/scores", headers=admin).status_code == 409  # nothing live
        point = client.get(f"/api/v1/projects/{pid}/metrics", headers=admin).json()["points"][-1]
        # Nothing is live, so the curve shows raw z's score; the held-back candidate's is kept beside it.
        assert point["raw_z"] is True and point["model_id"] is None
        assert point["overall"] == res["baseline_overall"] and point["candidate"]["overall"] == res["overall"]
        # Its spread is raw z's too, so readers of the curve (lenslab bench al) can bound what is served.
        assert point["overall_se"] is not None and point["overall_se"] == point["baseline_overall_se"]
        assert point["attributes"]["digit"]["score"] == point["attributes"]["digit"]["z_score"]
        models = client.get(f"/api/v1/projects/{pid}/models", headers=admin).json()["models"]
        assert [m["active"] for m in models] == [False]

        r = client.patch(f"/api/v1/projects/{pid}", json={"settings": {"activation_margin": -100}}, headers=admin)
        assert r.status_code == 200, r.text
        second = wait_job(client, admin, _retrain(client, admin, pid))["result"]
        assert second["activated"] is True and second["held_back"] is None
        assert second["warm_start"]  # from the held-back version: it carries the training so far
        v2 = client.get(f"/api/v1/models/{second['model_id']}", headers=admin).json()
        assert v2["active"] is True and v2["config"]["warm_start_from"] == res["model_id"]
        point = client.get(f"/api/v1/projects/{pid}/metrics", headers=admin).json()["points"][-1]
        assert point["model_id"] == second["model_id"] and point["overall"] == second["overall"]

        # Now a live version exists: a candidate held back leaves it live and the point re-measures it.
        client.patch(f"/api/v1/projects/{pid}", json={"settings": {"activation_margin": 100}}, headers=admin)
        third = wait_job(client, admin, _retrain(client, admin, pid))
        assert third["result"]["activated"] is False and f"version {v2['version']} stays active" in third["message"]
        point = client.get(f"/api/v1/projects/{pid}/metrics", headers=admin).json()["points"][-1]
        assert point["model_id"] == second["model_id"] and point["overall"] == third["result"]["active_overall"]
        assert point["candidate"]["model_id"] == third["result"]["model_id"]
    from tests.app.test_pages_access import sign_in

    assert sign_in(client, "admin").status_code == 303
    html = client.get(f"/admin/projects/{pid}/models").text
    assert html.count('data-role="held-back"') == 2 and "held back: its score" in html


def test_before_the_first_lens_the_queue_covers_z_better_than_random(client, admin, expert, app, tmp_path):
    import numpy as np
    from sklearn.cluster import KMeans

    from tests.app.worker_support import DIGIT_ATTR, digits_pca

    Z, _ = digits_pca(600)
    (tmp_path / "imports").mkdir()
    np.save(tmp_path / "imports" / "cold.npy", Z)
    body = {
        "name": "cold",
        "dataset": {"source": "embeddings", "path": str(tmp_path / "imports" / "cold.npy")},
        "attributes": DIGIT_ATTR,
        "representation": {"source": "embeddings"},
        "settings": {"retrain_every": 25, "eval_fraction": 0.0},
    }
    r = client.post("/api/v1/projects", json=body, headers=admin)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    before = client.post(f"/api/v1/projects/{pid}/queue/next?n=1", headers=admin).json()
    assert before["order"] == "random" and "pretrain" in before["order_reason"]
    client.post(f"/api/v1/leases/{before['items'][0]['lease_id']}/release", headers=admin)
    with worker_thread(app):
        _ready(client, admin, pid)
    got = client.post(f"/api/v1/projects/{pid}/queue/next?n=50", headers=expert).json()
    assert got["order"] == "cold_start" and len(got["items"]) == 50
    rows = {
        it["id"]: it["source_index"]
        for it in client.get(f"/api/v1/projects/{pid}/items?limit=1000", headers=admin).json()["items"]
    }
    picked = [rows[it["item_id"]] for it in got["items"]]
    # Coverage measured with regions of its own (k = 50, another k-means than the queue's).
    region = KMeans(50, n_init=4, random_state=123).fit_predict(Z)
    rng = np.random.default_rng(0)
    random_cover = [len(set(region[rng.choice(600, 50, replace=False)])) for _ in range(200)]
    cold_cover = len(set(region[picked]))
    # Measured: the cold start covers 43 of the 50 regions; 50 random items 31.3 on average (38 at most in 200 draws).
    assert cold_cover >= np.mean(random_cover) + 5, (cold_cover, np.mean(random_cover))


def test_the_pretrain_orders_the_cold_start_without_holding_the_write_lock(client, admin, app, tmp_path, monkeypatch):
    """The diversity order took 2 s on 7,400 items inside the job's write transaction: on SQLite every
    expert's label waited for the lock (bench load: submit p99 1,959 ms), on PostgreSQL for the row locks
    of the project's items (50 experts stalled into time-outs). Now a writer gets in meanwhile, at once."""
    import sqlite3

    import numpy as np

    from app.worker import tasks
    from tests.app.worker_support import DIGIT_ATTR, digits_pca

    url = sa.make_url(app.state.settings.database_url)
    probes: list[str] = []
    real = tasks.steps.cold_start_order

    def take_the_lock() -> None:
        if url.get_backend_name() == "sqlite":
            con = sqlite3.connect(url.database, timeout=0)  # no waiting: a held lock fails at once
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute("ROLLBACK")
            finally:
                con.close()
        else:
            engine = sa.create_engine(url)
            try:
                with engine.connect() as conn:  # rolled back on leaving
                    conn.execute(sa.text("SELECT id FROM items FOR UPDATE NOWAIT")).all()
            finally:
                engine.dispose()

    def probing(*args: Any, **kw: Any) -> Any:
        try:
            take_the_lock()
            probes.append("free")
        except (sqlite3.OperationalError, sa.exc.OperationalError) as exc:
            probes.append(str(exc).splitlines()[0])
        return real(*args, **kw)

    monkeypatch.setattr(tasks.steps, "cold_start_order", probing)
    Z, _ = digits_pca(300)
    (tmp_path / "imports").mkdir()
    np.save(tmp_path / "imports" / "z.npy", Z)
    body = {
        "name": "cold-lock",
        "dataset": {"source": "embeddings", "path": str(tmp_path / "imports" / "z.npy")},
        "attributes": DIGIT_ATTR,
        "representation": {"source": "embeddings"},
        "settings": {"retrain_every": 25, "eval_fraction": 0.0},
    }
    r = client.post("/api/v1/projects", json=body, headers=admin)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    with worker_thread(app):
        _ready(client, admin, pid)
    assert probes == ["free"]
    got = client.post(f"/api/v1/projects/{pid}/queue/next?n=5", headers=admin).json()
    assert got["order"] == "cold_start" and len(got["items"]) == 5


def test_a_batch_strategy_ranks_one_round_that_concurrent_experts_share(client, admin, accounts, app, tmp_path):
    """strategy "cover": the retrain ranks one batch of retrain_every items (none labelled), four experts
    pulling at once get distinct items of exactly that batch, and it covers z more widely than BALD's top
    items; switching to "typiclust" re-ranks without a retrain and keeps every lease and label."""
    import numpy as np
    from sklearn.cluster import KMeans

    from app.db.models import Item, Label, Lease
    from tests.app.worker_support import ALWAYS_ACTIVATE, DIGIT_ATTR, TINY_LENS, digits_pca

    Z, y = digits_pca(600)
    (tmp_path / "imports").mkdir()
    np.save(tmp_path / "imports" / "batch.npy", Z)
    body = {
        "name": "batch",
        "dataset": {"source": "embeddings", "path": str(tmp_path / "imports" / "batch.npy")},
        "attributes": DIGIT_ATTR,
        "representation": {"source": "embeddings"},
        "strategy": "cover",
        "settings": {
            "retrain_every": 40,
            "eval_fraction": 0.0,
            "lens": TINY_LENS,
            "activation_margin": ALWAYS_ACTIVATE,
        },
    }
    r = client.post("/api/v1/projects", json=body, headers=admin)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    rows = [{"source_index": i, "values": {"digit": str(int(y[i]))}, "eval": False} for i in range(60)]
    rows += [{"source_index": i, "values": {"digit": str(int(y[i]))}, "eval": True} for i in range(60, 100)]
    assert client.post(f"/api/v1/projects/{pid}/labels:import", json={"labels": rows}, headers=admin).status_code in (
        200,
        201,
    )
    with worker_thread(app):
        _ready(client, admin, pid)
        wait_job(client, admin, _retrain(client, admin, pid), timeout=300)
    source = {
        it["id"]: it["source_index"]
        for it in client.get(f"/api/v1/projects/{pid}/items?limit=1000", headers=admin).json()["items"]
    }

    def served(strategy: str) -> dict[int, float]:
        """The active model's rows for ``strategy`` through the REST API (a batch rule's name: its batch)."""
        r = client.get(f"/api/v1/projects/{pid}/scores", params={"strategy": strategy, "limit": 1000}, headers=admin)
        assert r.status_code == 200, r.text
        return {it["item_id"]: it["score"] for it in r.json()["items"]}

    batch, bald = served("cover"), served("bald")
    with app.state.db.session() as s:
        labelled = set(s.scalars(sa.select(Item.id).where(Item.project_id == pid, Item.labelled.is_(True))))
    assert len(batch) == 40 and not (set(batch) & labelled)
    assert all(batch[i] == bald[i] for i in batch)  # the batch rows carry the items' BALD scores

    experts = [accounts.add(f"batch-expert-{i}", "expert") for i in range(4)]
    got: list[dict[str, Any]] = []
    barrier = threading.Barrier(4)

    def pull(h: dict[str, str]) -> None:
        barrier.wait()
        got.append(client.post(f"/api/v1/projects/{pid}/queue/next?n=10", headers=h).json())

    threads = [threading.Thread(target=pull, args=(h,)) for h in experts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handed = [it["item_id"] for g in got for it in g["items"]]
    assert len(handed) == len(set(handed)) == 40 and set(handed) == set(batch)
    assert all(g["order"] == "batch" and "cover" in g["order_reason"] for g in got)
    # Coverage with regions of its own (k = 40): the shared batch against the 40 best BALD items.
    region = KMeans(40, n_init=4, random_state=7).fit_predict(Z)
    free = [i for i in bald if i not in labelled]
    top = sorted(free, key=lambda i: -bald[i])[:40]
    cover_regions = len({region[source[i]] for i in batch})
    top_regions = len({region[source[i]] for i in top})
    # Measured: the cover batch reaches 28 of the 40 regions, BALD's top 40 items 18.
    assert cover_regions >= top_regions + 5, (cover_regions, top_regions)

    with app.state.db.session() as s:
        leases_before = s.scalar(sa.select(sa.func.count()).select_from(Lease).where(Lease.ended_at.is_(None)))
        labels_before = s.scalar(sa.select(sa.func.count()).select_from(Label))
    r = client.patch(f"/api/v1/projects/{pid}", json={"strategy": "typiclust"}, headers=admin)
    assert r.status_code == 200 and r.json()["strategy_in_effect"] == "typiclust"
    score_job = next(
        j for j in client.get(f"/api/v1/projects/{pid}/jobs", headers=admin).json()["jobs"] if j["kind"] == "score"
    )
    with worker_thread(app):
        done = wait_job(client, admin, score_job["id"], timeout=120)
    assert "typiclust batch" in done["message"]
    with app.state.db.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Lease).where(Lease.ended_at.is_(None))) == leases_before
        assert s.scalar(sa.select(sa.func.count()).select_from(Label)) == labels_before
    assert served("cover") == {} and len(served("typiclust")) == 40


def test_a_contrastive_base_is_pretrained_by_the_worker_and_decodes_traversals(client, admin, app, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from app.db.models import ModelVersion, Representation
    from ml.lens import InterpretableLens
    from ml.steps import load_base_model
    from tests.conftest import DIGITS_ATTRIBUTES, create_project

    rep = {"source": "contrastive", "latent_dim": 6, "steps": 20, "batch_size": 32, "decoder_steps": 5}
    for bad, message in (
        ({"source": "simclr"}, "representation.source"),
        ({**rep, "temperature": -1}, "representation.temperature must be a finite number ≥ 0, got -1"),
        ({**rep, "epochs": 3}, "representation (contrastive): unknown setting(s) ['epochs']"),
    ):
        body = {"name": "c0", "dataset": {"source": "digits"}, "attributes": DIGITS_ATTRIBUTES, "representation": bad}
        r = client.post("/api/v1/projects", json=body, headers=admin)
        assert r.status_code == 422 and message in r.text, r.text
    p = create_project(client, admin, name="contrastive", representation=rep)
    with worker_thread(app):
        job = wait_job(client, admin, p["job"]["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["dim"] == 6 and job["result"]["n_items"] == 1797
    iid = client.get(f"/api/v1/projects/{p['id']}/items?limit=1", headers=admin).json()["items"][0]["id"]
    out = client.get(f"/api/v1/items/{iid}/representation", headers=admin).json()
    assert out["source"] == "contrastive"
    png = client.get(f"/api/v1/items/{iid}/image.png", headers=admin).content
    x = (np.asarray(Image.open(io.BytesIO(png)), np.float32)[None, None] / 255.0).astype(np.float32)
    with app.state.db.session() as s:
        row = s.scalar(sa.select(Representation).where(Representation.project_id == p["id"], Representation.active))
        base = load_base_model("contrastive", row.checkpoint, device="cpu")
        assert np.allclose(out["z"], base.encode(x)[0], atol=1e-5)
        # A lens on the stored z as the active model: the traversal decodes through the contrastive decoder.
        Z = np.load(io.BytesIO(row.z), allow_pickle=False)
        S = {"digit": np.where(np.arange(len(Z)) < 200, np.arange(len(Z)) % 10, -1)}
        lens = InterpretableLens(DIGITS_ATTRIBUTES[:1], n_flows=1, hidden=8, epochs=1, device="cpu").fit(Z, S)
        s.add(
            ModelVersion(
                project_id=p["id"], version=1, representation_id=row.id, checkpoint=lens.to_bytes(), active=True
            )
        )
        s.commit()
    r = client.get(
        f"/api/v1/projects/{p['id']}/traversals/digit.png",
        params={"items": str(iid), "steps": 5, "scale": 1},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (5 * 8 + 6, 8 + 2)
