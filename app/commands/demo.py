"""``lenslab demo``: one command from nothing to a served project whose first model shows the method at work.

Creates the database, an admin (password from LENSLAB_ADMIN_PASSWORD, or generated and printed
once) and a "shapes" project: 2,400 upright sprites that lenslab draws itself (nothing is
downloaded), with three attributes an expert reads off at a glance — shape (square, ellipse,
heart), size (small, medium, large) and position (left, centre, right). It seeds the project with
labels from the generator's own factors (100 for training, 300 held out for the metric) and queues
the pretrain; the seeded labels queue the first retrain behind it, so the insights page has a model
a few minutes after the command starts. Then it serves on 127.0.0.1:8000.
"""

from __future__ import annotations

import argparse
import os
import secrets
from typing import Any

DEMO_PROJECT = "shapes"
DEMO_ITEMS = 2400
# Held-out labels enough for the metric's standard error to be a few points, and training labels
# enough for the first lens to stand clear of raw z (`lenslab experiment alignment`, the demo's sprites
# and lens, 100 labels, 3 seeds: overall 67.6 against 42.7 on raw z; chance about 34).
SEEDED_TRAIN = 100
SEEDED_EVAL = 300
SEED = 0
# Eight flows rather than the default 32 (same experiment): on these sprites eight score 67.6 overall
# against 61.6, and their traversals move size and position step by step (monotonicity 0.83 and 0.98
# against 0.73 and 0.78), where 32 flows bend the size dimension into a change of shape. MNIST digits
# need the 32 (digit 34.6 against 26.0 with eight): the setting is the demo project's, not the default.
DEMO_SETTINGS = {"lens": {"n_flows": 8}}


# ``make_shapes`` settings of the demo's sprites: upright (rotation would hide shape from a small VAE
# and from an eye), 32 px.
SPRITES = {"seed": SEED, "size": 32, "rotation_range": 0.0}


def demo_dataset(n_items: int = DEMO_ITEMS) -> dict[str, object]:
    """The demo's dataset spec (a server-side ``shapes`` import of ``SPRITES``)."""
    return {"source": "shapes", "n": n_items, **SPRITES}


def demo_truth(n_items: int) -> dict[str, Any]:
    """What an expert would answer for each of the demo's sprites, by source_index (``ml.data.by_eye_levels``)."""
    from ml.data import by_eye_levels, make_shapes

    return by_eye_levels(make_shapes(n=n_items, **SPRITES).factors)  # type: ignore[arg-type]


def seeded_labels(n_items: int) -> list[dict[str, object]]:
    """The labels the demo starts with, by source_index: what an expert would answer, from the factors.

    ``SEEDED_EVAL`` eval rows then ``SEEDED_TRAIN`` training rows on distinct random sprites (fewer on a
    smaller demo: an eighth and a twelfth of the items).
    """
    import numpy as np

    truth = demo_truth(n_items)
    n_eval, n_train = min(SEEDED_EVAL, n_items // 8), min(SEEDED_TRAIN, n_items // 12)
    picked = np.random.default_rng(SEED + 1).permutation(n_items)[: n_eval + n_train]
    return [
        {"source_index": int(i), "values": {name: str(v[i]) for name, v in truth.items()}, "eval": j < n_eval}
        for j, i in enumerate(picked)
    ]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="set up an admin and a seeded shapes project, then serve on 127.0.0.1:8000")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--admin", default=os.environ.get("LENSLAB_ADMIN_USERNAME", "admin"), help="admin username")
    p.add_argument("--no-serve", action="store_true", help="set up only; do not start the server")
    p.add_argument(
        "--items", type=_items, default=DEMO_ITEMS, help=f"sprites in the demo project (default {DEMO_ITEMS})"
    )
    p.set_defaults(func=run)


def _items(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of sprites, got {text!r}") from None
    if not 240 <= n <= 200_000:
        raise argparse.ArgumentTypeError(f"between 240 and 200000 sprites, got {n}")
    return n


def setup(admin_name: str, n_items: int = DEMO_ITEMS) -> dict[str, object]:
    """Create (or find) the demo's admin and project; returns what was done, and the state found.

    Idempotent: a second run changes nothing but the admin's password when LENSLAB_ADMIN_PASSWORD
    is set (so the variable always works), and reports the project's state as it is.
    """
    import sqlalchemy as sa

    from app.config import get_settings
    from app.db.migrate import upgrade
    from app.db.models import Representation
    from app.db.session import Database
    from app.services import imports, jobs, labels, projects, users
    from ml.data import BY_EYE_ATTRIBUTES

    settings = get_settings()
    upgrade(settings.database_url)
    db = Database(settings)
    env_password = os.environ.get("LENSLAB_ADMIN_PASSWORD")
    out: dict[str, object] = {
        "admin": admin_name,
        "password": None,
        "password_from_env": bool(env_password),
        "project_id": None,
        "created": [],
        "project_state": None,
        "seeded": None,
    }
    try:
        with db.session() as session:
            user = users.get_by_username(session=session, username=admin_name)
            if user is None:
                password = env_password or secrets.token_urlsafe(12)
                users.create(session=session, username=admin_name, password=password, role="admin")
                if not env_password:
                    out["password"] = password
                out["created"].append("admin")  # type: ignore[union-attr]
            elif env_password:
                users.set_password(session=session, user=user, password=env_password)
            admin = users.get_or_raise(session=session, username=admin_name)
            existing = next((p for p in projects.list_all(session=session) if p.name == DEMO_PROJECT), None)
            if existing is None:
                session.rollback()
                loaded = imports.load_spec(demo_dataset(n_items), settings)
                existing = projects.create(
                    session=session,
                    name=DEMO_PROJECT,
                    attributes=[dict(a) for a in BY_EYE_ATTRIBUTES],
                    representation={"source": "vae", "latent_dim": 10},
                    strategy="auto",
                    settings=DEMO_SETTINGS,
                    loaded=loaded,
                    created_by_id=admin.id,
                )
                out["created"].append("project")  # type: ignore[union-attr]
                # After the pretrain job (queued by create): a project's jobs run in order, so the
                # retrain these labels queue fits the first lens as soon as z exists.
                eff = projects.effective_settings(existing, settings)
                out["seeded"] = labels.import_bulk(
                    session=session,
                    project=existing,
                    attrs=projects.schema(existing),
                    rows=seeded_labels(n_items),
                    user=admin,
                    retrain_every=int(eff["retrain_every"]),
                    overlap=int(eff["overlap"]),
                )
            out["project_id"] = existing.id
            ready = session.scalar(
                sa.select(Representation.id).where(Representation.project_id == existing.id, Representation.active)
            )
            pretrains = [
                j for j in jobs.list_for_project(session=session, project_id=existing.id) if j.kind == "pretrain"
            ]
            if ready is not None:
                out["project_state"] = "representation ready"
            elif pretrains:
                last = pretrains[0]  # newest first
                out["project_state"] = f"pretrain job {last.id} {last.status}" + (
                    f" ({last.message})" if last.status == "failed" and last.message else ""
                )
            else:
                out["project_state"] = "no representation and no pretrain job"
    finally:
        db.dispose()
    return out


def run(args: argparse.Namespace) -> int:
    from app.worker.runner import prefer_passive_omp

    prefer_passive_omp()  # before torch loads: the demo's worker shares the cores with the web
    info = setup(args.admin, args.items)
    created: list[str] = info["created"]  # type: ignore[assignment]
    if "admin" in created:
        print(f"admin user: {info['admin']} (created)")
        print(
            f"admin password (shown once): {info['password']}"
            if info["password"]
            else "admin password: from LENSLAB_ADMIN_PASSWORD"
        )
    elif info["password_from_env"]:
        print(f"admin user: {info['admin']} (exists; password set from LENSLAB_ADMIN_PASSWORD)")
    else:
        print(
            f"admin user: {info['admin']} (exists; its password was printed when it was created). "
            f"To set a new one: `lenslab users passwd {info['admin']}`, or run again with "
            "LENSLAB_ADMIN_PASSWORD=..."
        )
    state = info["project_state"]
    seeded = info["seeded"]
    print(
        f"project {DEMO_PROJECT!r}: id {info['project_id']}, "
        + ("created, " if "project" in created else "exists, ")
        + str(state)
    )
    if isinstance(seeded, dict):
        print(
            f"seeded {seeded['train']} training and {seeded['eval']} eval labels from the generator's factors; "
            "the first retrain runs after the pretrain"
        )
    if args.no_serve:
        return 0
    from app.commands.serve import serve

    print(f"serving on http://{args.host}:{args.port}  (API docs at /docs)")
    serve(args.host, args.port)
    return 0
