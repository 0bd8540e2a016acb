"""``lenslab db``: create or upgrade the schema through the Alembic migrations."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="database schema (Alembic migrations)")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = dsub.add_parser("upgrade", help="create or upgrade the schema to the latest revision")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.set_defaults(func=_upgrade)
    cur = dsub.add_parser("current", help="print the schema revision of the database")
    cur.set_defaults(func=_current)


def _upgrade(args: argparse.Namespace) -> int:
    from app.config import get_settings
    from app.db.migrate import current, upgrade

    url = get_settings().database_url
    upgrade(url, args.revision)
    print(f"database at revision {current(url)}")
    return 0


def _current(_args: argparse.Namespace) -> int:
    from app.config import get_settings
    from app.db.migrate import current

    print(current(get_settings().database_url) or "empty (run: lenslab db upgrade)")
    return 0
