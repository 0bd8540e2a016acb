"""Rows the browser tests start from: labelling projects, and (without the worker) a fitted model history.

``fitted_project`` does what a pretrain and two retrains would: a small VAE on shapes, two lenses
fitted on 40 and 160 labels, each evaluated with ``ml.metrics`` on held-out eval items and stored
as a model version with its metric point. The browser tests use it only while app/worker/ is absent.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import sqlalchemy as sa

DIGITS_ATTRIBUTES = [
    {"name": "digit", "kind": "categorical", "levels": [str(i) for i in range(10)]},
    {"name": "thickness", "kind": "ordinal", "levels": ["1", "2", "3", "4", "5"]},
]
SHAPES_ATTRIBUTES = [
    {"name": "shape", "kind": "categorical", "levels": ["square", "ellipse", "heart"]},
    {"name": "x", "kind": "continuous", "low": 0.0, "high": 1.0},
]


def labelling_project(server: Any, *, name: str, eval_fraction: float) -> int:
    """A digits project (1,797 items) with no queued job, so nothing competes with the browser for CPU."""
    from app.services import imports, projects

    loaded = imports.load_spec({"source": "digits"}, server.settings)
    with server.session() as s:
        project = projects.create(
            session=s,
            name=name,
            attributes=DIGITS_ATTRIBUTES,
            representation={"source": "vae", "latent_dim": 8},
            strategy="bald",
            settings={"eval_fraction": eval_fraction, "retrain_every": 100000},
            loaded=None,
            created_by_id=None,
        )
        imports.store(session=s, project=project, loaded=loaded)
        return project.id


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def fitted_project(server: Any, *, name: str = "shapes", n: int = 320) -> dict[str, Any]:
    """A shapes project with a VAE representation and model versions v1 (40 labels) and v2 (160, active)."""
    from app.db.models import Item, Label, MetricPoint, ModelVersion, Representation
    from app.services import imports, projects
    from ml import metrics
    from ml.data import make_shapes
    from ml.lens import InterpretableLens
    from ml.vae import VAE

    ds = make_shapes(n=n, seed=0, size=16)
    loaded = imports.load_spec({"source": "shapes", "n": n, "size": 16, "seed": 0}, server.settings)
    vae = VAE(image_shape=(1, 16, 16), latent_dim=6, hidden=64, channels=(16, 32), epochs=12, device="cpu", seed=0).fit(
        ds.images
    )
    Z = vae.encode(ds.images).astype(np.float32)
    truth = {"shape": ds.factors["shape"].astype(np.int64), "x": ds.factors["x"].astype(np.float64)}
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    eval_idx, train_pool = order[: n // 4], order[n // 4 :]
    with server.session() as s:
        project = projects.create(
            session=s,
            name=name,
            attributes=SHAPES_ATTRIBUTES,
            representation={"source": "vae", "latent_dim": 6},
            strategy="bald",
            settings={"eval_fraction": 0.0, "retrain_every": 100000},
            loaded=None,
            created_by_id=None,
        )
        imports.store(session=s, project=project, loaded=loaded)
        pid = project.id
        ids = np.asarray(s.scalars(sa.select(Item.id).where(Item.project_id == pid).order_by(Item.source_index)).all())
        rep = Representation(
            project_id=pid,
            source="vae",
            checkpoint=vae.to_bytes(),
            z=_npy(Z),
            item_ids=_npy(ids),
            active=True,
            config={"latent_dim": 6},
        )
        s.add(rep)
        s.flush()
        s.execute(sa.update(Item).where(Item.id.in_(ids[eval_idx].tolist())).values(split="eval"))
        admin_id = s.scalar(sa.text("SELECT id FROM users WHERE username = 'admin'"))
        half = len(eval_idx) // 2
        for version, n_labels in ((1, 40), (2, 160)):
            lab = train_pool[:n_labels]
            S = {"shape": np.full(n, -1, np.int64), "x": np.full(n, np.nan)}
            S["shape"][lab] = truth["shape"][lab]
            S["x"][lab] = truth["x"][lab]
            lens = InterpretableLens(SHAPES_ATTRIBUTES, n_flows=2, hidden=32, epochs=8, device="cpu", seed=version).fit(
                Z, S
            )
            Zs = lens.transform(Z)
            a, b = eval_idx[:half], eval_idx[half:]
            score = metrics.interpretability_score(
                Zs[a],
                {k: v[a] for k, v in truth.items()},
                Zs[b],
                {k: v[b] for k, v in truth.items()},
                SHAPES_ATTRIBUTES,
                skip_unscorable=True,
            )
            score["mig"] = metrics.mig(Zs[eval_idx], {k: v[eval_idx] for k, v in truth.items()}, SHAPES_ATTRIBUTES)
            score = _plain(score)
            mv = ModelVersion(
                project_id=pid,
                version=version,
                representation_id=rep.id,
                checkpoint=lens.to_bytes(),
                n_labels=n_labels,
                metrics=score,
                active=False,
            )
            s.add(mv)
            s.flush()
            s.add(
                MetricPoint(
                    project_id=pid,
                    model_version_id=mv.id,
                    n_labels=n_labels,
                    overall=score["overall"],
                    attributes={
                        k: {
                            "score": v["score"],
                            "accuracy": v["accuracy"],
                            "dim": v["dim"],
                            "chance_score": v["chance_score"],
                        }
                        for k, v in score["attributes"].items()
                    },
                    test_ll=None,
                )
            )
        s.execute(
            sa.update(ModelVersion).where(ModelVersion.project_id == pid, ModelVersion.version == 2).values(active=True)
        )
        # The 160 training labels and the eval set's labels, so counts, scatter colours and later
        # evaluations (by the worker's retrains) see the same ground truth as the history above.
        labelled_idx = [(int(i), False) for i in train_pool[:160]] + [(int(i), True) for i in eval_idx]
        s.execute(
            sa.insert(Label),
            [
                {
                    "project_id": pid,
                    "item_id": int(ids[i]),
                    "user_id": admin_id,
                    "kind": "label",
                    "values": {
                        "shape": SHAPES_ATTRIBUTES[0]["levels"][int(truth["shape"][i])],
                        "x": float(truth["x"][i]),
                    },
                    "eval": is_eval,
                }
                for i, is_eval in labelled_idx
            ],
        )
        s.execute(
            sa.update(Item)
            .where(Item.id.in_([int(ids[i]) for i, _ in labelled_idx]))
            .values(labelled=True, label_count=1)
        )
        s.commit()
    return {"project_id": pid, "item_ids": ids}


def unscored_project(
    server: Any, *, name: str = "shapes-unscored", n: int = 160, n_train: int = 40, n_eval: int = 3
) -> dict[str, Any]:
    """A shapes project whose only retrain was evaluated on too few eval labels: an active model, no score.

    What a real first retrain leaves behind: the lens fitted on ``n_train`` labels and
    ``ml.steps.evaluate`` run on ``n_eval`` labelled eval items, stored as the worker stores it.
    """
    from app.db.models import Item, Label, MetricPoint, ModelVersion, Representation
    from app.services import imports, projects
    from app.worker.tasks import POINT_EXTRA_KEYS
    from ml import steps
    from ml.data import make_shapes
    from ml.lens import InterpretableLens
    from ml.vae import VAE

    ds = make_shapes(n=n, seed=1, size=16)
    loaded = imports.load_spec({"source": "shapes", "n": n, "size": 16, "seed": 1}, server.settings)
    vae = VAE(image_shape=(1, 16, 16), latent_dim=4, hidden=32, channels=(8, 16), epochs=3, device="cpu", seed=0).fit(
        ds.images
    )
    Z = vae.encode(ds.images).astype(np.float32)
    levels = SHAPES_ATTRIBUTES[0]["levels"]
    truth = {"shape": ds.factors["shape"].astype(np.int64), "x": ds.factors["x"].astype(np.float64)}
    train, held = np.arange(n_train), np.arange(n_train, n_train + n_eval)
    S = {"shape": np.full(n, -1, np.int64), "x": np.full(n, np.nan)}
    for k in S:
        S[k][train] = truth[k][train]
    lens = InterpretableLens(SHAPES_ATTRIBUTES, n_flows=1, hidden=16, epochs=3, device="cpu", seed=0).fit(Z, S)
    metrics = _plain(
        steps.evaluate(lens, Z[held], {k: v[held] for k, v in truth.items()}, SHAPES_ATTRIBUTES, device="cpu")
    )
    metrics["test_ll"] = None
    with server.session() as s:
        project = projects.create(
            session=s,
            name=name,
            attributes=SHAPES_ATTRIBUTES,
            representation={"source": "vae", "latent_dim": 4},
            strategy="bald",
            settings={"eval_fraction": 0.1, "retrain_every": 100000},
            loaded=None,
            created_by_id=None,
        )
        imports.store(session=s, project=project, loaded=loaded)
        pid = project.id
        ids = np.asarray(s.scalars(sa.select(Item.id).where(Item.project_id == pid).order_by(Item.source_index)).all())
        rep = Representation(
            project_id=pid,
            source="vae",
            checkpoint=vae.to_bytes(),
            z=_npy(Z),
            item_ids=_npy(ids),
            active=True,
            config={"latent_dim": 4},
        )
        s.add(rep)
        s.flush()
        mv = ModelVersion(
            project_id=pid,
            version=1,
            representation_id=rep.id,
            checkpoint=lens.to_bytes(),
            n_labels=n_train,
            metrics=metrics,
            active=True,
        )
        s.add(mv)
        s.flush()
        s.add(
            MetricPoint(
                project_id=pid,
                model_version_id=mv.id,
                n_labels=n_train,
                overall=metrics["overall"],
                attributes=metrics["attributes"],
                test_ll=None,
                extra={k: metrics.get(k) for k in POINT_EXTRA_KEYS},
            )
        )
        s.execute(sa.update(Item).where(Item.id.in_(ids[held].tolist())).values(split="eval"))
        s.execute(
            sa.insert(Label),
            [
                {
                    "project_id": pid,
                    "item_id": int(ids[i]),
                    "user_id": None,
                    "kind": "label",
                    "values": {"shape": levels[int(truth["shape"][i])], "x": float(truth["x"][i])},
                    "eval": bool(i >= n_train),
                }
                for i in [*train, *held]
            ],
        )
        s.execute(
            sa.update(Item).where(Item.id.in_(ids[[*train, *held]].tolist())).values(labelled=True, label_count=1)
        )
        s.commit()
    return {"project_id": pid, "metrics": metrics}


def tiny_project(server: Any, *, name: str, n: int = 3) -> int:
    """A project of ``n`` items (digits attributes over shapes images): small enough to run out of items."""
    from app.services import imports, projects

    loaded = imports.load_spec({"source": "shapes", "n": n, "size": 16, "seed": 2}, server.settings)
    with server.session() as s:
        project = projects.create(
            session=s,
            name=name,
            attributes=DIGITS_ATTRIBUTES,
            representation={"source": "vae", "latent_dim": 4},
            strategy="bald",
            settings={"eval_fraction": 0.0, "retrain_every": 100000},
            loaded=None,
            created_by_id=None,
        )
        imports.store(session=s, project=project, loaded=loaded)
        return project.id
