"""A real uvicorn server in a subprocess on loopback, for benchmarks and concurrency tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` and wait; SIGKILL it if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def publish(result: dict, table: str, out: Path | None, *, quiet: bool = False) -> None:
    """Print a benchmark's table (unless ``quiet``) and write its JSON to ``out`` (when given)."""
    if not quiet:
        print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        if not quiet:
            print(f"wrote {out}")


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_server(
    env: dict[str, str], *, workers: int = 1, log_path: Path | None = None, startup_timeout: float = 60.0
) -> Iterator[str]:
    """Run ``app.main:create_app`` under uvicorn with ``env`` (LENSLAB_* settings); yields the base URL."""
    with uvicorn_process(env, workers=workers, log_path=log_path, startup_timeout=startup_timeout) as (base, _proc):
        yield base


@contextmanager
def uvicorn_process(
    env: dict[str, str], *, workers: int = 1, log_path: Path | None = None, startup_timeout: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``uvicorn_server`` yielding the process too (with one worker, the process that serves: its memory
    is the server's)."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2]
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"uvicorn exited with {proc.returncode} before serving" + (f"; see {log_path}" if log_path else "")
                )
            try:
                if httpx.get(base + "/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not answer within {startup_timeout:.0f} s")
            time.sleep(0.1)
        yield base, proc
    finally:
        stop_process(proc)
        if log_path:
            log.close()  # type: ignore[union-attr]
