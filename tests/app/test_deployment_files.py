"""The deployment files describe the scale-out the docs promise (Docker itself is not run here)."""

from __future__ import annotations

import re
from pathlib import Path

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
    doc = readme[readme.index("## Running at scale"):]
    for field in ("heartbeat_timeout_s", "job_max_attempts", "worker_poll_s", "worker_threads", "device"):
        assert field in Settings.model_fields
        assert f"LENSLAB_{field.upper()}" in doc, field
