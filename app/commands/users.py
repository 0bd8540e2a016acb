"""``lenslab users``: add users, list them, reset a password."""

from __future__ import annotations

import argparse
import getpass
import os
import secrets

from app.cli import CommandError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("users", help="user accounts")
    usub = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = usub.add_parser("add", help="add a user (password from --password-env, a prompt, or generated)")
    add.add_argument("name")
    add.add_argument("--role", choices=("admin", "expert", "viewer"), required=True)
    add.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable")
    add.add_argument("--generate", action="store_true", help="generate a password and print it once")
    add.set_defaults(func=_add)
    ls = usub.add_parser("list", help="list users")
    ls.set_defaults(func=_list)
    pw = usub.add_parser("passwd", help="set a user's password")
    pw.add_argument("name")
    pw.add_argument("--password-env", metavar="VAR")
    pw.add_argument("--generate", action="store_true")
    pw.set_defaults(func=_passwd)


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    if args.password_env:
        value = os.environ.get(args.password_env)
        if not value:
            raise CommandError(f"environment variable {args.password_env} is empty or unset")
        return value, False
    if args.generate or not os.isatty(0):
        return secrets.token_urlsafe(12), True
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise CommandError("passwords differ")
    return first, False


def _open():
    from app.config import get_settings
    from app.db.migrate import upgrade
    from app.db.session import Database

    settings = get_settings()
    upgrade(settings.database_url)
    return Database(settings)


def _add(args: argparse.Namespace) -> int:
    from app.services import users
    from app.services.errors import ServiceError

    password, generated = _password(args)
    db = _open()
    try:
        with db.session() as session:
            user = users.create(session=session, username=args.name, password=password, role=args.role)
    except ServiceError as exc:
        raise CommandError(str(exc)) from None
    finally:
        db.dispose()
    print(f"user {user.username} ({user.role}) created, id {user.id}")
    if generated:
        print(f"password (shown once): {password}")
    return 0


def _list(_args: argparse.Namespace) -> int:
    from app.services import users

    db = _open()
    try:
        with db.session(write=False) as session:
            rows = users.list_all(session=session)
            print(f"{'id':>4}  {'username':<24} {'role':<7} active")
            for u in rows:
                print(f"{u.id:>4}  {u.username:<24} {u.role:<7} {'yes' if u.active else 'no'}")
    finally:
        db.dispose()
    return 0


def _passwd(args: argparse.Namespace) -> int:
    from app.services import users
    from app.services.errors import ServiceError

    password, generated = _password(args)
    db = _open()
    try:
        with db.session() as session:
            user = users.get_or_raise(session=session, username=args.name)
            users.set_password(session=session, user=user, password=password)
    except ServiceError as exc:
        raise CommandError(str(exc)) from None
    finally:
        db.dispose()
    print(f"password of {args.name} changed")
    if generated:
        print(f"password (shown once): {password}")
    return 0
