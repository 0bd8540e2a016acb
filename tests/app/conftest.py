"""Fixtures shared by the app tests."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from tests.conftest import SHARED_DATA, create_project


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


@pytest.fixture
def fitted(client, admin, app):
    """A shapes project with a small VAE representation and a fitted lens as its active model."""
    pytest.importorskip("ml.lens")
    from app.db.models import Item, ModelVersion, Representation
    from ml.data import make_shapes
    from ml.lens import InterpretableLens
    from ml.vae import VAE

    attrs = [
        {"name": "shape", "kind": "categorical", "levels": ["square", "ellipse", "heart"]},
        {"name": "x", "kind": "continuous", "low": 0, "high": 1},
    ]
    p = create_project(
        client, admin, name="fitted", attributes=attrs, dataset={"source": "shapes", "n": 64, "size": 16}
    )
    ds = make_shapes(n=64, seed=0, size=16)
    vae = VAE(image_shape=(1, 16, 16), latent_dim=4, hidden=32, channels=(8, 8), epochs=1, device="cpu").fit(ds.images)
    Z = vae.encode(ds.images)
    S = {"shape": np.where(np.arange(64) < 32, ds.factors["shape"], -1), "x": ds.factors["x"]}
    lens = InterpretableLens(attrs, n_flows=2, hidden=16, epochs=2, device="cpu").fit(Z, S)
    with app.state.db.session() as s:
        ids = np.asarray(
            s.scalars(sa.select(Item.id).where(Item.project_id == p["id"]).order_by(Item.source_index)).all()
        )

        def npy(a):
            buf = io.BytesIO()
            np.save(buf, a)
            return buf.getvalue()

        rep = Representation(
            project_id=p["id"],
            source="vae",
            checkpoint=vae.to_bytes(),
            z=npy(Z.astype(np.float32)),
            item_ids=npy(ids),
            active=True,
        )
        s.add(rep)
        s.flush()
        s.add(
            ModelVersion(
                project_id=p["id"], version=1, representation_id=rep.id, checkpoint=lens.to_bytes(), active=True
            )
        )
        s.commit()
    return {"project": p, "ids": ids, "Z": Z, "lens": lens}
