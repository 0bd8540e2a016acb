"""lenslab_client against a real uvicorn server (its in-process worker runs the jobs): a notebook's session
from project creation to scores, representations, transforms and exports."""

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pydantic
import pytest

from tests.app.worker_support import ALWAYS_ACTIVATE, DIGIT_ATTR, ROOT, TINY_LENS, digits_pca


@pytest.fixture
def server(settings, app, tmp_path):
    """A served SQLite/PostgreSQL database with an admin token; yields (base URL, token)."""
    from app.bench.server import uvicorn_server
    from app.services import tokens, users

    with app.state.db.session() as s:
        admin = users.create(session=s, username="scientist", password="scientist password", role="admin")
        token = tokens.create(session=s, user=admin, name="notebook")[1]
    env = {
        "LENSLAB_DATABASE_URL": settings.database_url,
        "LENSLAB_SECRET_KEY": settings.secret_key,
        "LENSLAB_DATA_DIR": str(settings.data_dir),
        "LENSLAB_ENV": "development",
        "LENSLAB_SERVE_WORKER": "true",
        "LENSLAB_WORKER_POLL_S": "0.2",
        "LENSLAB_WORKER_THREADS": "1",
        "LENSLAB_DEVICE": "cpu",
        "LENSLAB_EVAL_FRACTION": "0",
    }
    with uvicorn_server(env, log_path=tmp_path / "server.log") as base:
        yield base, token


def test_a_notebook_session_from_project_to_scores_representations_and_transform(server, monkeypatch, tmp_path):
    from lenslab_client import Invalid, Lenslab, NotFound

    base, token = server
    monkeypatch.setenv("LENSLAB_URL", base)
    monkeypatch.setenv("LENSLAB_TOKEN", token)
    Z, y = digits_pca(300)
    with Lenslab() as lab:
        assert lab.me()["username"] == "scientist"
        p = lab.create_project(
            "notebook",
            DIGIT_ATTR,
            representation={"source": "embeddings"},
            settings={"retrain_every": 100_000, "lens": TINY_LENS, "activation_margin": ALWAYS_ACTIVATE},
        )
        pid = p["id"]
        assert lab.import_embeddings(pid, Z)["imported"] == 300
        pretrain = next(j for j in lab.jobs(pid) if j["kind"] == "pretrain")
        lab.wait(pretrain["id"], timeout=120, poll=0.2, progress=False)
        rows = [{"source_index": i, "values": {"digit": str(int(y[i]))}} for i in range(100)]
        rows += [{"source_index": i, "values": {"digit": str(int(y[i]))}, "eval": True} for i in range(100, 140)]
        lab.import_labels(pid, rows)
        bar = io.StringIO()
        job = lab.wait(lab.start_job(pid, "retrain")["id"], timeout=300, poll=0.2, progress=bar)
        assert job["status"] == "succeeded" and "100%" in bar.getvalue()
        score_jobs = [j for j in lab.jobs(pid) if j["kind"] == "score"]
        for j in score_jobs:
            lab.wait(j["id"], timeout=120, poll=0.2, progress=False)

        scores = lab.scores(pid)
        assert len(scores.item_ids) > 0 and np.all(np.diff(scores.scores) <= 0)

        labelled = []
        for item in lab.queue(pid, limit=5):
            source = lab.item(item["item_id"])["source_index"]
            lab.label(item["item_id"], {"digit": str(int(y[source]))}, lease_id=item["lease_id"])
            labelled.append(item["item_id"])
        assert len(labelled) == 5
        assert {r["item_id"] for r in lab.labels(pid)} >= set(labelled)
        path = lab.export_labels(pid, tmp_path / "labels.csv")
        assert len(list(csv.reader(path.open()))) == 1 + 140 + 5

        reps = lab.representations(pid)
        order = np.argsort(reps.source_index)
        assert np.abs(reps.z[order] - Z).max() <= 1e-6
        assert reps.model_version == lab.models(pid)[0]["version"]
        digit = reps.predictions["digit"]
        assert digit["levels"] == [str(d) for d in range(10)] and np.allclose(digit["probs"].sum(1), 1, atol=1e-4)

        out = lab.transform(pid, embeddings=Z[:30], batch_size=7)  # five requests
        first = order[:30]
        assert np.abs(out.z_star - reps.z_star[first]).max() < 1e-5
        assert np.abs(out.predictions["digit"]["probs"] - digit["probs"][first]).max() < 1e-5
        assert list(out.predictions["digit"]["level"]) == list(digit["level"][first])

        frame = lab.frame(pid)
        assert len(frame) == 300 and {"z_0", "z_star_0", "digit", "digit_p_3", "score"} <= set(frame.columns)

        with pytest.raises(Invalid, match=r"embeddings\[0\]: 3 values"):
            lab.transform(pid, embeddings=np.zeros((2, 3)))
        with pytest.raises(NotFound, match="404"):
            lab.project(999_999)
        with pytest.raises(pydantic.ValidationError):  # the server's own schema, checked before sending
            lab.create_project("bad", DIGIT_ATTR, strategy="cleverest")


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 (Retry-After: 0) to the first ``fails`` requests, then a JSON body."""

    fails = 2
    seen = 0

    def do_GET(self) -> None:
        type(self).seen += 1
        if type(self).seen <= self.fails:
            self.send_response(503)
            self.send_header("Retry-After", "0")
            body = b'{"detail": "database temporarily unavailable; retry shortly"}'
        else:
            self.send_response(200)
            body = json.dumps({"user": {"username": "x"}}).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("fails", "retries", "ok"), [(2, 5, True), (3, 2, False)])
def test_503_is_retried_with_backoff_then_raised_with_the_servers_message(fails, retries, ok):
    from lenslab_client import Lenslab, Unavailable

    handler = type("Flaky", (_Flaky,), {"fails": fails, "seen": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with Lenslab(f"http://127.0.0.1:{httpd.server_port}", "t", retries=retries, backoff=0.01) as lab:
            if ok:
                assert lab.me() == {"username": "x"} and handler.seen == fails + 1
            else:
                with pytest.raises(Unavailable, match="503 database temporarily unavailable"):
                    lab.me()
                assert handler.seen == retries + 1
    finally:
        httpd.shutdown()


def test_the_client_imports_without_torch_and_needs_a_token(monkeypatch):
    code = (
        "import sys, lenslab_client; print(sorted(m for m in ('torch', 'sqlalchemy', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
    from lenslab_client import Lenslab

    monkeypatch.delenv("LENSLAB_TOKEN", raising=False)
    with pytest.raises(ValueError, match="LENSLAB_TOKEN"):
        Lenslab("http://127.0.0.1:1")


def test_the_readme_shows_the_client_example_as_it_is():
    readme = (ROOT / "README.md").read_text()
    script = (ROOT / "scripts" / "client_example.py").read_text()
    assert script[script.index("from lenslab_client") :].rstrip("\n") in readme


@pytest.mark.timeout(600)
def test_the_client_example_runs_against_the_demo_server(tmp_path):
    """`lenslab demo` as the README starts it (its own database, worker and seeded shapes project, here on
    600 sprites), a token from `lenslab tokens create`, then scripts/client_example.py end to end."""
    from app.bench.server import free_port, stop_process

    port = free_port()
    env = {
        **os.environ,
        "LENSLAB_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}",
        "LENSLAB_DATA_DIR": str(tmp_path / "data"),
        "LENSLAB_ADMIN_PASSWORD": "demo password 123",
        "LENSLAB_DEVICE": "cpu",
    }
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "demo", "--port", str(port), "--items", "600"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert demo.poll() is None and time.monotonic() < deadline, (tmp_path / "demo.log").read_text()
            time.sleep(0.2)
        made = subprocess.run(
            [sys.executable, "-m", "app.cli", "tokens", "create", "admin", "--label", "notebook"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = made.stdout.strip().splitlines()[-1]
        run = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "client_example.py")],
            cwd=tmp_path,
            env={**env, "LENSLAB_URL": f"http://127.0.0.1:{port}", "LENSLAB_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=540,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        out = run.stdout
        assert "scores: {'shape'" in out and "label next:" in out and "predicted:" in out, out
        # The demo's 125 seeded labels (50 training, 75 eval on 600 sprites) and the example's 200.
        assert len((tmp_path / "shapes-labels.csv").read_text().splitlines()) == 1 + 125 + 200
    finally:
        stop_process(demo, timeout=30)
        log.close()
