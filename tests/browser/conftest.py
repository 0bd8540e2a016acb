"""Browser tests: a real ``lenslab serve`` (uvicorn) on loopback with a temporary SQLite file, driven by
Debian's Chromium through Playwright. Skipped, with the reason, where Chromium or Playwright is missing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "browser-test-password"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.browser


def worker_present() -> bool:
    """Whether the background worker (app/worker/, run in-process by ``lenslab serve``) exists yet."""
    return (ROOT / "app" / "worker" / "__init__.py").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium is not installed (apt-get install -y chromium; scripts/test.sh does it in CI)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install playwright)")
    return path


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests write screenshots (LENSLAB_BROWSER_ARTIFACTS, else a temporary directory)."""
    env = os.environ.get("LENSLAB_BROWSER_ARTIFACTS")
    path = Path(env) if env else tmp_path_factory.mktemp("browser-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Server:
    """A ``lenslab serve`` subprocess and direct access to its database for arranging rows."""

    def __init__(self, tmp: Path) -> None:
        from app.config import Settings
        from app.db.migrate import upgrade
        from app.db.session import Database

        self.tmp = tmp
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = f"sqlite:///{tmp / 'lenslab.db'}"
        self.env = {
            **os.environ,
            "LENSLAB_DATABASE_URL": self.db_url,
            "LENSLAB_DATA_DIR": str(tmp / "data"),
            "LENSLAB_SECRET_KEY": "browser-test-secret-0123456789",
            "LENSLAB_ENV": "development",
            "LENSLAB_DEVICE": "cpu",
            "LENSLAB_LEASE_SECONDS": "600",
            "LENSLAB_RETRAIN_EVERY": "100000",
            "LENSLAB_EVAL_FRACTION": "0.0",
            "PYTHONUNBUFFERED": "1",
        }
        upgrade(self.db_url)
        self.settings = Settings(
            _env_file=None, database_url=self.db_url, data_dir=tmp / "data", secret_key=self.env["LENSLAB_SECRET_KEY"]
        )
        self.db = Database(self.settings)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "server.log"

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        self._log = open(self.log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not answer /healthz within 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()
        self.db.dispose()

    def session(self, write: bool = True) -> Any:
        return self.db.session(write=write)

    def add_user(self, username: str, role: str) -> None:
        from app.services import users

        with self.session() as s:
            users.create(session=s, username=username, password=PASSWORD, role=role)


@pytest.fixture(scope="session")
def server(chromium_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.browser import seed

    srv = Server(tmp_path_factory.mktemp("server"))
    for name, role in (("admin", "admin"), ("ada", "expert"), ("bob", "expert"), ("vera", "viewer")):
        srv.add_user(name, role)
    seed.labelling_project(srv, name="digits", eval_fraction=0.2)
    seed.labelling_project(srv, name="digits-speed", eval_fraction=0.0)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def model_project(server: Server) -> dict[str, Any]:
    """A project with two model versions and two metric points (seeded through ml/ and the services)."""
    from tests.browser import seed

    return seed.fitted_project(server)


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield b
        b.close()


def login(browser: Any, server: Server, username: str, *, viewport: dict[str, int] | None = None) -> Any:
    """A new browser context signed in as ``username`` by keyboard alone; returns its page."""
    ctx = browser.new_context(viewport=viewport or {"width": 1280, "height": 800}, base_url=server.url)
    ctx.set_default_timeout(15_000)
    page = ctx.new_page()
    seen: list[tuple[str, str, int]] = []
    page.on("response", lambda r: seen.append((r.request.method, r.url, r.status)))
    page.goto("/login")
    # The username field has autofocus; typing before the browser has applied it would lose keys.
    page.wait_for_function("() => document.activeElement && document.activeElement.name === 'username'")
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    try:
        page.wait_for_url("**/projects")
    except Exception as exc:
        raise AssertionError(f"login as {username!r} did not reach /projects; responses: {seen}") from exc
    return page
