"""Fixtures shared by the app tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_DATA


@pytest.fixture
def served(sqlite_template: Path, tmp_path: Path) -> Any:
    """A TestClient on SQLite whose app runs the in-process worker, as `lenslab serve` does."""
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app

    path = tmp_path / "lenslab.db"
    shutil.copy(sqlite_template, path)
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{path}",
        data_dir=tmp_path / "data",
        import_roots=[SHARED_DATA],
        secret_key="test-secret-key-0123456789abcdef",
        eval_fraction=0.0,
        serve_worker=True,
        worker_poll_s=0.1,
        device="cpu",
    )
    app = create_app(settings)
    with TestClient(app) as client:
        yield client
    app.state.db.dispose()
