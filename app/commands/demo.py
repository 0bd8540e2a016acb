"""``lenslab demo``: one command from nothing to a served digits project.

Creates the database, an admin (password from LENSLAB_ADMIN_PASSWORD, or generated and printed
once), a digits project with attributes digit (categorical 0-9) and thickness (ordinal, 5 levels),
queues its pretrain job, and serves on 127.0.0.1:8000.
"""

from __future__ import annotations

import argparse
import os
import secrets

DEMO_PROJECT = "digits"
DEMO_ATTRIBUTES = [
    {"name": "digit", "kind": "categorical", "levels": [str(i) for i in range(10)]},
    {"name": "thickness", "kind": "ordinal", "levels": ["1", "2", "3", "4", "5"]},
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="set up an admin and a digits project, then serve on 127.0.0.1:8000")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--admin", default=os.environ.get("LENSLAB_ADMIN_USERNAME", "admin"), help="admin username")
    p.add_argument("--no-serve", action="store_true", help="set up only; do not start the server")
    p.set_defaults(func=run)


def setup(admin_name: str) -> dict[str, object]:
    """Create (or find) the demo's admin and project; returns what was done, and the state found.

    Idempotent: a second run changes nothing but the admin's password when LENSLAB_ADMIN_PASSWORD
    is set (so the variable always works), and reports the project's state as it is.
    """
    import sqlalchemy as sa

    from app.config import get_settings
    from app.db.migrate import upgrade
    from app.db.models import Representation
    from app.db.session import Database
    from app.services import imports, jobs, projects, users

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
                loaded = imports.load_spec({"source": "digits"}, settings)
                existing = projects.create(
                    session=session,
                    name=DEMO_PROJECT,
                    attributes=DEMO_ATTRIBUTES,
                    representation={"source": "vae", "latent_dim": 10},
                    strategy="auto",
                    settings={},
                    loaded=loaded,
                    created_by_id=admin.id,
                )
                out["created"].append("project")  # type: ignore[union-attr]
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
    info = setup(args.admin)
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
    print(
        f"project {DEMO_PROJECT!r}: id {info['project_id']}, "
        + ("created, " if "project" in created else "exists, ")
        + str(state)
    )
    if args.no_serve:
        return 0
    from app.commands.serve import serve

    print(f"serving on http://{args.host}:{args.port}  (API docs at /docs)")
    serve(args.host, args.port)
    return 0
