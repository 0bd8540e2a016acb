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
    """Create (or find) the demo's admin and project; returns what was done, the password if generated."""
    from app.config import get_settings
    from app.db.migrate import upgrade
    from app.db.session import Database
    from app.services import imports, projects, users

    settings = get_settings()
    upgrade(settings.database_url)
    db = Database(settings)
    out: dict[str, object] = {"admin": admin_name, "password": None, "project_id": None, "created": []}
    try:
        with db.session() as session:
            if users.get_by_username(session=session, username=admin_name) is None:
                password = os.environ.get("LENSLAB_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
                users.create(session=session, username=admin_name, password=password, role="admin")
                if not os.environ.get("LENSLAB_ADMIN_PASSWORD"):
                    out["password"] = password
                out["created"].append("admin")  # type: ignore[union-attr]
            admin = users.get_or_raise(session=session, username=admin_name)
            existing = next((p for p in projects.list_all(session=session) if p.name == DEMO_PROJECT), None)
            if existing is None:
                session.rollback()
                loaded = imports.load_spec({"source": "digits"}, settings)
                existing = projects.create(
                    session=session, name=DEMO_PROJECT, attributes=DEMO_ATTRIBUTES,
                    representation={"source": "vae", "latent_dim": 10}, strategy="bald", settings={},
                    loaded=loaded, created_by_id=admin.id,
                )
                out["created"].append("project")  # type: ignore[union-attr]
            out["project_id"] = existing.id
    finally:
        db.dispose()
    return out


def run(args: argparse.Namespace) -> int:
    info = setup(args.admin)
    print(f"admin user: {info['admin']}" + (" (created)" if "admin" in info["created"] else " (exists)"))  # type: ignore[operator]
    if info["password"]:
        print(f"admin password (shown once): {info['password']}")
    elif "admin" in info["created"]:  # type: ignore[operator]
        print("admin password: from LENSLAB_ADMIN_PASSWORD")
    print(f"project {DEMO_PROJECT!r}: id {info['project_id']}, pretrain job queued")
    if args.no_serve:
        return 0
    from app.commands.serve import serve

    print(f"serving on http://{args.host}:{args.port}  (API docs at /docs)")
    serve(args.host, args.port)
    return 0
