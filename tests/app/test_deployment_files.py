"""The deployment files describe the scale-out the docs promise.

What this checks, honestly: Docker itself is not run (the test machines have no Docker daemon and no
compose plugin). The files are read as data: the compose file's structure as YAML, every command it
runs parsed by lenslab's own command-line parser, every LENSLAB_ variable a real setting, every path
the Dockerfile copies present. Where ``docker compose`` exists, its own ``config`` validates the file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_postgres_two_web_processes_and_two_workers_with_healthchecks():
    services = _compose()["services"]
    assert set(services) == {"db", "web", "worker"}
    assert services["db"]["image"] == "postgres:16" and "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    web = services["web"]
    cmd = web["command"]
    assert cmd[:2] == ["lenslab", "serve"] and "--no-worker" in cmd and int(cmd[cmd.index("--workers") + 1]) >= 2
    assert services["worker"]["command"] == ["lenslab", "worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in ("db", "web", "worker"):
        assert services[name]["healthcheck"]["test"], name
    # Workers start once the web has migrated the schema; web once the database is healthy.
    assert services["worker"]["depends_on"]["web"]["condition"] == "service_healthy"
    assert web["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("web", "worker"):
        env = services[name]["environment"]
        assert env["LENSLAB_DATABASE_URL"].startswith("postgresql://") and "@db:5432/" in env["LENSLAB_DATABASE_URL"]
    assert set(_compose()["volumes"]) >= {"pgdata", "lenslab-data"}


def test_dockerfile_installs_the_torch_pin_first_then_the_project_with_postgres():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"^ARG TORCH_SPEC=", text, re.M)
    torch_at = text.index('pip install "${TORCH_SPEC}"')
    project_at = text.index('pip install ".[postgres]"')
    assert torch_at < project_at
    for path in ("app", "ml", "migrations", "templates", "static", "pyproject.toml", "alembic.ini"):
        assert (ROOT / path).exists() and path in text, path


def test_running_at_scale_docs_name_every_worker_setting():
    from app.config import Settings

    readme = (ROOT / "README.md").read_text()
    doc = readme[readme.index("## Running at scale") :]
    for field in ("heartbeat_timeout_s", "job_max_attempts", "worker_poll_s", "worker_threads", "device"):
        assert field in Settings.model_fields
        assert f"LENSLAB_{field.upper()}" in doc, field


def test_every_compose_command_parses_with_the_lenslab_cli_and_every_setting_exists():
    from app.cli import build_parser
    from app.config import Settings

    services = _compose()["services"]
    parser = build_parser()
    for name in ("web", "worker"):
        cmd = services[name]["command"]
        assert cmd[0] == "lenslab", name
        parser.parse_args(cmd[1:])  # argparse exits (SystemExit) on an unknown command or flag
        for var in services[name]["environment"]:
            if var.startswith("LENSLAB_"):
                assert var[len("LENSLAB_") :].lower() in Settings.model_fields, (name, var)
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None
    parser.parse_args(yaml.safe_load(cmd.group(1))[1:])
    for line in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for src in line.split():
            assert (ROOT / src).exists(), src


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode != 0,
    reason="docker compose is not installed here",
)
def test_docker_compose_config_accepts_the_file():
    env = {**os.environ, "LENSLAB_SECRET_KEY": "x" * 32}
    out = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
