"""Regenerate the README's screenshots (docs/*.png) from the demo, as a newcomer would see it.

Runs ``lenslab demo --no-serve`` and ``lenslab serve`` on a fresh temporary database, waits for the
demo's pretrain and the first retrain its seeded labels queue, then labels a few more sprites through
the REST API the way an expert would (shape, size and position read off ``ml.data``'s generator
factors), waits for the retrains those labels trigger, prints the figures the insights page shows,
and photographs the labelling, jobs and insights pages with Chromium.

    .venv/bin/python scripts/screenshots.py [--labels 100] [--out docs]

Takes about five minutes on two cores (the pretrain and one retrain per 50 labels run in the server's worker).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "screenshots-admin-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1.0)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def _label(client: httpx.Client, pid: int, n_labels: int, truth: dict[str, np.ndarray]) -> None:
    done = 0
    while done < n_labels:
        items = client.post(f"/api/v1/projects/{pid}/queue/next", params={"n": 10}).raise_for_status().json()["items"]
        if not items:
            raise SystemExit("the queue ran dry")
        for it in items:
            if done == n_labels:
                client.post(f"/api/v1/leases/{it['lease_id']}/release").raise_for_status()
                continue
            src = client.get(f"/api/v1/items/{it['item_id']}").raise_for_status().json()["source_index"]
            values = {name: str(levels[src]) for name, levels in truth.items()}
            client.post(
                f"/api/v1/items/{it['item_id']}/labels", json={"values": values, "lease_id": it["lease_id"]}
            ).raise_for_status()
            done += 1


def _figures(client: httpx.Client, pid: int) -> None:
    """What the insights page shows, as text for the README: per attribute the score, raw z and chance."""
    points = client.get(f"/api/v1/projects/{pid}/metrics").raise_for_status().json()["points"]
    print("curve (labels: overall):", ", ".join(f"{p['n_labels']}: {p['overall']:.1f}" for p in points))
    last = points[-1]
    print(f"model v{last['model_version']}: overall {last['overall']:.1f}, raw z {last['baseline_overall']:.1f}")
    for name, a in last["attributes"].items():
        print(
            f"  {name}: {a['score']:.1f} (raw z {a['z_score']:.1f}, chance {a['chance_score']:.1f}), "
            f"dimension {a['dim']}, n_test {a['n_test']}"
        )


def _idle(client: httpx.Client, pid: int) -> bool:
    jobs = client.get(f"/api/v1/projects/{pid}/jobs").raise_for_status().json()
    rows = jobs["jobs"] if isinstance(jobs, dict) else jobs
    return not any(j["status"] in ("queued", "running") for j in rows)


def _shoot(url: str, pid: int, out: Path, shape_key: Callable[[int], str]) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=url)
        page = ctx.new_page()
        page.goto("/login")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_url("**/projects")
        page.goto(f"/projects/{pid}/label")
        page.wait_for_function("() => document.getElementById('labeller').dataset.prefetched === 'true'")
        # The item's true shape chosen, size and position still open: the state an expert sees mid-item.
        page.keyboard.press(shape_key(int(page.get_attribute("#labeller", "data-item-id") or 0)))
        page.screenshot(path=str(out / "labelling.png"))
        page.goto(f"/admin/projects/{pid}/jobs")
        page.wait_for_selector("#models-table")
        page.screenshot(path=str(out / "jobs.png"))
        page.goto(f"/projects/{pid}/insights")
        page.wait_for_function(
            "() => Number(document.querySelector('[data-chart=metrics][data-metric=score]').dataset.points || 0) >= 2"
        )
        page.wait_for_function(
            "() => [...document.querySelectorAll('img.traversal')].every(i => i.complete && i.naturalWidth > 0)"
        )
        page.wait_for_function("() => Number(document.querySelector('[data-chart=scatter]').dataset.points || 0) > 0")
        page.screenshot(path=str(out / "insights.png"), full_page=True)
        browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--labels",
        type=int,
        default=100,
        help="labels given after the seeded ones (default 100)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        env = {
            **os.environ,
            "LENSLAB_DATABASE_URL": f"sqlite:///{tmp}/lenslab.db",
            "LENSLAB_DATA_DIR": f"{tmp}/data",
            "LENSLAB_ADMIN_PASSWORD": PASSWORD,
            "LENSLAB_DEVICE": "cpu",
        }
        lenslab = [sys.executable, "-m", "app.cli"]
        subprocess.run([*lenslab, "demo", "--no-serve"], cwd=ROOT, env=env, check=True)
        server = subprocess.Popen(
            [*lenslab, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env
        )
        url = f"http://127.0.0.1:{port}"
        try:
            client = httpx.Client(base_url=url, timeout=60)
            _wait(lambda: _ok(client), "the server", 60)
            token = subprocess.run(
                [*lenslab, "tokens", "create", "admin", "--label", "screenshots"],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()[-1]
            client.headers["Authorization"] = f"Bearer {token}"
            project = next(
                p for p in client.get("/api/v1/projects").raise_for_status().json()["projects"] if p["name"] == "shapes"
            )
            from app.commands.demo import demo_truth

            pid, truth = project["id"], demo_truth(project["n_items"])
            _wait(lambda: _idle(client, pid), "the pretrain and the first retrain", 900)
            for chunk in range(0, args.labels, 50):
                _label(client, pid, min(50, args.labels - chunk), truth)
                _wait(lambda: _idle(client, pid), f"the retrain after {chunk + 50} more labels", 900)
                print(f"{chunk + 50} more labels; retrains done", flush=True)
            _figures(client, pid)
            levels = next(a["levels"] for a in project["attributes"] if a["name"] == "shape")

            def shape_key(item_id: int) -> str:
                src = client.get(f"/api/v1/items/{item_id}").raise_for_status().json()["source_index"]
                return str(levels.index(str(truth["shape"][src])) + 1)

            _shoot(url, pid, args.out, shape_key)
        finally:
            server.terminate()
            server.wait(30)
    print(f"wrote {', '.join(str(args.out / n) for n in ('labelling.png', 'jobs.png', 'insights.png'))}")
    return 0


def _ok(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
