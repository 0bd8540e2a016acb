"""Regenerate the README's screenshots (docs/*.png) from the demo, as a newcomer would see it.

Runs ``lenslab demo --no-serve`` and ``lenslab serve`` on a fresh temporary database, labels the
demo's digits through the REST API (digit from the data set, thickness from ``ml.data``'s
Morpho-MNIST measure, cut into 5 levels) the way an expert would, waits for the retrains the labels
trigger, and photographs the labelling, jobs and insights pages with Chromium.

    .venv/bin/python scripts/screenshots.py [--labels 600] [--out docs]

Takes a few minutes on two cores (the pretrain and one retrain per 50 labels run in the server's worker).
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


def _truth() -> tuple[np.ndarray, np.ndarray]:
    from ml.data import load_digits, stroke_thickness, thickness_levels

    ds = load_digits()
    levels, _ = thickness_levels(stroke_thickness(ds.images), 5)
    return ds.factors["digit"], levels


def _label(client: httpx.Client, pid: int, n_labels: int) -> None:
    digit, thickness = _truth()
    done = 0
    while done < n_labels:
        items = client.post(f"/api/v1/projects/{pid}/queue/next", params={"n": 10}).raise_for_status().json()["items"]
        if not items:
            raise SystemExit("the queue ran dry")
        for it in items:
            src = client.get(f"/api/v1/items/{it['item_id']}").raise_for_status().json()["source_index"]
            values = {"digit": str(int(digit[src])), "thickness": str(int(thickness[src]) + 1)}
            client.post(
                f"/api/v1/items/{it['item_id']}/labels", json={"values": values, "lease_id": it["lease_id"]}
            ).raise_for_status()
            done += 1


def _idle(client: httpx.Client, pid: int) -> bool:
    jobs = client.get(f"/api/v1/projects/{pid}/jobs").raise_for_status().json()
    rows = jobs["jobs"] if isinstance(jobs, dict) else jobs
    return not any(j["status"] in ("queued", "running") for j in rows)


def _shoot(url: str, pid: int, out: Path) -> None:
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
        page.keyboard.press("3")  # a digit chosen, thickness still open: the state an expert sees mid-item
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
    ap.add_argument("--labels", type=int, default=600, help="labels to give before the pictures (default 600)")
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
            pid = next(
                p["id"]
                for p in client.get("/api/v1/projects").raise_for_status().json()["projects"]
                if p["name"] == "digits"
            )
            _wait(lambda: _idle(client, pid), "the pretrain job", 900)
            for chunk in range(0, args.labels, 50):
                _label(client, pid, min(50, args.labels - chunk))
                _wait(lambda: _idle(client, pid), f"the retrain after {chunk + 50} labels", 900)
                print(f"{chunk + 50} labels; retrains done", flush=True)
            _shoot(url, pid, args.out)
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
